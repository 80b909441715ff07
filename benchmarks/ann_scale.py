"""ANN at scale: every ternary-hf index type on >= 1M synthetic d=384 embeddings.

Usage::

    nice -n 10 python benchmarks/ann_scale.py                          # 1,000,000 vectors, all types
    python benchmarks/ann_scale.py --sizes 100000,1000000 --types hnsw,ivf-pq --threads 2

Data: a Gaussian mixture (``--clusters`` centres per million vectors, isotropic noise) L2-normalized,
so vectors have real neighbourhoods like sentence embeddings (uniform random vectors have none,
and every ANN method looks equally bad on them). Queries are fresh draws from the same mixture.
Ground truth is exact inner-product search (the ``flat`` row).

Per index type: build seconds (training + adding, not data generation), index bytes (the saved
index: FAISS structure + rescoring store; ids excluded since they are the same for all), peak
extra RSS while building (sampled every 50 ms from /proc/self/statm), queries/s (one batch of
``--qps-queries`` queries, median of 3 after a warm-up, ``--threads`` FAISS threads) and recall@10
of all ``--queries`` against exact. Times are given as wall clock and as CPU time of this
process: with one FAISS thread on a shared machine, CPU time is what the work costs and wall
time is what it took while other processes competed for the cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ternary_hf.ann.index import INDEX_TYPES, AnnIndex, IndexParams, faiss_threads  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Peak resident memory above the starting point, sampled in a background thread."""

    def __enter__(self):
        gc.collect()
        self.start = rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def mixture(n: int, dim: int, centers: np.ndarray, noise: float, seed: int, chunk: int = 100_000) -> np.ndarray:
    """``n`` normalized draws around ``centers`` (generated in chunks: no float64 copy of the whole set)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centers[rng.integers(0, len(centers), m)] + noise * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def qps(index: AnnIndex, queries: np.ndarray, k: int) -> tuple[float, float]:
    """(queries per wall second, queries per CPU second of this process); medians of 3 runs."""
    index.search_embeddings(queries[:16], k)
    wall, cpu = [], []
    for _ in range(3):
        w, c = time.perf_counter(), time.process_time()
        index.search_embeddings(queries, k)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return len(queries) / statistics.median(wall), len(queries) / statistics.median(cpu)


def run(n: int, args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    n_centers = max(10, int(args.clusters * n / 1_000_000))
    centers = rng.standard_normal((n_centers, args.dim), dtype=np.float32) / np.sqrt(args.dim)
    start = time.perf_counter()
    corpus = mixture(n, args.dim, centers, args.noise / np.sqrt(args.dim), args.seed + 1)
    queries = mixture(args.queries, args.dim, centers, args.noise / np.sqrt(args.dim), args.seed + 2)
    print(f"# n={n:,} d={args.dim}: {n_centers:,} clusters, data generated in {time.perf_counter() - start:.0f} s",
          flush=True)
    ids = [str(i) for i in range(n)]
    rows = []
    truth = None
    for index_type in ["flat"] + [t for t in args.types if t != "flat"]:
        params = IndexParams(
            hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
            nlist=args.nlist, nprobe=args.nprobe,
        )
        cpu0 = time.process_time()
        with PeakRSS() as mem:
            index = AnnIndex.from_embeddings(corpus, ids, index_type, params=params)
        build_cpu = time.process_time() - cpu0
        hits, _ = index.search_embeddings(queries, args.k)
        if index_type == "flat":
            truth = hits
        recall = float(np.mean([len(set(h) & set(t)) / args.k for h, t in zip(hits, truth)]))
        ids_bytes = len(json.dumps(ids).encode())
        q_wall, q_cpu = qps(index, queries[: args.qps_queries], args.k)
        row = {
            "n": n,
            "index": index_type,
            "params": _describe(index),
            "build_s": index.build_seconds,
            "build_cpu_s": build_cpu,
            "index_mib": (index.nbytes() - ids_bytes) / 2**20,
            "peak_extra_rss_mib": mem.extra / 2**20,
            "qps": q_wall,
            "qps_cpu": q_cpu,
            f"recall@{args.k}": recall,
        }
        if index_type in args.types:
            rows.append(row)
            print(_fmt_row(row, args.k), flush=True)
        del index
        gc.collect()
    return rows


def _describe(index: AnnIndex) -> str:
    p = index.params
    return {
        "flat": "exact",
        "hnsw": f"M={p.hnsw_m} efC={p.ef_construction} efS={p.ef_search}",
        "ivf-flat": f"nlist={p.nlist} nprobe={p.nprobe}",
        "ivf-pq": f"nlist={p.nlist} nprobe={p.nprobe} m={p.pq_m}x{p.pq_bits}b",
        "binary": f"sign bits + {p.rescore} rescore x{p.rescore_multiplier}",
    }[index.index_type]


HEADER = (
    "| n | index | params | build s (wall / CPU) | index MiB | peak extra RSS MiB | queries/s (wall / per CPU-s) "
    "| recall@{k} |\n|---:|---|---|---:|---:|---:|---:|---:|"
)


def _fmt_row(r: dict, k: int) -> str:
    return (
        f"| {r['n']:,} | {r['index']} | {r['params']} | {r['build_s']:.0f} / {r['build_cpu_s']:.0f} | "
        f"{r['index_mib']:.1f} | {r['peak_extra_rss_mib']:.0f} | {r['qps']:,.0f} / {r['qps_cpu']:,.0f} | "
        f"{r[f'recall@{k}']:.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000", help="comma-separated corpus sizes")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall")
    ap.add_argument("--qps-queries", type=int, default=200, help="queries per timed search batch")
    ap.add_argument("--clusters", type=int, default=10_000, help="mixture centres per 1M vectors")
    ap.add_argument("--noise", type=float, default=0.8, help="noise norm relative to a centre's norm")
    ap.add_argument("--types", default=",".join(INDEX_TYPES))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="FAISS threads (1: reproducible on a shared CPU)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in args.types if t not in INDEX_TYPES]
    if unknown:
        ap.error(f"unknown index types {unknown}; supported: {', '.join(INDEX_TYPES)}")
    import faiss

    print(f"# faiss {faiss.__version__}, {args.threads} thread(s), {args.queries} queries, k={args.k}", flush=True)
    print(HEADER.format(k=args.k), flush=True)
    with faiss_threads(args.threads):
        for n in (int(s) for s in args.sizes.split(",")):
            run(n, args)


if __name__ == "__main__":
    main()
