"""Shared helpers for the distillation / PEFT / accelerate tests: a tiny random BERT with its own tiny
tokenizer (the vocabulary of the texts below), saved like a real checkpoint."""

from __future__ import annotations

import os

import torch

WORDS = (
    "the a an of to in on at and or but is was are be been cat dog bird fish tree house car road river sea "
    "sun moon star sky rain snow wind fire water stone green red blue small large old new fast slow happy "
    "sad good bad ran sat ate saw flew swam grew fell rose made took gave found kept left came went said "
    "told asked knew thought felt looked seemed became began ship boat city town hill field forest garden"
).split()

TEXTS = [
    "the cat sat on the old stone",
    "a dog ran to the river and swam",
    "the bird flew over the green forest",
    "rain fell on the small town",
    "a new ship came to the city",
    "the sun rose over the blue sea",
    "the old tree grew in the garden",
    "snow fell and the wind was slow",
    "a happy fish swam in the river",
    "the red car went down the road",
    "the moon and the star were in the sky",
    "a large boat left the town",
] * 4


def write_tiny_checkpoint(path: str, hidden_size: int = 32, layers: int = 2, seed: int = 0, **overrides) -> str:
    """A random fp32 BertModel + a word-level BERT tokenizer over `WORDS`, saved under `path`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(path, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(WORDS))
    vocab_file = os.path.join(path, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)
    kw = dict(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=4,
              intermediate_size=2 * hidden_size, max_position_embeddings=64)
    kw.update(overrides)
    torch.manual_seed(seed)
    BertModel(BertConfig(**kw)).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def qat_student(path: str):
    import ternary_hf
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, quantization_config=ternary_hf.TernaryConfig(mode="qat"))


def training_args(output_dir: str, **overrides):
    from transformers import TrainingArguments

    kw = dict(output_dir=output_dir, max_steps=4, per_device_train_batch_size=8, learning_rate=5e-3,
              logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
              dataloader_pin_memory=False, use_cpu=True)
    kw.update(overrides)
    return TrainingArguments(**kw)
