"""`ternary-hf quantize`: ternarize a model (post-training), save it packed, report size and quality."""

from __future__ import annotations

import argparse
import json
import os
import time

from ..config import GRANULARITIES, RULES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="Ternarize a model, save it as packed 2-bit safetensors, report footprint and fidelity vs fp32.",
        description="Post-training ternarization of a sentence-transformers / transformers encoder.",
    )
    p.add_argument("model", nargs="?", default=None,
                   help="Model path or Hub id (default: the bundled all-MiniLM-L6-v2).")
    p.add_argument("--output-dir", default="out/minilm-ternary", help="Where to save the packed model.")
    p.add_argument("--granularity", default="per_channel", choices=GRANULARITIES)
    p.add_argument("--rule", default="twn", choices=RULES)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--n-texts", type=int, default=200, help="Real sentences used for the fidelity check.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from sentence_transformers import SentenceTransformer

    from ..config import TernaryConfig
    from ..defaults import default_model_path, sample_sentences
    from ..footprint import footprint
    from ..quality import embedding_fidelity

    model_id = args.model or default_model_path()
    config = TernaryConfig(granularity=args.granularity, rule=args.rule, group_size=args.group_size)
    print(f"Ternarizing {model_id} with {config}")
    t0 = time.perf_counter()
    fp = SentenceTransformer(model_id, device="cpu")
    ternary = SentenceTransformer(model_id, device="cpu", model_kwargs={"quantization_config": config})
    load_s = time.perf_counter() - t0
    ternary.save(args.output_dir)

    texts = sample_sentences(args.n_texts)
    with torch.inference_mode():
        ref = fp.encode(texts, convert_to_tensor=True, batch_size=32)
        out = SentenceTransformer(args.output_dir, device="cpu").encode(texts, convert_to_tensor=True, batch_size=32)
    fidelity = embedding_fidelity(out, ref)
    fp_size = footprint(fp[0].auto_model)
    size = footprint(args.output_dir)

    print("\nFootprint of the saved checkpoint:\n" + size.to_markdown())
    print(f"\nfp32 checkpoint: {fp_size.total:,} bytes in memory; ternary file(s): {size.file_bytes:,} bytes")
    print(f"\nFidelity to fp32 on {fidelity.n_texts} real sentences (reloaded from {args.output_dir}):")
    print(f"  mean cosine {fidelity.mean_cosine:.4f}   min cosine {fidelity.min_cosine:.4f}   "
          f"top-10 neighbour agreement {fidelity.neighbour_agreement_at_10:.3f}")
    print("  (post-training ternarization; distil with `ternary-hf distill` to recover quality)")
    report = {
        "model": model_id,
        "config": {k: v for k, v in config.to_dict().items() if k != "loader_hint"},
        "footprint": size.as_dict(),
        "fidelity": fidelity.as_dict(),
        "load_and_quantize_seconds": load_s,
    }
    path = os.path.join(args.output_dir, "ternary_report.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"\nSaved packed model and {path}")
    return 0
