"""Turn whatever the user has (a path, a Hub id, a SentenceTransformer, a transformers model) into a
SentenceTransformer, so that sentence-transformers' evaluators can run on it unchanged."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

ModelLike = Any  # str | os.PathLike | SentenceTransformer | transformers.PreTrainedModel


@dataclass
class LoadedModel:
    """A model ready for evaluation.

    Attributes:
        model: the SentenceTransformer wrapping the network.
        label: short name used in reports (directory name or Hub id; ``"+ternary"`` when quantized
            on load).
        source: the path or Hub id it came from, when known (used for size on disk).
    """

    model: Any
    label: str
    source: str | None = None


def _is_sentence_transformer(obj: Any) -> bool:
    from sentence_transformers import SentenceTransformer

    return isinstance(obj, SentenceTransformer)


def _configured_max_seq_length(source: str) -> int | None:
    """`max_seq_length` of a local sentence-transformers directory (`sentence_bert_config.json`), else None."""
    path = Path(source) / "sentence_bert_config.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        value = json.load(f).get("max_seq_length")
    return int(value) if value else None


def _wrap_transformers_model(model: nn.Module, tokenizer: Any = None, max_seq_length: int | None = None):
    """SentenceTransformer = the given transformers model + mean pooling (+ its tokenizer).

    sentence-transformers builds its ``Transformer`` module from a path; we build it from the
    model's own ``name_or_path`` and then swap in the given (possibly ternarized or distilled)
    network, so the weights used are exactly the caller's.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    name = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    if not name:
        raise ValueError(
            "cannot wrap a transformers model without a name_or_path: save it with save_pretrained() "
            "and pass the directory, or pass a SentenceTransformer"
        )
    if max_seq_length is None:
        max_seq_length = _configured_max_seq_length(str(name))
    module = Transformer(str(name), max_seq_length=max_seq_length)
    module.model = model
    if tokenizer is not None:
        # a shallow copy: the length limit below is set on the tokenizer, and the caller's must stay as it is
        module.processor = copy.copy(tokenizer)
    if max_seq_length is not None:
        # sentence-transformers keeps the limit on its tokenizer (model_max_length), which otherwise brings its
        # own (512 for BERT) instead of the model's configured one (256 for all-MiniLM-L6-v2)
        module.max_seq_length = max_seq_length
    pooling = Pooling(module.get_embedding_dimension(), pooling_mode="mean")
    device = next(model.parameters()).device
    return SentenceTransformer(modules=[module, pooling], device=str(device))


def load_model(
    model: ModelLike,
    *,
    quantize: bool = False,
    tokenizer: Any = None,
    device: str = "cpu",
    max_seq_length: int | None = None,
    label: str | None = None,
) -> LoadedModel:
    """Load or wrap a model for evaluation.

    Args:
        model: a local directory (sentence-transformers or plain transformers layout), a Hub id, a
            ``SentenceTransformer``, or a transformers ``PreTrainedModel`` (mean pooling is added).
        quantize: ternarize on load with ``ternary_hf.TernaryConfig()`` (post-training
            quantization); only for paths / Hub ids.
        tokenizer: tokenizer for a transformers model whose ``name_or_path`` has none.
        device: torch device for models loaded from a path.
        max_seq_length: override the model's maximum sequence length.
        label: name in reports (default: derived from the source).
    """
    if _is_sentence_transformer(model):
        if quantize:
            raise ValueError("quantize=True needs a path or Hub id, not an already loaded model")
        if max_seq_length is not None:
            model.max_seq_length = max_seq_length
        return LoadedModel(model, label or _label_of(model), _source_of(model))
    if isinstance(model, nn.Module):
        if quantize:
            raise ValueError("quantize=True needs a path or Hub id, not an already loaded model")
        st = _wrap_transformers_model(model, tokenizer, max_seq_length)
        return LoadedModel(st, label or _label_of(st), _source_of(st))
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"cannot evaluate a {type(model).__name__}: pass a path, a Hub id, a SentenceTransformer "
            "or a transformers PreTrainedModel"
        )
    from sentence_transformers import SentenceTransformer

    source = str(model)
    kwargs: dict[str, Any] = {}
    if quantize:
        import ternary_hf

        kwargs["model_kwargs"] = {"quantization_config": ternary_hf.TernaryConfig()}

    if not Path(source).exists() and (source.startswith(("/", ".", "~")) or source.count("/") > 1):
        raise FileNotFoundError(f"model path {source} does not exist (and it is not a Hub id)")
    st = SentenceTransformer(source, device=device, **kwargs)
    if max_seq_length is not None:
        st.max_seq_length = max_seq_length
    default_label = Path(source).name if Path(source).exists() else source
    if Path(source).name == "model" and Path(source).exists():  # e.g. the bundled package layout
        default_label = Path(source).parent.name
    return LoadedModel(st, label or default_label + ("+ternary-ptq" if quantize else ""), source)


def _source_of(st: Any) -> str | None:
    try:
        path = st[0].auto_model.name_or_path
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return str(path) if path else None


def _label_of(st: Any) -> str:
    source = _source_of(st)
    if not source:
        return type(st).__name__
    path = Path(source)
    return path.parent.name if path.name == "model" else path.name


def transformer_of(st: Any) -> nn.Module:
    """The transformers network inside a SentenceTransformer."""
    return st[0].auto_model


def model_size_bytes(loaded: LoadedModel) -> dict[str, float]:
    """Weight bytes of a model as it would be stored: ``ternary_hf.footprint`` of the network.

    Returns ``{"bytes": total, "fp32_bytes": ..., "ratio": ...}``; for ternary models the packed
    2-bit weights + scales are counted, not the fp32 copy a training-mode layer may hold.
    """
    from ternary_hf import footprint

    fp = footprint(transformer_of(loaded.model))
    return {"bytes": float(fp.total), "fp32_bytes": float(fp.fp32_bytes), "ratio": float(fp.ratio)}
