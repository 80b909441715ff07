"""Shared by the ANN tests: a tiny random BERT (hidden 32, one layer) with the bundled MiniLM's tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_tiny_model(path: Path, minilm_path: str) -> str:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=30522, max_position_embeddings=128, initializer_range=0.2)
    BertModel(config).eval().save_pretrained(path)
    for name in TOKENIZER_FILES:
        if (Path(minilm_path) / name).is_file():
            shutil.copy(Path(minilm_path) / name, Path(path) / name)
    return str(path)
