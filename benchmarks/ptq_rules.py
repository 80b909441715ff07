"""Post-training ternarization of the bundled all-MiniLM-L6-v2 under every rule x granularity.

Prints one table: teacher fidelity (cosine of sentence embeddings to fp32, top-10 neighbour agreement)
on real sentences, and the stored size. This is how the default (per_channel + twn) was chosen.

    python benchmarks/ptq_rules.py [--n-texts 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

import ternary_hf  # noqa: E402
from ternary_hf.defaults import default_model_path, sample_sentences  # noqa: E402
from ternary_hf.evaluation.fidelity import embedding_fidelity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--n-texts", type=int, default=200)
    args = parser.parse_args()
    model_id = args.model or default_model_path()
    texts = sample_sentences(args.n_texts)
    with torch.inference_mode():
        ref = SentenceTransformer(model_id, device="cpu").encode(texts, convert_to_tensor=True)
    rows = []
    default_emb = None
    for granularity in ("per_tensor", "per_channel", "per_group"):
        for rule in ("twn", "absmean", "paper"):
            cfg = ternary_hf.TernaryConfig(granularity=granularity, rule=rule, group_size=128)
            st = SentenceTransformer(model_id, device="cpu", model_kwargs={"quantization_config": cfg})
            with torch.inference_mode():
                emb = st.encode(texts, convert_to_tensor=True)
            fid = embedding_fidelity(emb, ref)
            with tempfile.TemporaryDirectory() as d:
                st[0].auto_model.save_pretrained(d)
                ratio = ternary_hf.footprint(d).ratio
            if (granularity, rule) == ("per_channel", "twn"):
                default_emb = emb
            rows.append((granularity, rule, fid.mean_cosine, fid.min_cosine, fid.neighbour_agreement_at_10, ratio))
    print(f"\nPTQ of {os.path.basename(model_id.rstrip('/'))} on {len(texts)} real sentences (no training)\n")
    print("| granularity | rule | mean cos to fp32 | min cos | top-10 agreement | size / fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    for g, r, mean, low, agree, ratio in sorted(rows, key=lambda row: -row[2]):
        print(f"| {g} | {r} | {mean:.3f} | {low:.3f} | {agree:.3f} | {ratio:.3f} |")

    # int8 embedding tables on top of the default: what they cost against float tables, what they save.
    cfg = ternary_hf.TernaryConfig(embedding_dtype="int8")
    st = SentenceTransformer(model_id, device="cpu", model_kwargs={"quantization_config": cfg})
    with torch.inference_mode():
        emb = st.encode(texts, convert_to_tensor=True)
    fid = embedding_fidelity(emb, default_emb)
    with tempfile.TemporaryDirectory() as d:
        st[0].auto_model.save_pretrained(d)
        size = ternary_hf.footprint(d)
    print(f"\nper_channel + twn with embedding_dtype='int8': size / fp32 {size.ratio:.3f} "
          f"({size.total:,} bytes); cosine to the same model with float tables: mean {fid.mean_cosine:.4f}, "
          f"min {fid.min_cosine:.4f}")


if __name__ == "__main__":
    main()
