"""Distil a ternary all-MiniLM-L6-v2 from its own full-precision weights, then use it as a
SentenceTransformer.

    PYTHONPATH=$PWD python examples/distill_minilm.py --minutes 5 --output-dir out/minilm-ternary

The same run from the command line: `ternary-hf distill --output_dir out/minilm-ternary
--time_budget_minutes 5` (see `ternary-hf distill --help`; every TrainingArguments flag works).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer, TrainingArguments

import ternary_hf
from ternary_hf.data.wordnet import distillation_texts, heldout_synsets
from ternary_hf.defaults import default_model_path
from ternary_hf.training import DistillationArguments, TernaryDistillationTrainer
from ternary_hf.training.data import wikipedia_paragraphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall-time budget")
    parser.add_argument("--output-dir", default="out/minilm-ternary")
    args = parser.parse_args()
    source = args.model or default_model_path()

    # 1. The student: the same checkpoint, ternarized on load, with latent fp weights to train (QAT).
    student = AutoModel.from_pretrained(source, quantization_config=ternary_hf.TernaryConfig(mode="qat"))
    tokenizer = AutoTokenizer.from_pretrained(source)

    # 2. Distil on WordNet texts (held-out synsets excluded) plus long Wikipedia paragraphs (twice: ~2.5% of the
    #    texts); the teacher, the frozen fp32 copy, is loaded from `source` automatically.
    texts = distillation_texts() + 2 * wikipedia_paragraphs()
    training_args = TrainingArguments(
        output_dir=os.path.join(args.output_dir, "checkpoints"),
        max_steps=100_000,  # the time budget ends the run
        per_device_train_batch_size=32,
        learning_rate=3e-4,
        warmup_steps=100,
        optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length",
        logging_steps=25,
        save_steps=250,
        save_total_limit=1,
        report_to="none",
    )
    trainer = TernaryDistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=texts,
        tokenizer=tokenizer,
        distillation_args=DistillationArguments(time_budget_minutes=args.minutes),  # + learned scales, layer MSE
    )
    trainer.train()
    trainer.save_model(args.output_dir)  # packed 2-bit checkpoint + sentence-transformers files

    # 3. Reload the packed model from disk and compare it with the fp32 model on held-out texts.
    texts = [e for s in heldout_synsets()[:300] for e in s.examples][:200]
    fp32 = SentenceTransformer(source, device="cpu")
    ternary = SentenceTransformer(args.output_dir, device="cpu")
    cos = torch.nn.functional.cosine_similarity(
        ternary.encode(texts, convert_to_tensor=True), fp32.encode(texts, convert_to_tensor=True)
    )
    print(f"{trainer.state.global_step} steps; mean cosine to fp32 on {len(texts)} held-out sentences: "
          f"{cos.mean():.4f}")
    print(ternary_hf.footprint(args.output_dir).to_markdown())


if __name__ == "__main__":
    main()
