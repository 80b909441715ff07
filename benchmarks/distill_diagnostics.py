"""Where a distilled ternary model still differs from its fp32 teacher: three tables.

    PYTHONPATH=$PWD python benchmarks/distill_diagnostics.py runs/L3F/ptq runs/L3F/snapshots/step-*

1. Code changes: the share of ternary codes that differ between consecutive packed checkpoints given on
   the command line (e.g. the PTQ model and the snapshots of a `benchmarks/distill_recipe.py` run), and
   the share of zero codes. Tells how far distillation moves the ternary grid at each stage.
2. Token fidelity of the last checkpoint: mean cosine between its last hidden states and the fp32 teacher's,
   on held-out short WordNet examples and on the Lee background news documents, (a) by token position in
   the full (up to 256-token) documents and (b) for the first 16 tokens when the documents are truncated
   to 16 ... 256 tokens. (b) separates the effect of the text itself (truncated to 16 tokens) from the
   effect of a long context on the same tokens.
3. Sentence-embedding cosine of the last checkpoint before and after removing the mean error of each set.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

import ternary_hf  # noqa: E402,F401
from ternary_hf.checkpoint import read_checkpoint_index  # noqa: E402
from ternary_hf.packing import unpack_codes  # noqa: E402

POSITION_BINS = (0, 16, 32, 64, 128, 192, 256)
TRUNCATIONS = (16, 32, 64, 128, 256)


def packed_codes(checkpoint: str) -> dict[str, torch.Tensor]:
    """`{layer name: int8 codes}` of every ternary linear in a packed checkpoint directory (the layers and
    their shapes as the checkpoint's ternary-hf metadata lists them)."""
    path = os.path.join(checkpoint, "model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: pass directories holding a packed model.safetensors")
    index = read_checkpoint_index([path])
    if not index.layer_shapes:
        raise ValueError(f"{path} holds no packed ternary weights (is it a ternary-hf checkpoint?)")
    with safe_open(path, "pt") as f:
        return {name: unpack_codes(f.get_tensor(f"{name}.weight"), out) for name, (out, _) in index.layer_shapes.items()}


def code_changes(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> tuple[float, float]:
    """`(share of codes that differ, share of zero codes in new)` between the `packed_codes` of two
    checkpoints of one model."""
    if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in new):
        raise ValueError("the two checkpoints hold different ternary layers; compare checkpoints of one model")
    total = sum(v.numel() for v in new.values())
    changed = sum(int((old[k] != new[k]).sum()) for k in new)
    zeros = sum(int((new[k] == 0).sum()) for k in new)
    return changed / total, zeros / total


def code_change_table(checkpoints: list[str]) -> None:
    print("| from | to | codes changed | zero codes (to) |\n|---|---|---:|---:|")
    previous = packed_codes(checkpoints[0])
    for before, after in zip(checkpoints, checkpoints[1:]):
        current = packed_codes(after)  # each checkpoint is read once
        changed, zeros = code_changes(previous, current)
        print(f"| {before} | {after} | {100 * changed:.2f}% | {100 * zeros:.1f}% |")
        previous = current


@torch.no_grad()
def _token_cosines(student, teacher, tokenizer, texts: list[str], max_length: int, batch_size: int = 16):
    """Per-token cosine `[n, length]` and the attention mask, batch by batch."""
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        s = student(**batch).last_hidden_state
        t = teacher(**batch).last_hidden_state
        yield torch.nn.functional.cosine_similarity(s.float(), t.float(), dim=-1), batch["attention_mask"].bool()


def token_fidelity_tables(checkpoint: str, teacher_path: str, sets: Any, n_docs: int) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    teacher = AutoModel.from_pretrained(teacher_path).eval()
    student = AutoModel.from_pretrained(checkpoint).eval()
    docs = sets.long[:n_docs]

    short = [c[m] for c, m in _token_cosines(student, teacher, tokenizer, sets.short[:500], 256)]
    print(f"\nToken cosine to fp32, {checkpoint}\n\nshort held-out WordNet examples (500): "
          f"{torch.cat(short).mean():.4f}\n")
    sums = {lo: [0.0, 0] for lo in POSITION_BINS[:-1]}
    for c, m in _token_cosines(student, teacher, tokenizer, docs, 256):
        for lo, hi in zip(POSITION_BINS, POSITION_BINS[1:]):
            values = c[:, lo:hi][m[:, lo:hi]]
            sums[lo][0] += float(values.sum())
            sums[lo][1] += values.numel()
    print(f"| Lee documents ({len(docs)}), token positions | tokens | mean token cosine |\n|---|---:|---:|")
    for lo, hi in zip(POSITION_BINS, POSITION_BINS[1:]):
        total, count = sums[lo]
        if count:
            print(f"| {lo}-{hi - 1} | {count} | {total / count:.4f} |")
    print("\n| Lee documents truncated to | mean token cosine, all tokens | first 16 tokens |\n|---:|---:|---:|")
    for length in TRUNCATIONS:
        all_c, first = [], []
        for c, m in _token_cosines(student, teacher, tokenizer, docs, length):
            all_c.append(c[m])
            first.append(c[:, :16][m[:, :16]])
        print(f"| {length} | {torch.cat(all_c).mean():.4f} | {torch.cat(first).mean():.4f} |")


def mean_error_table(checkpoint: str, teacher_path: str, sets: Any) -> None:
    """Sentence-embedding cosine to fp32 before and after removing the mean error over each set: how much of
    the error is one shared direction rather than specific to each text."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from ternary_hf.evaluation.fidelity import paired_cosine

    teacher, student = SentenceTransformer(teacher_path, device="cpu"), SentenceTransformer(checkpoint, device="cpu")
    print("\n| set | cosine to fp32 | after removing the mean error | norm of the mean error |\n|---|---:|---:|---:|")
    for name in ("short", "long"):
        texts = getattr(sets, name)
        t = teacher.encode(texts, batch_size=64, convert_to_numpy=True)
        s = student.encode(texts, batch_size=64, convert_to_numpy=True)
        mean_error = (s - t).mean(axis=0)
        print(f"| {name} ({len(texts)}) | {paired_cosine(s, t).mean():.4f} | "
              f"{paired_cosine(s - mean_error, t).mean():.4f} | {np.linalg.norm(mean_error):.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="Packed checkpoints of one model, oldest first.")
    parser.add_argument("--teacher", default=None, help="fp32 model (default: the bundled all-MiniLM-L6-v2).")
    parser.add_argument("--documents", type=int, default=120, help="Lee documents for the token tables.")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if len(args.checkpoints) > 1:
        code_change_table(args.checkpoints)
    from ternary_hf.defaults import default_model_path
    from ternary_hf.evaluation import default_fidelity_sets

    teacher, sets = args.teacher or str(default_model_path()), default_fidelity_sets()
    token_fidelity_tables(args.checkpoints[-1], teacher, sets, args.documents)
    mean_error_table(args.checkpoints[-1], teacher, sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
