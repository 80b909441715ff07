"""Past one machine: Ray Data encoding vs one process, and an IVF-PQ index merged on disk from shards.

Usage::

    nice -n 5 python benchmarks/ann_ray.py encode --texts 100000            # Ray vs one process, ternary MiniLM
    python benchmarks/ann_ray.py index --vectors 1000000 --shards 8        # IVF-PQ via merge_ondisk, 1M x 384

``encode``: the first ``--texts`` WordNet glosses (real text, ids = synset ids; repeated with suffixed ids if more
are asked for than WordNet has) in one ``.jsonl``, encoded by the bundled all-MiniLM-L6-v2 ternarized on load
(``--quantize``, PTQ; the packed ternary kernels) into embedding shards:

* one process with ``--threads`` torch threads (:func:`ternary_hf.ann.encode_to_shards`);
* Ray Data on a local cluster of ``--threads`` CPUs: ``--threads`` one-thread actors
  (:func:`ternary_hf.ann.encode_with_ray`), i.e. the same cores.

The two runs alternate ``--repeats`` times (single first), and the machine's load average is printed with each row,
since on a shared machine the other processes set the pace. Ray workers run at the driver's priority
(``RAY_worker_niceness=0``; Ray's default is nice 15), shown in the ``nice`` column. Per run: wall seconds, texts/s, peak RSS of the
encoding process(es) (for Ray: each actor's VmHWM, sampled every 0.5 s via psutil; the driver's too), and whether
the vectors equal the single-process ones.

``index``: ``--vectors`` synthetic d=384 embeddings (the Gaussian mixture of ``benchmarks/ann_scale.py``, whose
1M table is in the README) written as ``--shards`` shard files, then :func:`ternary_hf.ann.build_ondisk_index`
(IVF-PQ, pq_m=48: train on a sample, add shard by shard, ``merge_ondisk``), and for comparison one in-memory
IndexIVFPQ with the same parameters over all vectors. Reported: build seconds, peak extra RSS of each build
(sampled every 50 ms), index bytes, queries/s at several nprobe (``--threads`` FAISS threads), and recall@10
against exact search computed shard by shard.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

def peak_rss() -> int:
    """This process's peak RSS (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


class WorkerPeaks:
    """Peak RSS (VmHWM) of every Ray encoder actor process, sampled in a background thread."""

    def __enter__(self):
        import psutil

        self.peaks: dict[int, int] = {}
        self.nice: set[int] = set()
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    try:
                        if "CorpusEncoder" in " ".join(proc.info["cmdline"] or []):
                            with open(f"/proc/{proc.pid}/status") as f:
                                hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
                            self.peaks[proc.pid] = max(hwm, self.peaks.get(proc.pid, 0))
                            self.nice.add(proc.nice())
                    except (OSError, StopIteration, psutil.Error):
                        pass
                self._stop.wait(0.5)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def wordnet_corpus(path: Path, n: int) -> int:
    from ternary_hf.data import wordnet

    synsets = wordnet.load_synsets()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            s = synsets[i % len(synsets)]
            doc_id = s.synset_id if i < len(synsets) else f"{s.synset_id}#{i // len(synsets)}"
            f.write(json.dumps({"_id": doc_id, "text": s.gloss}) + "\n")
    return len(synsets)


def read_all(shards):
    got = list(shards.iter_shards())
    return sum((i for i, _ in got), []), np.concatenate([e for _, e in got])


def single_process(model: str, corpus: str, out: str, threads: int, quantize: bool, chunk_size: int,
                   batch_size: int) -> tuple[float, float, int]:
    """Runs in a fresh (spawned) process, so its peak RSS is its own: (encode s, incl. model load s, peak RSS)."""
    import torch

    from ternary_hf.ann import encode_to_shards
    from ternary_hf.evaluation import load_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    st = load_model(model, quantize=quantize).model
    t1 = time.perf_counter()
    encode_to_shards(st, corpus, out, chunk_size=chunk_size, batch_size=batch_size, show_progress_bar=False)
    t2 = time.perf_counter()
    return t2 - t1, t2 - t0, peak_rss()


def bench_encode(args) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ternary_hf.ann import EmbeddingShards, encode_with_ray
    from ternary_hf.defaults import default_model_path

    model = default_model_path()
    work = Path(tempfile.mkdtemp(prefix="ann_ray_"))
    corpus = work / "corpus.jsonl"
    n_synsets = wordnet_corpus(corpus, args.texts)
    print(f"corpus: {args.texts:,} WordNet glosses ({n_synsets:,} synsets), model {model} ternarized on load, "
          f"chunk {args.chunk_size}, batch {args.batch_size}, {args.threads} threads; cpus {os.cpu_count()}\n")
    rows, reference = [], None
    header = ("| engine | run | threads/worker | workers | nice | encode s | texts/s | incl. start s | peak RSS/worker | "
              "load avg before -> after | vectors = one process |\n|---|---|---|---|---|---|---|---|---|---|---|")

    def show(row):
        engine, rep, threads, workers, nice, enc, total, peak, before, after, same = row
        line = (f"| {engine} | {rep + 1} | {threads} | {workers} | {nice} | {enc:.1f} | {args.texts / enc:,.0f} | "
                f"{total:.1f} | {peak / 2**20:,.0f} MiB | {before} -> {after} | {'yes' if same else 'NO'} |")
        print(line, flush=True)
        rows.append(line)

    print(header, flush=True)
    for rep in range(args.repeats):
        # one process, args.threads torch threads
        out = work / f"single{rep}"
        start_load = load()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            enc, total, peak = pool.submit(single_process, str(model), str(corpus), str(out), args.threads,
                                           args.quantize, args.chunk_size, args.batch_size).result()
        ids, emb = read_all(EmbeddingShards.open(out))
        same = reference is None or (ids == reference[0] and bool(np.array_equal(emb, reference[1])))
        reference = (ids, emb) if reference is None else reference
        show(("one process", rep, args.threads, 1, os.nice(0), enc, total, peak, start_load, load(), same))
        shutil.rmtree(out)
        # Ray, args.threads one-thread actors on a local cluster of args.threads CPUs
        import ray

        out = work / f"ray{rep}"
        start_load = load()
        t0 = time.perf_counter()
        ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        try:
            with WorkerPeaks() as peaks:
                t1 = time.perf_counter()
                shards = encode_with_ray(corpus, model, out, quantize=args.quantize, num_actors=args.threads,
                                         threads_per_actor=1, chunk_size=args.chunk_size, batch_size=args.batch_size,
                                         show_progress_bar=False)
                t2 = time.perf_counter()
        finally:
            ray.shutdown()
        ids, emb = read_all(shards)
        same = ids == reference[0] and bool(np.array_equal(emb, reference[1]))
        worker_peak = max(peaks.peaks.values()) if peaks.peaks else 0
        show(("Ray Data", rep, 1, f"{args.threads} ({len(peaks.peaks)} seen)", ",".join(map(str, sorted(peaks.nice))),
              t2 - t1, t2 - t0, worker_peak, start_load, load(), same))
        shutil.rmtree(out)
    shutil.rmtree(work)


def bench_index(args) -> None:
    import faiss

    from ann_scale import PeakRSS, mixture  # the 1M mixture of benchmarks/ann_scale.py (README's scale table)

    from ternary_hf.ann import AnnIndex, IndexParams, build_ondisk_index, faiss_threads, load_index, write_shards

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ann_ondisk_"))
    dim, noise = 384, 0.8 / np.sqrt(384)
    centers = np.random.default_rng(0).standard_normal((args.vectors // 100, dim), dtype=np.float32) / np.sqrt(dim)
    per = args.vectors // args.shards
    t0 = time.perf_counter()
    shards = write_shards(
        (([str(s * per + i) for i in range(per)], mixture(per, dim, centers, noise, seed=1 + s)) for s in range(args.shards)),
        work / "shards", rows_per_shard=per, metadata={"model_id": "synthetic"})
    gen_s = time.perf_counter() - t0
    queries = mixture(args.queries, dim, centers, noise, seed=10_000)
    # exact top-10, one shard at a time (never the whole float matrix in memory)
    t0 = time.perf_counter()
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 10), np.int64)
    offset = 0
    with faiss_threads(args.threads):
        for _, emb in shards.iter_shards():
            scores, idx = faiss.knn(queries, emb, 10, metric=faiss.METRIC_INNER_PRODUCT)
            all_s, all_i = np.concatenate([best_s, scores], 1), np.concatenate([best_i, idx + offset], 1)
            order = np.argsort(-all_s, axis=1)[:, :10]
            best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
            offset += len(emb)
    exact_s = time.perf_counter() - t0
    truth = [set(row) for row in best_i.tolist()]
    print(f"{args.vectors:,} vectors x {dim} (ann_scale.py mixture: {len(centers):,} centres, noise 0.8) in "
          f"{args.shards} shard files ({gen_s:.0f} s to generate and write; {shards.count * dim * 4 / 2**20:,.0f} MiB "
          f"of float32); {args.queries} queries, exact top-10 shard by shard in {exact_s:.0f} s; {args.threads} FAISS "
          f"thread(s); IVF-PQ nlist {args.nlist}, pq_m 48 x 8 bits, trained on {args.train_size:,} sampled vectors\n")
    params = IndexParams(nlist=args.nlist, pq_m=48, train_size=args.train_size, nprobe=16)
    builds = []
    with faiss_threads(args.threads):
        start_load = load()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            build_ondisk_index(shards, work / "index", "ivf-pq", params=params, verify=False)
            ondisk_s = time.perf_counter() - t0
        meta = json.loads((work / "index" / "index.json").read_text())
        disk = sum(f.stat().st_size for f in (work / "index").iterdir())
        builds.append(("on disk: merge_ondisk of {} shard indexes".format(args.shards), load_index(work / "index"),
                       meta["train_seconds"], ondisk_s, mem.extra, disk, start_load, load()))
        if args.in_memory:
            start_load = load()
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                ids, parts = zip(*shards.iter_shards())
                vectors = np.concatenate(parts)
                del parts
                memory = AnnIndex.from_embeddings(vectors, sum(ids, []), "ivf-pq", params=IndexParams(**vars(params)))
                del vectors
                mem_s = time.perf_counter() - t0
            builds.append(("in memory: one IndexIVFPQ (all vectors loaded)", memory, None, mem_s, mem.extra,
                           memory.nbytes(), start_load, load()))
    print("| build | train s | total s | peak extra RSS | index bytes | load avg before -> after |")
    print("|---|---|---|---|---|---|")
    for name, _, train_s, total_s, extra, size, before, after in builds:
        print(f"| {name} | {'' if train_s is None else f'{train_s:.0f}'} | {total_s:.0f} | {extra / 2**20:,.0f} MiB | "
              f"{size / 2**20:,.0f} MiB | {before} -> {after} |")
    print("\n| build | nprobe | queries/s | recall@10 vs exact |")
    print("|---|---|---|---|")
    with faiss_threads(args.threads):
        for name, index, *_ in builds:
            for nprobe in (8, 16, 64):
                index.set_search_params(nprobe=nprobe)
                index.search_embeddings(queries[:50], 10)  # warm the page cache for these lists
                t0 = time.perf_counter()
                hits, _ = index.search_embeddings(queries, 10)
                rate = len(queries) / (time.perf_counter() - t0)
                recall = np.mean([len({int(h) for h in row} & t) / 10 for row, t in zip(hits, truth)])
                print(f"| {name.split(':')[0]} | {nprobe} | {rate:,.0f} | {recall:.3f} |", flush=True)
    if not args.workdir:
        shutil.rmtree(work)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--texts", type=int, default=100_000)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--repeats", type=int, default=1)
    e.add_argument("--chunk-size", type=int, default=1024)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--no-quantize", dest="quantize", action="store_false")
    i = sub.add_parser("index")
    i.add_argument("--vectors", type=int, default=1_000_000)
    i.add_argument("--shards", type=int, default=8)
    i.add_argument("--nlist", type=int, default=1024)
    i.add_argument("--train-size", type=int, default=65_536)
    i.add_argument("--queries", type=int, default=1000)
    i.add_argument("--threads", type=int, default=1)
    i.add_argument("--workdir", default=None, help="keep the shards and index here")
    i.add_argument("--no-in-memory", dest="in_memory", action="store_false",
                   help="skip the in-memory IndexIVFPQ built from the same vectors for comparison")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Ray starts its workers at nice 15 (RayConfig worker_niceness) so that its own daemons stay responsive; on a
    # machine shared with other work that starves the encoders against the nice-0 single process. Same priority
    # for both here (override by setting RAY_worker_niceness yourself).
    os.environ.setdefault("RAY_worker_niceness", "0")
    bench_encode(args) if args.what == "encode" else bench_index(args)


if __name__ == "__main__":
    main()
