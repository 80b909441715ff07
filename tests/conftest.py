import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=66,
              vocab_size=120, max_position_embeddings=64)
    kw.update(overrides)
    return BertConfig(**kw)


TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_tiny_wordpiece_bert(path, **overrides) -> str:
    """A random BertModel (2 layers, 32 wide) with all-MiniLM-L6-v2's real WordPiece tokenizer (30,522 tokens),
    saved to `path` in plain transformers layout; `overrides` are BertConfig fields."""
    import shutil
    from pathlib import Path

    from transformers import BertModel

    from ternary_hf.defaults import default_model_path

    config = tiny_bert_config(**{**dict(intermediate_size=64, vocab_size=30522, max_position_embeddings=128,
                                        initializer_range=0.2), **overrides})
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(path)
    source = Path(default_model_path())
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, Path(path) / name)
    return str(path)


def padded_ternary_bert(path):
    """A random 3-layer BERT (hidden 64, 4 heads of 16, with a pooler) saved to `path` and loaded ternary, and
    a padded batch of 4 x 23 tokens (the fused-layer and whole-model tests)."""
    import torch
    from transformers import AutoModel, BertModel

    from ternary_hf import TernaryConfig

    torch.manual_seed(0)
    BertModel(tiny_bert_config(hidden_size=64, num_attention_heads=4, num_hidden_layers=3,
                               intermediate_size=96)).eval().save_pretrained(path)
    model = AutoModel.from_pretrained(path, quantization_config=TernaryConfig()).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (4, 23), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[3, 4:] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A random full-precision BertModel saved to disk (intermediate_size=66: not divisible by 4)."""
    from transformers import BertModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_bert")
    BertModel(tiny_bert_config()).eval().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def minilm_path():
    from ternary_hf.defaults import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def sentences():
    from ternary_hf.defaults import sample_sentences

    return sample_sentences(64)
