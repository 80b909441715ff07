"""Whole-model compression of a distilled ternary all-MiniLM-L6-v2: size vs quality, option by option.

Starting from a *distilled* ternary checkpoint (`ternary-hf distill --output_dir DIR`), each row adds one
post-training step (`ternary_hf.compress.compress`) and is saved, reloaded and evaluated:

  linear-only            the distilled checkpoint as is (ternary linears, float embedding tables)
  + int8 embeddings      tables as int8 rows x per-row scale
  + int4 embeddings      tables as 4-bit codes, one scale per --group-size values
  + pruned vocabulary    int4 + vocabulary pruned to the training corpus (WordNet distillation texts +
                         bundled Wikipedia paragraphs; never the evaluation texts)
  + reduced dimension    the above + PCA of the fp32 teacher's embeddings (on the training corpus) to --output-dim
  (ternary embeddings)   ternary tables + pruned vocabulary, for reference

Columns: bytes of every .safetensors file of the saved model (encoder + head modules), ratio to the fp32
model.safetensors, mean retained % of the fp32 model on the evaluation suite (`ternary_hf.evaluation`,
headline metrics), mean cosine to the fp32 embeddings on held-out short texts and ~200-token documents (for
the reduced model: to the fp32 embeddings through the same PCA, i.e. the reduced teacher), vocabulary kept
and its coverage of the evaluation texts.

    python benchmarks/compression.py --distilled out/distilled [--output-dim 256] [--workdir /tmp/compression]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _task_texts(tasks) -> list[str]:
    """Every text of the evaluation tasks (for the coverage report only)."""
    texts: list[str] = []
    for task in tasks:
        for f in dataclasses.fields(task):
            value = getattr(task, f.name)
            if isinstance(value, dict):
                value = list(value.values())
            if isinstance(value, list):
                texts += [v for v in value if isinstance(v, str)]
    return texts


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.safetensors"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distilled", required=True, help="Distilled ternary checkpoint (output of ternary-hf distill).")
    parser.add_argument("--fp32", default=None, help="fp32 teacher (default: the bundled all-MiniLM-L6-v2).")
    parser.add_argument("--workdir", default="/tmp/ternary-compression", help="Where the variants are saved.")
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size.")
    parser.add_argument("--output-dim", type=int, default=256, help="PCA output dimension of the last row.")
    parser.add_argument("--pca-texts", type=int, default=5000, help="Training texts (seeded sample) for the PCA.")
    parser.add_argument("--min-count", type=int, default=1, help="Pruning keeps tokens seen at least this often.")
    parser.add_argument("--wordnet-queries", type=int, default=1000, help="Queries of the WordNet retrieval task.")
    parser.add_argument("--skip-ternary", action="store_true", help="Leave out the ternary-embeddings row.")
    parser.add_argument("--rows", type=int, nargs="+", default=None,
                        help="Evaluate only these rows (0-based, in this order), e.g. --rows 3 4 0 1 2.")
    args = parser.parse_args(argv)

    import numpy as np
    from sentence_transformers import SentenceTransformer

    import ternary_hf
    from ternary_hf.compress import compress, load_ternary_sentence_transformer
    from ternary_hf.training.recipe import load_distillation_texts
    from ternary_hf.defaults import default_model_path
    from ternary_hf.dimension import project_with_head
    from ternary_hf.evaluation import suite
    from ternary_hf.evaluation.fidelity import default_fidelity_sets, paired_cosine
    from ternary_hf.evaluation.models import load_model

    fp32_path = Path(args.fp32 or default_model_path())
    fp32_bytes = (fp32_path / "model.safetensors").stat().st_size
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    # The pruning / PCA corpus is the distillation training data, not the evaluation sets.
    corpus = list(load_distillation_texts(["wordnet", "wikipedia"])["text"])
    pca_corpus = random.Random(0).sample(corpus, min(args.pca_texts, len(corpus)))
    tasks = suite.default_tasks(wordnet_queries=args.wordnet_queries)
    sets = default_fidelity_sets(wordnet_queries=args.wordnet_queries)
    eval_texts = _task_texts(tasks) + sets.short + sets.long
    print(f"corpus: {len(corpus):,} training texts; PCA on {len(pca_corpus):,}; evaluation texts: {len(eval_texts):,}",
          flush=True)

    teacher = SentenceTransformer(str(fp32_path), device="cpu")
    base = suite.evaluate(load_model(teacher), tasks)

    variants = [
        ("linear-only", dict()),
        ("+ int8 embeddings", dict(embedding_dtype="int8")),
        (f"+ int4 embeddings (group {args.group_size})", dict(embedding_dtype="int4")),
        ("+ int4 + pruned vocabulary", dict(embedding_dtype="int4", prune_corpus=corpus)),
        (f"+ int4 + pruned + PCA {args.output_dim}", dict(embedding_dtype="int4", prune_corpus=corpus,
                                                          output_dim=args.output_dim, pca_corpus=pca_corpus)),
    ]
    if not args.skip_ternary:
        variants.append(("(ternary embeddings + pruned)", dict(embedding_dtype="ternary", prune_corpus=corpus)))

    order = args.rows if args.rows is not None else range(len(variants))
    rows = []
    for i in order:
        name, options = variants[i]
        out = work / f"variant{i}"
        t0 = time.perf_counter()
        result = compress(load_ternary_sentence_transformer(args.distilled), out, embedding_group_size=args.group_size,
                          min_count=args.min_count, eval_texts=eval_texts if "prune_corpus" in options else None,
                          teacher=teacher, **options)
        model = SentenceTransformer(str(out), device="cpu")
        report = suite.evaluate(load_model(model), tasks)
        cmp = suite.Comparison.build(report, base)
        cos = {}
        for label, texts in (("short", sets.short), ("long", sets.long)):
            ref = project_with_head(model, __import__("torch").from_numpy(base.cache.encode(texts))).numpy()
            cos[label] = float(np.mean(paired_cosine(report.cache.encode(texts), ref)))
        size = ternary_hf.footprint(out)
        vocab = result.vocabulary
        rows.append((name, _bytes(out), cmp.mean_retained, cos["short"], cos["long"],
                     f"{vocab.kept:,} ({100 * vocab.eval_coverage:.1f}%)" if vocab else f"{size.vocab_size:,}",
                     size.output_dim or size.hidden_size))
        print(f"{name}: {rows[-1][1]:,} bytes, retained {cmp.mean_retained:.2f}%, cos {cos['short']:.4f}/"
              f"{cos['long']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for task_row in cmp.rows:
            print(f"    {task_row['task']} {task_row['metric']}: {task_row['model']:.4f} / {task_row['baseline']:.4f} "
                  f"= {task_row['retained']:.1f}%")

    print(f"\nfp32 model.safetensors: {fp32_bytes:,} bytes; distilled checkpoint: {args.distilled}\n")
    print("| model | bytes | ratio to fp32 | suite mean retained | cos to fp32 short / long | vocabulary kept "
          "(eval coverage) | output dim |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, nbytes, retained, cs, cl, vocab, dim in rows:
        print(f"| {name} | {nbytes:,} | {nbytes / fp32_bytes:.3f}x | {retained:.2f}% | {cs:.4f} / {cl:.4f} | {vocab} | {dim} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
