"""CPU serving speed of ternary models across encoder families, against torch fp32, ONNX Runtime int8 and
OpenVINO int8, with the fidelity of the fast path to the `reference` backend.

Rows: BERT-base shape, XLM-R-base shape, ModernBERT-base shape, ViT-base/16 and a Qwen3-style decoder embedder
(1024 wide, 8 layers, 16 query / 8 key-value heads, RMSNorm, SwiGLU) with random weights (seeded); all-mpnet-base-v2
and all-MiniLM-L6-v2 with their real weights. Per row and shape (32 x 128 and 1 x 32 tokens of real text, no
padding; ViT: 8 and 1 random 224 x 224 images):
  ternary      `AutoModel.from_pretrained(fp32, quantization_config=TernaryConfig())`, default backend (fast path)
  torch fp32   the same checkpoint in torch
  ORT int8     the fp32 model exported to ONNX (opset 17, eager attention) and `quantize_dynamic`'d (QInt8)
  OV int8      the same ONNX file through OpenVINO + `nncf.quantize(..., model_type=TRANSFORMER)` calibrated on
               `--calibration` local texts (Lee corpus; ViT: random images), `INFERENCE_NUM_THREADS`
all in one process, called in turn (A B C D A B C D ...) after a warm-up, 0.1 s idle before each call, median of
`--rounds` rounds, `--threads` threads everywhere. Ratios are sentences/s (images/s) of ternary over each other
runtime, from the same rounds. `fidelity` is the lowest per-sentence cosine between the pooled embeddings of the
fast path and of the `reference` backend (same ternary model) over 32 real texts (mean pooling; ViT: CLS, 8 images;
Qwen3: last token). Each row is appended to `--out` as soon as it is measured.

    HF_HUB_OFFLINE=1 python benchmarks/families_speed.py --threads 2 --rounds 3 \
        --out benchmarks/results/families_speed.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from ternary_hf.fileio import atomic_output_file  # noqa: E402

from cpu_speed import PAUSE_S, batch, lee_documents, machine, minilm_path  # noqa: E402

MPNET = Path(os.environ.get("TERNARY_HF_MPNET", "/work/cache/mpnet/all-mpnet-base-v2"))
VARIANTS = ("ternary", "torch fp32", "ORT int8", "OV int8")


@dataclass
class Row:
    name: str
    kind: str  # "text" | "image"
    pooling: str  # "mean" | "cls" | "last"

    def checkpoint(self, workdir: Path) -> Path:
        """The fp32 checkpoint of the row (random-weight ones are created once in `workdir`)."""
        if self.name == "all-MiniLM-L6-v2 (real)":
            return minilm_path()
        if self.name == "all-mpnet-base-v2 (real)":
            if not (MPNET / "model.safetensors").exists():
                raise FileNotFoundError(f"{MPNET}: run /work/shared/tools/fetch_mpnet.sh {MPNET.parent}")
            return MPNET
        path = workdir / self.name.split(" ")[0]
        if not (path / "config.json").exists():
            torch.manual_seed(0)
            random_model(self.name).eval().save_pretrained(path)
        return path


ROWS = (
    Row("BERT-base shape", "text", "mean"),
    Row("XLM-R-base shape", "text", "mean"),
    Row("all-mpnet-base-v2 (real)", "text", "mean"),
    Row("ModernBERT-base shape", "text", "mean"),
    Row("ViT-base/16 shape", "image", "cls"),
    Row("Qwen3-style decoder (1024 wide, 8 layers)", "text", "last"),
    Row("all-MiniLM-L6-v2 (real)", "text", "mean"),
)


def random_model(name: str):
    import transformers as tf

    if name.startswith("BERT"):
        return tf.BertModel(tf.BertConfig())
    if name.startswith("XLM-R"):
        return tf.XLMRobertaModel(tf.XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514,
                                                      type_vocab_size=1, layer_norm_eps=1e-5))
    if name.startswith("ModernBERT"):
        return tf.ModernBertModel(tf.ModernBertConfig())
    if name.startswith("ViT"):
        return tf.ViTModel(tf.ViTConfig())
    if name.startswith("Qwen3"):
        return tf.Qwen3Model(tf.Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                                            num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8,
                                            head_dim=128, tie_word_embeddings=True))
    raise ValueError(name)


def tokenizer_for(row: Row, path: Path):
    from transformers import AutoTokenizer

    # random-weight rows read real text through MiniLM's tokenizer (ids < 30522 are valid in every vocabulary here)
    src = path if (path / "tokenizer.json").exists() or (path / "vocab.txt").exists() else minilm_path()
    return AutoTokenizer.from_pretrained(src)


def inputs_for(row: Row, tok, size: int, length: int) -> dict[str, torch.Tensor]:
    if row.kind == "image":
        g = torch.Generator().manual_seed(size)
        return {"pixel_values": torch.randn(size, 3, 224, 224, generator=g)}
    enc = batch(tok, size, length)
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}


# ---------------------------------------------------------------- exports

def export_onnx(model, row: Row, path: Path) -> None:
    model.config._attn_implementation = "eager"
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            if row.kind == "image":
                return self.m(pixel_values=xs[0]).last_hidden_state
            return self.m(input_ids=xs[0], attention_mask=xs[1]).last_hidden_state

    if row.kind == "image":
        names, example = ["pixel_values"], (torch.randn(2, 3, 224, 224),)
        axes = {"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}}
    else:
        names = ["input_ids", "attention_mask"]
        example = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
        axes = {n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]}
    with torch.no_grad():
        torch.onnx.export(Wrapped(model).eval(), example, str(path), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)


def calibration_items(row: Row, tok, n: int) -> list[dict]:
    import numpy as np

    if row.kind == "image":
        g = torch.Generator().manual_seed(123)
        return [{"pixel_values": torch.randn(1, 3, 224, 224, generator=g).numpy()} for _ in range(n)]
    items = []
    for doc in lee_documents()[:n]:
        enc = tok(doc, truncation=True, max_length=128, return_tensors="np")
        items.append({"input_ids": enc["input_ids"].astype(np.int64),
                      "attention_mask": enc["attention_mask"].astype(np.int64)})
    return items


def build_runtimes(row: Row, path: Path, tok, workdir: Path, threads: int, calibration: int) -> dict:
    """`name -> run(inputs)` for every variant that could be built, and `name -> reason` for the others."""
    import ternary_hf
    from transformers import AutoModel

    runners, failed = {}, {}
    tern = AutoModel.from_pretrained(path, quantization_config=ternary_hf.TernaryConfig()).eval()
    ternary_hf.kernels.prepare(tern)
    fp32 = AutoModel.from_pretrained(path).eval()

    def torch_runner(model):
        def run(inputs):
            with torch.inference_mode():
                return model(**inputs).last_hidden_state
        return run

    runners["ternary"] = torch_runner(tern)
    runners["torch fp32"] = torch_runner(fp32)
    stem = workdir / path.name.replace(" ", "_")
    onnx_fp32, onnx_int8 = Path(f"{stem}-fp32.onnx"), Path(f"{stem}-int8.onnx")
    try:
        if not onnx_fp32.exists():  # (atomic writes: another process may be preparing the same row)
            with atomic_output_file(onnx_fp32, suffix=".onnx") as tmp:
                export_onnx(AutoModel.from_pretrained(path).eval(), row, tmp)
    except Exception as exc:  # an architecture the legacy exporter cannot trace: reported in the table
        failed["ORT int8"] = failed["OV int8"] = f"ONNX export failed: {type(exc).__name__}: {str(exc)[:120]}"
        traceback.print_exc()
        return {"runners": runners, "failed": failed, "ternary_model": tern}
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if not onnx_int8.exists():
            with atomic_output_file(onnx_int8, suffix=".onnx") as tmp:
                quantize_dynamic(str(onnx_fp32), str(tmp), weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(onnx_int8), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        runners["ORT int8"] = lambda inputs, s=session, n=names: s.run(None, {k: inputs[k].numpy() for k in n})[0]
    except Exception as exc:
        failed["ORT int8"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        traceback.print_exc()
    try:
        import nncf
        import openvino as ov

        core = ov.Core()
        ov_int8 = Path(f"{stem}-ov-int8.xml")
        if not ov_int8.exists():
            items = calibration_items(row, tok, calibration)
            quantized = nncf.quantize(core.read_model(str(onnx_fp32)), nncf.Dataset(items),
                                      model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
            with atomic_output_file(ov_int8.with_suffix(".bin"), suffix=".bin") as tmp_bin:
                ov.save_model(quantized, str(tmp_bin.with_suffix(".xml")))
                tmp_bin.with_suffix(".xml").rename(ov_int8.with_suffix(".xml.part"))
            os.replace(ov_int8.with_suffix(".xml.part"), ov_int8)  # the xml (read first) only once its .bin is in place
        compiled = core.compile_model(str(ov_int8), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                            "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        in_names = [i.get_any_name() for i in compiled.inputs]

        def ov_run(inputs, r=request, n=in_names):
            return r.infer({k: inputs[k].numpy() for k in n})

        runners["OV int8"] = ov_run
    except Exception as exc:
        failed["OV int8"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        traceback.print_exc()
    return {"runners": runners, "failed": failed, "ternary_model": tern}


# ---------------------------------------------------------------- measurements

def time_alternating(runners: dict, inputs, rounds: int, warmup: int) -> dict[str, float]:
    for run in runners.values():
        for _ in range(warmup):
            run(inputs)
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            run(inputs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def pool(h: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    if how == "cls":
        return h[:, 0]
    if how == "last":
        last = (mask.sum(1) - 1) if mask is not None else torch.full((h.shape[0],), h.shape[1] - 1)
        return h[torch.arange(h.shape[0]), last]
    m = mask.unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


def fidelity(row: Row, model, tok) -> float:
    """Lowest per-sentence cosine of pooled embeddings, fast path vs `reference` backend, on real text."""
    import torch.nn.functional as F

    from ternary_hf.kernels import use_backend

    if row.kind == "image":
        enc = {"pixel_values": torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(7))}
    else:
        enc = dict(tok(lee_documents()[:32], padding=True, truncation=True, max_length=128, return_tensors="pt"))
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    mask = enc.get("attention_mask")
    with torch.inference_mode():
        fast = pool(model(**enc).last_hidden_state, mask, row.pooling)
        with use_backend("reference"):
            ref = pool(model(**enc).last_hidden_state, mask, row.pooling)
    return F.cosine_similarity(fast, ref, dim=-1).min().item()


def fmt_ratio(times: dict, other: str, failed: dict) -> str:
    if other not in times:
        return "n/a"
    return f"{times[other] / times['ternary']:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=300, help="OpenVINO int8 calibration texts")
    parser.add_argument("--image-calibration", type=int, default=64, help="OpenVINO int8 calibration images (ViT)")
    parser.add_argument("--rows", default="", help="comma-separated row-name prefixes (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ternary_hf_families"))
    parser.add_argument("--out", type=Path, default=None, help="Markdown file the rows are appended to")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    wanted = [w.strip() for w in args.rows.split(",") if w.strip()]
    rows = [r for w in wanted for r in ROWS if r.name.startswith(w)] if wanted else list(ROWS)  # in the given order
    header = ("| model | shape | ternary /s | torch fp32 /s | ORT int8 /s | OV int8 /s | ternary / fp32 | "
              "ternary / ORT int8 | ternary / OV int8 | fidelity (min cos) |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"Machine: {machine()}; {args.threads} threads; load average at start "
             f"{os.getloadavg()[0]:.1f} (shared machine); rounds {args.rounds}, warm-up {args.warmup}.", "", header]
    print("\n".join(lines), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")
    for row in rows:
        try:
            path = row.checkpoint(args.workdir)
            tok = tokenizer_for(row, path) if row.kind == "text" else None
            n_cal = args.image_calibration if row.kind == "image" else args.calibration
            built = build_runtimes(row, path, tok, args.workdir, args.threads, n_cal)
            fid = fidelity(row, built["ternary_model"], tok)
            for size, length in ((32, 128), (1, 32)) if row.kind == "text" else ((8, 0), (1, 0)):
                inputs = inputs_for(row, tok, size, length)
                times = time_alternating(built["runners"], inputs, args.rounds, args.warmup)
                rate = {k: size / v for k, v in times.items()}
                shape = f"{size} x {length}" if row.kind == "text" else f"{size} images"
                cells = [f"{rate[v]:.1f}" if v in rate else built["failed"].get(v, "n/a")[:60] for v in VARIANTS]
                line = (f"| {row.name} | {shape} | {' | '.join(cells)} | {fmt_ratio(times, 'torch fp32', {})} | "
                        f"{fmt_ratio(times, 'ORT int8', {})} | {fmt_ratio(times, 'OV int8', {})} | {fid:.5f} |")
                print(line + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")
            del built
        except Exception as exc:
            traceback.print_exc()
            line = f"| {row.name} | - | failed: {type(exc).__name__}: {str(exc)[:100]} | | | | | | | |"
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
