"""Whole-model compression of a ternary sentence-transformers checkpoint, post-training:
embedding tables quantized (`embedding.py`), vocabulary pruned to a corpus (`vocab.py`), output dimension
reduced by PCA (`dimension.py`). Each step is optional; the result is one saved model directory that
`SentenceTransformer(out_dir)` loads (after `import ternary_hf`) and `footprint(out_dir)` itemizes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from .config import TernaryConfig


@dataclass
class CompressionReport:
    """What `compress` did: the tables it quantized, the vocabulary and PCA reports."""

    out_dir: str
    embedding_dtype: str = "float"
    quantized_tables: list[str] = field(default_factory=list)
    vocabulary: Any = None  # VocabularyReport
    pca: Any = None  # PcaReport

    def lines(self) -> list[str]:
        out = [f"embedding tables: {self.embedding_dtype}" + (f" ({', '.join(self.quantized_tables)})"
                                                               if self.quantized_tables else "")]
        if self.vocabulary is not None:
            out.append(f"vocabulary: {self.vocabulary}")
        if self.pca is not None:
            out.append(f"output dimension: {self.pca}")
        return out


def load_ternary_sentence_transformer(source: str | os.PathLike, config: TernaryConfig | None = None) -> Any:
    """A SentenceTransformer from a packed ternary checkpoint (as saved) or, with `config`, ternarized on load."""
    import ternary_hf  # noqa: F401  (registers the quantizer)
    from sentence_transformers import SentenceTransformer

    kwargs = {"model_kwargs": {"quantization_config": config}} if config is not None else {}
    model = SentenceTransformer(str(source), device="cpu", **kwargs)
    if not isinstance(getattr(model[0].auto_model.config, "quantization_config", None), TernaryConfig):
        raise ValueError(
            f"{source} is not a ternary checkpoint (config.json has no ternary quantization_config). Quantize it "
            "first (`ternary-hf quantize` or `ternary-hf distill`), or pass a TernaryConfig."
        )
    return model


def compress(
    source: str | os.PathLike | Any,
    out_dir: str | os.PathLike,
    *,
    embedding_dtype: str | None = None,
    embedding_group_size: int = 64,
    prune_corpus: Iterable[str] | None = None,
    min_count: int = 1,
    eval_texts: Iterable[str] | None = None,
    output_dim: int | None = None,
    pca_corpus: Iterable[str] | None = None,
    teacher: Any | None = None,
) -> CompressionReport:
    """Compress a ternary sentence-transformers model and save it to `out_dir`.

    The model is written to a temporary folder next to `out_dir` that replaces it only once complete, so
    `out_dir` may be the source folder (in place) and a failure leaves it untouched.

    Args:
        source: a saved ternary checkpoint (e.g. the output of `ternary-hf distill`) or a loaded SentenceTransformer.
        embedding_dtype: quantize the float embedding tables to `int8`, `int4` or `ternary` (None: leave them).
        embedding_group_size: values per scale for `int4`.
        prune_corpus: texts whose tokens are kept (see `vocab.prune_vocabulary`); None keeps the vocabulary.
        min_count: keep tokens seen at least this often.
        eval_texts: texts to report vocabulary coverage on (not used to choose tokens).
        output_dim: append a PCA projection to this many dimensions (None: keep the dimension).
        pca_corpus: texts for the PCA (default: `prune_corpus`).
        teacher: model whose embeddings define the PCA axes (default: the compressed model itself).
    """
    from .checkpoint import seal_module_weights
    from .dimension import check_output_dim, reduce_output_dimension
    from .fileio import staged_directory
    from .integration import quantize_embeddings
    from .vocab import prune_vocabulary

    if output_dim is not None:
        check_output_dim(output_dim)
    model = source if not isinstance(source, (str, os.PathLike)) else load_ternary_sentence_transformer(source)
    encoder = model[0].auto_model
    report = CompressionReport(str(out_dir), encoder.config.quantization_config.embedding_dtype)
    if embedding_dtype not in (None, "float"):
        report.quantized_tables = quantize_embeddings(encoder, embedding_dtype, embedding_group_size)
        report.embedding_dtype = embedding_dtype
    prune_texts = list(prune_corpus) if prune_corpus is not None else None
    if output_dim is not None:
        pca_texts = list(pca_corpus) if pca_corpus is not None else prune_texts
        if not pca_texts:
            raise ValueError("output_dim needs texts for the PCA: pass pca_corpus (or prune_corpus).")
        report.pca = reduce_output_dimension(model, pca_texts, output_dim, teacher=teacher)
    with staged_directory(out_dir) as stage:  # a failure half-way (full disk...) leaves `out_dir` as it was
        if prune_texts is not None:
            report.vocabulary = prune_vocabulary(model, prune_texts, stage, min_count=min_count, eval_texts=eval_texts)
        else:
            model.save(str(stage))
        seal_module_weights(stage)  # the PCA head's tensors get content hashes like the encoder's
    return report


def is_ternary_checkpoint(source: str | os.PathLike) -> bool:
    """True when `source` is a local directory whose config.json declares the ternary quantization method."""
    import json
    from pathlib import Path

    config = Path(source) / "config.json"
    if not config.is_file():
        return False
    try:
        q = json.loads(config.read_text(encoding="utf-8")).get("quantization_config") or {}
    except ValueError:
        return False
    return q.get("quant_method") == "ternary"
