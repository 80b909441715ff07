"""`ternary-hf quantize`: ternarize a model (post-training), save it packed, report size and quality."""

from __future__ import annotations

import argparse
import os
import random
import time

from ..config import EMBEDDING_DTYPES, GRANULARITIES, RULES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="Ternarize a model, save it as packed 2-bit safetensors, report footprint and fidelity vs fp32.",
        description="Post-training ternarization of a sentence-transformers / transformers encoder.",
    )
    p.add_argument("model", nargs="?", default=None,
                   help="Model path or Hub id (default: the bundled all-MiniLM-L6-v2).")
    p.add_argument("--output-dir", default="out/minilm-ternary", help="Where to save the packed model.")
    p.add_argument("--granularity", default="per_channel", choices=GRANULARITIES,
                   help="One scale per matrix, per output row (default) or per --group-size inputs of a row. "
                        "per_channel suits most models; per_group stores more scales.")
    p.add_argument("--rule", default="twn", choices=RULES,
                   help="How weights become {-1, 0, +1} x scale: twn (threshold 0.7 mean|W|, the default), absmean "
                        "(BitNet b1.58) or paper (scale 2 mean|W|). Keep twn unless you reproduce those methods.")
    p.add_argument("--group-size", type=int, default=128,
                   help="Inputs per scale with --granularity per_group; must divide every layer's input size.")
    p.add_argument("--embedding-dtype", default="int8", choices=EMBEDDING_DTYPES,
                   help="Embedding tables: int8 rows x per-row scale (4x smaller), int4 with one scale per "
                        "--embedding-group-size values (~7x), ternary rows x per-row scale (~15x, lossier). "
                        "Applied post-training when MODEL is already a ternary (e.g. distilled) checkpoint.")
    p.add_argument("--embedding-group-size", type=int, default=64, help="Values per scale for --embedding-dtype int4.")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="Choose the ternary codes with calibration (GPTQ for ternary, ternary_hf.calibration) on N "
                        "texts of --calibration-data instead of rounding each weight alone: a better post-training "
                        "model when you will not distil it (a few hundred texts are enough; takes minutes). 0 = off.")
    p.add_argument("--calibration-data", nargs="+", default=["wordnet", "wikipedia"], metavar="CORPUS",
                   help="Texts for --calibrate: `wordnet`, `wikipedia` and/or .txt/.jsonl/.csv files.")
    p.add_argument("--prune-vocab", nargs="+", metavar="CORPUS", default=None,
                   help="Keep only the tokens these texts use (plus specials and single characters): `wordnet`, "
                        "`wikipedia` (the bundled training texts) and/or .txt/.jsonl/.csv files. Never pass your "
                        "evaluation texts. The tokenizer and the embedding table shrink together.")
    p.add_argument("--min-count", type=int, default=1, help="With --prune-vocab: keep tokens seen at least this often.")
    p.add_argument("--output-dim", type=_positive_int, default=None,
                   help="Reduce the output dimension with a PCA of the fp32 teacher's embeddings of the --prune-vocab "
                        "(or --pca-corpus) texts, stored as a sentence-transformers Dense module.")
    p.add_argument("--pca-corpus", nargs="+", default=None, help="Texts for --output-dim (default: the --prune-vocab ones).")
    p.add_argument("--pca-texts", type=int, default=5000, help="At most this many texts (seeded sample) for the PCA.")
    p.add_argument("--n-texts", type=int, default=200, help="Real sentences used for the fidelity check.")
    p.add_argument("--baseline", default=None,
                   help="fp32 model to compare with when MODEL is already ternary (default: the bundled all-MiniLM-L6-v2).")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a dimension: pass an integer >= 1, or leave the option out.")
    return value


def check_output_dir(path: str, source: str | None = None) -> None:
    """Before any work: `--output-dir` must be a new folder, the source itself (in place) or a model folder
    (replaced); never an existing file or a folder of other files, which the finished model would replace."""
    from pathlib import Path

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--output-dir {out} is an existing file; pass a folder path.")
    if out.is_dir() and any(out.iterdir()) and not any((out / n).is_file() for n in ("config.json", "modules.json")):
        raise SystemExit(f"--output-dir {out} is a folder that holds no model (no config.json / modules.json): the "
                         "saved model would replace its contents. Pass a new or empty folder, or a model folder.")
    if source is not None and Path(source).expanduser().resolve() in out.resolve().parents:
        raise SystemExit(f"--output-dir {out} is inside the source model folder {source}; pass a folder outside it.")


def _texts(sources: list[str]) -> list[str]:
    from ..training.recipe import load_distillation_texts

    return list(load_distillation_texts(sources)["text"])


def run(args: argparse.Namespace) -> int:
    import torch
    from sentence_transformers import SentenceTransformer

    from ..config import TernaryConfig
    from ..defaults import DEFAULT_MODEL_ID, default_model_path, sample_sentences
    from ..footprint import footprint
    from ..hub import CardInfo, build_model_card
    from ..compress import compress, is_ternary_checkpoint, load_ternary_sentence_transformer
    from ..dimension import project_with_head
    from ..evaluation.fidelity import embedding_fidelity
    from ..fileio import atomic_write_json, staged_directory

    model_id = args.model or default_model_path()
    check_output_dir(args.output_dir, model_id)
    # Texts first: a bad corpus file is reported (file and line) before any model is loaded.
    prune_texts = _texts(args.prune_vocab) if args.prune_vocab else None
    pca_texts = _texts(args.pca_corpus) if args.pca_corpus else prune_texts
    if args.output_dim and pca_texts is None:
        raise SystemExit("--output-dim needs texts for the PCA: pass --prune-vocab or --pca-corpus.")
    if pca_texts is not None and len(pca_texts) > args.pca_texts:
        pca_texts = random.Random(0).sample(pca_texts, args.pca_texts)
    calibration_pool = _texts(args.calibration_data) if args.calibrate else None
    pre_quantized = is_ternary_checkpoint(model_id)
    if args.calibrate and pre_quantized:
        raise SystemExit("--calibrate applies to full-precision models; this one is already ternary.")
    config = TernaryConfig(granularity=args.granularity, rule=args.rule, group_size=args.group_size,
                           embedding_dtype=args.embedding_dtype, embedding_group_size=args.embedding_group_size)
    t0 = time.perf_counter()
    fp_source = model_id
    if pre_quantized:
        print(f"{model_id} is already ternary: compressing it post-training (its linear layers are kept as stored)")
        ternary = load_ternary_sentence_transformer(model_id)
        fp_source = args.baseline or default_model_path()
    else:
        print(f"Ternarizing {model_id} with {config}")
        ternary = load_ternary_sentence_transformer(model_id, config)
    fp = SentenceTransformer(str(fp_source), device="cpu")
    if args.calibrate:
        from ..calibration import calibrate_ternary_model

        texts = random.Random(0).sample(calibration_pool, min(args.calibrate, len(calibration_pool)))
        n = calibrate_ternary_model(ternary[0].auto_model, fp[0].auto_model, fp.tokenizer, texts)
        print(f"Calibrated the codes of {n} layers on {len(texts)} texts ({' + '.join(args.calibration_data)})")
    load_s = time.perf_counter() - t0
    # Everything is written to a temporary folder that replaces --output-dir only once complete: a failure (full
    # disk, Ctrl-C) leaves it as it was, also in place (--output-dir = the source checkpoint).
    with staged_directory(args.output_dir) as stage:
        result = compress(ternary, stage,
                          embedding_dtype=args.embedding_dtype if pre_quantized else None,
                          embedding_group_size=args.embedding_group_size, prune_corpus=prune_texts,
                          min_count=args.min_count, eval_texts=sample_sentences(args.n_texts),
                          output_dim=args.output_dim, pca_corpus=pca_texts, teacher=fp)
        for line in result.lines():
            print("  " + line)
        config = ternary[0].auto_model.config.quantization_config

        texts = sample_sentences(args.n_texts)
        with torch.inference_mode():
            ref = fp.encode(texts, convert_to_tensor=True, batch_size=32)
            reloaded = SentenceTransformer(str(stage), device="cpu")
            out = reloaded.encode(texts, convert_to_tensor=True, batch_size=32)
            ref = project_with_head(reloaded, ref)  # the reduced teacher, when the output dimension was reduced
        fidelity = embedding_fidelity(out, ref)
        fp_size = footprint(fp[0].auto_model)
        size = footprint(stage)
        report = {
            "model": model_id,
            "config": {k: v for k, v in config.to_dict().items() if k != "loader_hint"},
            "footprint": size.as_dict(),
            "fidelity": fidelity.as_dict(),
            "load_and_quantize_seconds": load_s,
            "vocabulary": result.vocabulary.as_dict() if result.vocabulary is not None else None,
            "pca": vars(result.pca) if result.pca is not None else None,
        }
        # sentence-transformers copies the fp32 model's README; replace it with the ternary model card.
        base_model = args.model or DEFAULT_MODEL_ID
        card = build_model_card(stage, repo_id=f"your-name/{os.path.basename(os.path.abspath(args.output_dir))}",
                                card=CardInfo(base_model=base_model, description=(
                                    f"Post-training ternarization of `{base_model}` (mean cosine "
                                    f"{fidelity.mean_cosine:.3f} to fp32 on {fidelity.n_texts} real sentences).")))
        card.save(os.path.join(stage, "README.md"))
        atomic_write_json(os.path.join(stage, "ternary_report.json"), report)

    print("\nFootprint of the saved checkpoint:\n" + size.to_markdown())
    print(f"\nfp32 checkpoint: {fp_size.total:,} bytes in memory; ternary file(s): {size.file_bytes:,} bytes")
    print(f"\nFidelity to fp32 on {fidelity.n_texts} real sentences (reloaded from {args.output_dir}):")
    print(f"  mean cosine {fidelity.mean_cosine:.4f}   min cosine {fidelity.min_cosine:.4f}   "
          f"top-10 neighbour agreement {fidelity.neighbour_agreement_at_10:.3f}")
    if not pre_quantized:
        print("  (post-training ternarization; distil with `ternary-hf distill` to recover quality)")
    print(f"\nSaved packed model and {os.path.join(args.output_dir, 'ternary_report.json')}")
    return 0
