"""Smoke test of an installed ternary-hf wheel, run from a directory outside the repository.

`.ci/wheel_smoke.sh` builds the wheel, installs it with `[all]` into a clean virtualenv and runs this
script with that virtualenv's Python. Every README command runs through the installed `ternary-hf`
console script (quickstart --fast, quantize, distill, eval, ann build/search, push to a local Hub
server), plus `render_model_card`, the `evaluate` metric modules and the native CPU fast path, which
must compile from the C sources shipped in the wheel. Anything the package reads at run time that
is not package data fails here, while it passes in the editable install the tests use.

    python .ci/wheel_smoke.py --repo /path/to/checkout     # cwd: an empty directory outside the repo

`--repo` is only used to start the local Hub server of `tests/hub_server.py` (tests are not in the wheel).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS: list[tuple[str, float]] = []


@contextlib.contextmanager
def step(name: str):
    """Print the step, time it, and record it for the summary (marked FAILED when it raises)."""
    print(f"\n=== {name}", flush=True)
    start, ok = time.perf_counter(), False
    try:
        yield
        ok = True
    finally:
        seconds = time.perf_counter() - start
        STEPS.append((name if ok else name + "  FAILED", seconds))
        print(f"--- {name}: {'ok' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)


def run(args: list[str], env: dict[str, str], timeout: int = 600) -> str:
    """Run a command, echo its output tail, fail with its output when it fails."""
    print("$ " + " ".join(args), flush=True)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    print("\n".join(out.rstrip().splitlines()[-12:]), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"FAILED (exit {proc.returncode}): {' '.join(args)}\n{out[-6000:]}")
    return proc.stdout


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="repository checkout (for tests/hub_server.py only)")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    work = Path.cwd().resolve()
    check(repo not in work.parents and work != repo, f"run this from a directory outside the repository ({repo})")

    cli = str(Path(sys.executable).with_name("ternary-hf"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               # A fresh kernel cache: the native kernels must build from the sources in the wheel.
               TERNARY_HF_CACHE=str(work / "kernel-cache"), HF_HOME=str(work / "hf-home"))
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TERNARY_HF_CACHE", "HF_HOME")})
    os.environ.pop("PYTHONPATH", None)

    with step("installed package, not the source tree"):
        import ternary_hf

        location = Path(ternary_hf.__file__).resolve().parent
        print(f"ternary_hf {ternary_hf.__version__} from {location}")
        check(Path(sys.prefix).resolve() in location.parents, f"ternary_hf imported from {location}, not the wheel")
        check(repo not in location.parents, "ternary_hf imported from the repository")
        from ternary_hf.defaults import default_model_path

        base = default_model_path()

    with step("native CPU kernels compile from the wheel"):
        from ternary_hf.kernels import native

        lib = native.native_lib()
        check(lib is not None, f"native kernels unavailable: {native.native_unavailable_reason()}")
        built = sorted((work / "kernel-cache").rglob("*.so"))
        check(bool(built), "no kernel library was built in the fresh cache")
        print(f"built {built[0].name}; GEMM: {native.gemm_isa(lib)}")

    with step("ternary-hf quickstart --fast"):
        run([cli, "quickstart", "--fast", "--out", "qs", "--no-progress"], env)
        check((work / "qs/report.md").is_file(), "quickstart wrote no report.md")
        check("ternary-hf" in (work / "qs/model/README.md").read_text(), "quickstart model has no ternary model card")

    with step("ternary-hf quantize"):
        run([cli, "quantize", "--output-dir", "q", "--n-texts", "16"], env)
        check((work / "q/model.safetensors").is_file() or any((work / "q").rglob("model.safetensors")),
              "quantize wrote no weights")

    with step("ternary-hf distill (a few steps)"):
        run([cli, "distill", "--output_dir", "d", "--data", "wordnet", "--max_texts", "64", "--max_length", "64",
             "--max_steps", "2", "--per_device_train_batch_size", "4", "--time_budget_minutes", "0",
             "--warmup_steps", "1", "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none"], env)
        check(any((work / "d").rglob("model.safetensors")), "distill saved no model")

    with step("ternary-hf eval (two small tasks)"):
        run([cli, "eval", "q", "--baseline", base, "--tasks", "wordsim353,simlex999", "--no-fidelity",
             "--out", "e", "--no-plot"], env)
        results = json.loads((work / "e/results.json").read_text())
        check(bool(results), "eval wrote empty results")

    with step("ternary-hf ann build / search"):
        corpus = [f"Document {i} is about {topic}." for i, topic in enumerate(
            ["ternary weights", "fast search", "embeddings", "the weather", "cooking pasta", "football"] * 5)]
        (work / "corpus.txt").write_text("\n".join(corpus) + "\n")
        run([cli, "ann", "build", "q", "corpus.txt", "--index", "hnsw", "--out", "c.tann"], env)
        hits = [json.loads(line) for line in run(
            [cli, "ann", "search", "c.tann", "two-bit weights", "-k", "3", "--json"], env).splitlines()
            if line.startswith("{")]
        check(bool(hits), "ann search printed no hits")

    with step("ternary-hf push to a local Hub server"):
        sys.path.insert(0, str(repo / "tests"))
        from hub_server import HubServer

        server = HubServer(tokens={"tok-smoke": "smoke"}).start()
        try:
            hub_env = dict(env, HF_ENDPOINT=server.endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0",
                           HF_TOKEN="tok-smoke", HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(work / "hf-push"))
            run([cli, "push", "q", "smoke/minilm-ternary", "--base-model", "sentence-transformers/all-MiniLM-L6-v2",
                 "--license", "apache-2.0"], hub_env)
            files = server.files("smoke/minilm-ternary")
            check("README.md" in files and b"ternary-hf" in files["README.md"], "pushed repo has no ternary card")
            check(any(name.endswith("model.safetensors") for name in files), "pushed repo has no weights")
            shape = run([sys.executable, "-c",
                         "import ternary_hf\nfrom sentence_transformers import SentenceTransformer\n"
                         "m = SentenceTransformer('smoke/minilm-ternary')\nprint(m.encode(['a query']).shape)"],
                        hub_env)
            check("(1, 384)" in shape, "the pushed model did not load back from the Hub")
        finally:
            server.stop()

    with step("render_model_card"):
        card = ternary_hf.render_model_card("q", "smoke/minilm-ternary")
        check("import ternary_hf" in card and "ternary-hf" in card, "render_model_card returned no ternary card")
        print("\n".join(card.splitlines()[:6]))

    with step("fast path: fused whole-model forward from the wheel"):
        from sentence_transformers import SentenceTransformer
        from ternary_hf.kernels import fused_model

        calls = []
        original = fused_model.run_model

        def counting(*a, **k):
            calls.append(1)
            return original(*a, **k)

        fused_model.run_model = counting
        try:
            model = SentenceTransformer("q", device="cpu")
            emb = model.encode(["Ternary weights, native kernels.", "A second sentence."])
        finally:
            fused_model.run_model = original
        check(fused_model.fused_model_count(model) > 0, "no fused whole-model forward installed")
        check(len(calls) > 0, "the encode did not run the native whole-model forward (eager fallback)")
        print(f"embeddings {emb.shape}, native whole-model calls: {len(calls)}")

    with step("evaluate metric modules (offline)"):
        import evaluate
        from ternary_hf.evaluation import metric_path

        fidelity = evaluate.load(metric_path("embedding_fidelity")).compute(
            predictions=emb.tolist(), references=emb.tolist(), k=1)
        check(abs(fidelity["mean_cosine"] - 1) < 1e-6, f"fidelity of identical embeddings: {fidelity}")
        retrieval = evaluate.load(metric_path("retrieval")).compute(
            predictions=[["d2", "d1"]], references=[["d1"]], k=10)
        check(retrieval["mrr@10"] == 0.5, f"retrieval: {retrieval}")
        print(fidelity, retrieval)

    print("\nwheel smoke test passed:")
    for name, seconds in STEPS:
        print(f"  {seconds:7.1f} s  {name}")
    print(f"  {sum(s for _, s in STEPS):7.1f} s  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
