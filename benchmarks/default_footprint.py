"""Which embedding-table format should the default job (quickstart, `ternary-hf quantize`) produce?

Distils the bundled all-MiniLM-L6-v2 with the recipe for `--steps` steps (or takes `--distilled DIR`), then stores
the same distilled model four ways (`ternary_hf.compress.compress`), reloads each from disk and measures:

  float tables           ternary linears, embedding tables as loaded (fp32): the default before this benchmark
  int8 tables            int8 rows x per-row scale
  int4 tables            4-bit codes, one scale per 64 values of a row
  int4 + pruned vocab    int4, and the vocabulary pruned to the distillation corpus (WordNet + Wikipedia texts)

Columns: `footprint()` ratio to the fp32 checkpoint; mean / min cosine to the fp32 model's embeddings on held-out
short texts (--fidelity-short) and long Lee documents (--fidelity-long); mean cosine to the float-table variant (what the table format
alone costs); top-10 neighbour agreement with fp32; and the quickstart's evaluation (its six tasks, the WordNet
retrieval corpus cut to --wordnet-docs documents): mean retained % of fp32.

    python benchmarks/default_footprint.py --steps 100 --workdir /tmp/default-footprint
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VARIANTS = (
    ("float tables", {}),
    ("int8 tables", {"embedding_dtype": "int8"}),
    ("int4 tables (group 64)", {"embedding_dtype": "int4"}),
    ("int4 + pruned vocabulary", {"embedding_dtype": "int4", "prune": True}),
)


def distil(workdir: Path, steps: int) -> Path:
    """A recipe-distilled MiniLM with float tables (the starting point of every variant)."""
    from ternary_hf.training.recipe import (RecipeArguments, distill, recipe_distillation_arguments,
                                            recipe_training_arguments)

    out = workdir / "distilled"
    targs = recipe_training_arguments(str(out), max_steps=steps, save_strategy="no", logging_steps=50,
                                      disable_tqdm=True, dataloader_pin_memory=False)
    distill(RecipeArguments(), recipe_distillation_arguments(time_budget_minutes=0), targs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distilled", default=None, help="A distilled ternary checkpoint (default: distil one now).")
    parser.add_argument("--steps", type=int, default=100, help="Recipe steps when distilling here.")
    parser.add_argument("--workdir", default="/tmp/ternary-default-footprint")
    parser.add_argument("--wordnet-queries", type=int, default=500)
    parser.add_argument("--fidelity-short", type=int, default=1000, help="Held-out short texts for the cosines.")
    parser.add_argument("--fidelity-long", type=int, default=300, help="Long Lee documents for the cosines.")
    parser.add_argument("--wordnet-docs", type=int, default=3000,
                        help="WordNet retrieval corpus: the relevant definitions + random distractors, this many in all.")
    args = parser.parse_args(argv)

    import numpy as np
    from sentence_transformers import SentenceTransformer

    import ternary_hf
    from ternary_hf.compress import compress, load_ternary_sentence_transformer
    from ternary_hf.defaults import default_model_path
    from ternary_hf.evaluation import Comparison, evaluate, load_model, teacher_fidelity
    from ternary_hf.quickstart.config import FULL
    from ternary_hf.quickstart.stages import evaluation_data
    from ternary_hf.evaluation.fidelity import paired_cosine
    from ternary_hf.training.recipe import RecipeArguments, load_distillation_texts

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    distilled = Path(args.distilled) if args.distilled else distil(work, args.steps)
    print(f"distilled checkpoint: {distilled} ({time.perf_counter() - t0:.0f} s)", flush=True)

    corpus = list(load_distillation_texts(RecipeArguments().data)["text"])
    # the quickstart's evaluation (its data and task list), with the WordNet corpus cut to --wordnet-docs
    sizes = dataclasses.replace(FULL, wordnet_queries=args.wordnet_queries, wordnet_docs=args.wordnet_docs,
                                fidelity_short=args.fidelity_short, fidelity_long=args.fidelity_long)
    tasks, sets, _ = evaluation_data(sizes, seed=0)
    fp32 = evaluate(load_model(SentenceTransformer(str(default_model_path()), device="cpu"), label="fp32"), tasks)
    float_cache = None
    rows = []
    for i, (name, options) in enumerate(VARIANTS):
        out = work / f"variant{i}"
        t0 = time.perf_counter()
        compress(load_ternary_sentence_transformer(distilled), out,
                 embedding_dtype=options.get("embedding_dtype"), prune_corpus=corpus if options.get("prune") else None)
        report = evaluate(load_model(SentenceTransformer(str(out), device="cpu"), label=name), tasks)
        cmp = Comparison.build(report, fp32)
        cos = {label: paired_cosine(report.cache.encode(texts), fp32.cache.encode(texts))
               for label, texts in (("short", sets.short), ("long", sets.long))}
        float_cache = float_cache or report.cache
        to_float = float(np.mean(paired_cosine(report.cache.encode(sets.short), float_cache.encode(sets.short))))
        agreement = teacher_fidelity(report.cache, fp32.cache, sets)[f"top{sets.k}_agreement"]
        size = ternary_hf.footprint(out)
        rows.append((name, size.total, size.ratio, float(cos["short"].mean()), float(cos["short"].min()),
                     float(cos["long"].mean()), to_float, agreement, cmp.mean_retained, size.vocab_size))
        print(f"{name}: ratio {size.ratio:.3f}, cos short {rows[-1][3]:.4f}, retained {cmp.mean_retained:.2f}% "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for r in cmp.rows:
            print(f"    {r['task']} {r['metric']}: {r['model']:.4f} / {r['baseline']:.4f} = {r['retained']:.1f}%")

    print(f"\nfp32: {default_model_path()}; distilled: {distilled}\n")
    print("| tables | bytes | ratio to fp32 | cos to fp32 short (mean / min) | cos to fp32 long | cos to float tables "
          "| top-10 agreement | suite mean retained | vocabulary |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, nbytes, ratio, cs, cs_min, cl, cf, agree, retained, vocab in rows:
        print(f"| {name} | {nbytes:,} | {ratio:.3f}x | {cs:.4f} / {cs_min:.4f} | {cl:.4f} | {cf:.5f} | {agree:.3f} "
              f"| {retained:.2f}% | {vocab:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
