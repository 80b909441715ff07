"""Vocabulary pruning: keep the tokens a corpus uses, shrink the tokenizer and the embedding table together.

The idea of arXiv 2207.12852 ("optimal vocabulary"): a multilingual/general tokenizer carries many tokens a
given domain never produces, and in a small encoder their embedding rows are most of the checkpoint.
`prune_vocabulary` tokenizes a corpus with the model's own tokenizer, keeps every token it uses (plus the
special tokens and, by default, every single-character piece so that any text still tokenizes), and writes:

- the embedding table restricted to the kept rows (float or quantized: rows are stored independently, so
  slicing them is exact), `config.vocab_size` set to the kept count, and an id map `vocab_rows` (int32,
  one entry per *original* token id: its row, or -1 for a pruned token) stored next to the table;
- a WordPiece tokenizer in the ORIGINAL id space: every kept token keeps its id, every pruned token is
  replaced by a placeholder no text can produce (it contains a space). WordPiece is greedy
  longest-match-first, so on any word whose original pieces are all kept, the pruned tokenizer produces
  the same ids as the original: the pruned model computes exactly what the original did on such text;
  other words split into kept pieces (single characters are kept) instead of pruned ones;
- `config.json["ternary_hf_vocabulary"]`: original and kept sizes, the coverage measured, the SHA-256 of
  the pruned and of the original vocabulary; `kept_token_ids.json`: the original id of every kept token.

Ids are never silently misread: the table's forward pre-hook maps token ids through `vocab_rows`, so the
pruned tokenizer and the ORIGINAL tokenizer both work (same id space); an id of a pruned token (only the
original tokenizer produces those) or beyond the original vocabulary raises `VocabularyMismatchError`
naming the ids. Loading (ternary quantizer) refuses tokenizer files next to the weights that are neither
the pruned nor the original vocabulary; `check_tokenizer(model, tokenizer)` checks a tokenizer object.
What stays undetectable: a *different* tokenizer whose ids all fall on kept tokens (docs/integrity.md).
Checkpoints pruned by older versions (kept tokens renumbered, no `vocab_rows`) keep the old guard, which
only refuses ids beyond the pruned table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .checkpoint import seal_module_weights
from .fileio import atomic_write_text, staged_directory

logger = logging.getLogger(__name__)

CONFIG_KEY = "ternary_hf_vocabulary"
KEPT_IDS_FILE = "kept_token_ids.json"
ID_MAP_BUFFER = "vocab_rows"  # on the input embedding: original token id -> row of the pruned table (-1: pruned)
ID_SPACE = "original"  # `id_space` of a record whose tokenizer keeps the original ids (absent: renumbered, older)
DEFAULT_WARN_BELOW = 0.99


class VocabularyMismatchError(ValueError):
    """Token ids from a tokenizer other than the one a pruned model was saved with."""


@dataclass
class VocabularyReport:
    """What pruning kept, and how much of the text it covers.

    Coverages are fractions of token *occurrences* (original tokenizer) whose token is kept:
    `coverage` on the pruning corpus itself (< 1 only with `min_count`/`max_tokens`), `heldout_coverage`
    on a 10% split of the corpus texts with the vocabulary built from the other 90% (an estimate for
    unseen text of the same kind), `eval_coverage` on `eval_texts` when given.
    """

    original_vocab_size: int
    kept: int
    corpus_texts: int
    corpus_tokens: int
    coverage: float
    heldout_coverage: float | None = None
    eval_coverage: float | None = None
    kept_characters: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def fraction_kept(self) -> float:
        return self.kept / self.original_vocab_size

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction_kept": self.fraction_kept}

    def __str__(self) -> str:
        parts = [f"kept {self.kept:,} of {self.original_vocab_size:,} tokens ({100 * self.fraction_kept:.1f}%)",
                 f"coverage {100 * self.coverage:.2f}% of {self.corpus_tokens:,} corpus tokens"]
        if self.heldout_coverage is not None:
            parts.append(f"held-out corpus {100 * self.heldout_coverage:.2f}%")
        if self.eval_coverage is not None:
            parts.append(f"eval texts {100 * self.eval_coverage:.2f}%")
        return ", ".join(parts)


def vocabulary_sha256(tokens_in_id_order: Iterable[str]) -> str:
    """Hash identifying a vocabulary (tokens in id order)."""
    return hashlib.sha256("\n".join(tokens_in_id_order).encode("utf-8")).hexdigest()


def _tokens_in_id_order(vocab: dict[str, int]) -> list[str]:
    return [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def tokenizer_vocabulary(tokenizer: Any) -> list[str]:
    """The base vocabulary of a (fast) tokenizer, in id order."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.get_vocab(with_added_tokens=False) if backend is not None else tokenizer.get_vocab()
    return _tokens_in_id_order(vocab)


def _vocabulary_from_dir(path: Path) -> list[str] | None:
    """The vocabulary a tokenizer saved in `path` would load (tokenizer.json first, as transformers does)."""
    tj = path / "tokenizer.json"
    if tj.is_file():
        model = json.loads(tj.read_text(encoding="utf-8")).get("model", {})
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            return _tokens_in_id_order(vocab)
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            return [piece for piece, _ in vocab]
    vt = path / "vocab.txt"
    if vt.is_file():
        return vt.read_text(encoding="utf-8").splitlines()
    return None


def _token_ids(tokenizer: Any, texts: list[str], batch_size: int = 1024) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), batch_size):
        out += tokenizer(texts[i: i + batch_size], add_special_tokens=False, truncation=False)["input_ids"]
    return out


def _count(id_lists: Iterable[list[int]]) -> Counter:
    counts: Counter = Counter()
    for ids in id_lists:
        counts.update(ids)
    return counts


def _count_ids(tokenizer: Any, texts: list[str]) -> Counter:
    return _count(_token_ids(tokenizer, texts))


def _coverage(counts: Counter, kept: set[int]) -> float:
    total = sum(counts.values())
    return sum(c for i, c in counts.items() if i in kept) / total if total else 1.0


def _character_ids(vocab: dict[str, int]) -> set[int]:
    """Single-character pieces (`x` and the WordPiece continuation `##x`): with them any word in the
    tokenizer's alphabet still splits into kept pieces instead of becoming [UNK]."""
    return {i for tok, i in vocab.items() if len(tok) == 1 or (tok.startswith("##") and len(tok) == 3)}


def _select_ids(counts: Counter, min_count: int, max_tokens: int | None) -> set[int]:
    ranked = [i for i, c in counts.most_common() if c >= min_count]
    return set(ranked[:max_tokens] if max_tokens is not None else ranked)


def _wordpiece_json(tokenizer: Any) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"Vocabulary pruning needs a fast (tokenizers-backed) tokenizer; {type(tokenizer).__name__} is not one."
        )
    spec = json.loads(backend.to_str())
    if spec.get("model", {}).get("type") != "WordPiece":
        raise ValueError(
            f"Vocabulary pruning supports WordPiece tokenizers (BERT, MiniLM, MPNet-style); this tokenizer's model "
            f"is {spec.get('model', {}).get('type')!r}. Keep the full vocabulary for it."
        )
    return spec


def _placeholder(token_id: int) -> str:
    # Pre-tokenizers split text on whitespace, so a vocabulary entry holding a space never matches a piece of text.
    return f"[pruned {token_id}]"


def _pruned_tokenizer_json(spec: dict, kept: list[int]) -> dict:
    """The tokenizer with every token not in `kept` replaced by an unmatchable placeholder, ids unchanged."""
    keep = set(kept)
    spec = dict(spec)
    spec["model"] = {**spec["model"], "vocab": {
        (token if i in keep else _placeholder(i)): i for token, i in spec["model"]["vocab"].items()}}
    return spec


def _save_pruned_tokenizer(tokenizer: Any, spec: dict, out_dir: Path) -> Any:
    """Save `tokenizer` to `out_dir`, then replace its vocabulary files by the pruned ones, and reload."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(out_dir)
    atomic_write_text(out_dir / "tokenizer.json", json.dumps(spec, ensure_ascii=False))
    # A loader that builds the tokenizer from vocab.txt must see the same pruned vocabulary.
    atomic_write_text(out_dir / "vocab.txt", "\n".join(_tokens_in_id_order(spec["model"]["vocab"])) + "\n")
    return AutoTokenizer.from_pretrained(out_dir)


def _prune_table(model: nn.Module, kept: list[int]) -> None:
    from .embedding import QuantizedEmbedding

    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        raise ValueError(
            f"{type(model).__name__} has an output embedding layer (e.g. an MLM decoder) tied to the vocabulary; "
            "pruning would have to prune the head too. Prune the encoder alone (AutoModel / SentenceTransformer)."
        )
    table = model.get_input_embeddings()
    ids = torch.tensor(kept, dtype=torch.long)
    if isinstance(table, QuantizedEmbedding):
        new = table.select_rows(ids)
    elif isinstance(table, nn.Embedding):
        pad = table.padding_idx
        new_pad = kept.index(pad) if pad is not None and pad in kept else None
        new = nn.Embedding(len(kept), table.embedding_dim, new_pad, dtype=table.weight.dtype, device=table.weight.device)
        with torch.no_grad():
            new.weight.copy_(table.weight[ids.to(table.weight.device)])
        new.weight.requires_grad_(table.weight.requires_grad)
    else:
        raise ValueError(f"Cannot prune an input embedding of type {type(table).__name__}; expected nn.Embedding.")
    rows = torch.full((table.num_embeddings,), -1, dtype=torch.int32)
    rows[ids] = torch.arange(len(kept), dtype=torch.int32)
    new.register_buffer(ID_MAP_BUFFER, rows.to(new.weight.device))
    model.set_input_embeddings(new)
    model.config.vocab_size = len(kept)  # the table's rows; token ids (pad_token_id...) stay in the original space


def _load(model_or_path: Any):
    """`(sentence_transformer or None, transformers model, tokenizer)`."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # transformers layout only
        SentenceTransformer = ()  # noqa: N806  (isinstance(x, ()) is False)

    if isinstance(model_or_path, SentenceTransformer) and SentenceTransformer != ():
        st = model_or_path
    elif isinstance(model_or_path, (str, os.PathLike)) and (Path(model_or_path) / "modules.json").exists():
        if SentenceTransformer == ():
            raise ImportError(f"{model_or_path} is a sentence-transformers model: pip install 'ternary-hf[st]'.")
        st = SentenceTransformer(str(model_or_path), device="cpu")
    else:
        st = None
    if st is not None:
        return st, st[0].auto_model, st[0].tokenizer
    if isinstance(model_or_path, nn.Module):
        raise ValueError("prune_vocabulary(model) needs a SentenceTransformer or a saved directory (its tokenizer "
                         "has to be pruned with it).")
    from transformers import AutoModel, AutoTokenizer

    return None, AutoModel.from_pretrained(model_or_path), AutoTokenizer.from_pretrained(model_or_path)


def prune_vocabulary(
    model_or_path: Any,
    corpus: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    min_count: int = 1,
    max_tokens: int | None = None,
    keep_characters: bool = True,
    eval_texts: Iterable[str] | None = None,
    warn_below: float = DEFAULT_WARN_BELOW,
) -> VocabularyReport:
    """Prune a model's vocabulary to the tokens `corpus` uses and save model + tokenizer to `out_dir`.

    Args:
        model_or_path: a SentenceTransformer, or a saved directory (sentence-transformers or transformers
            layout; ternary checkpoints included, their tables float or quantized).
        corpus: texts of the domain the model will embed (the *training* side: never the evaluation texts).
        out_dir: where the pruned model is saved (same layout as the input).
        min_count: keep only tokens seen at least this often in the corpus.
        max_tokens: keep at most this many corpus tokens (the most frequent), besides specials and characters.
        keep_characters: also keep every single-character piece, so unseen words split into characters
            instead of collapsing to [UNK].
        eval_texts: optional texts to report coverage on (they do not influence what is kept).
        warn_below: warn (and record in the report) when a coverage is below this fraction.

    Returns:
        the `VocabularyReport` (also written into config.json under `ternary_hf_vocabulary`).
    """
    texts = [t for t in corpus if t and t.strip()]
    if not texts:
        raise ValueError("prune_vocabulary: the corpus is empty; pass the texts the model will embed.")
    st, model, tokenizer = _load(model_or_path)
    from .config import TernaryConfig

    if not isinstance(getattr(model.config, "quantization_config", None), TernaryConfig):
        raise ValueError(
            "prune_vocabulary needs a ternary model (loaded with a TernaryConfig or from a ternary checkpoint): the "
            "id map of the pruned table is applied by ternary-hf's loader, which a plain model does not go through. "
            "Ternarize it first (`ternary-hf quantize`), or pass the ternary checkpoint."
        )
    if CONFIG_KEY in model.config.to_dict():
        raise ValueError("This model's vocabulary is already pruned; prune the original model instead.")
    spec = _wordpiece_json(tokenizer)
    vocab = spec["model"]["vocab"]
    original = len(vocab)
    if model.get_input_embeddings().num_embeddings != original:
        raise ValueError(
            f"The tokenizer has {original} tokens but the embedding table has "
            f"{model.get_input_embeddings().num_embeddings} rows; they must match before pruning."
        )
    per_text = _token_ids(tokenizer, texts)
    counts = _count(per_text)
    specials = {int(i) for i in tokenizer.all_special_ids} | {t["id"] for t in spec.get("added_tokens", [])}
    chars = _character_ids(vocab) if keep_characters else set()
    extra = specials | chars
    kept_set = _select_ids(counts, min_count, max_tokens) | extra
    kept = sorted(kept_set)

    heldout = None
    if len(texts) >= 20:
        order = list(range(len(texts)))
        random.Random(0).shuffle(order)
        cut = len(texts) // 10
        test = _count(per_text[i] for i in order[:cut])
        train = _count(per_text[i] for i in order[cut:])
        heldout = _coverage(test, _select_ids(train, min_count, max_tokens) | extra)
    eval_cov = None
    if eval_texts is not None:
        eval_list = [t for t in eval_texts if t and t.strip()]
        eval_cov = _coverage(_count_ids(tokenizer, eval_list), kept_set) if eval_list else None
    report = VocabularyReport(original, len(kept), len(texts), sum(counts.values()), _coverage(counts, kept_set),
                              heldout, eval_cov, len(chars - set(counts)))
    for name, value in (("corpus", report.coverage), ("held-out corpus", heldout), ("eval texts", eval_cov)):
        if value is not None and value < warn_below:
            msg = (f"Pruned vocabulary covers only {100 * value:.2f}% of the {name} tokens (threshold "
                   f"{100 * warn_below:.0f}%): text outside the corpus will often split into characters or [UNK] "
                   "and lose quality. Use a larger, more representative corpus (or a lower min_count / no max_tokens).")
            report.warnings.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)

    _prune_table(model, kept)
    new_spec = _pruned_tokenizer_json(spec, kept)
    tokens = _tokens_in_id_order(new_spec["model"]["vocab"])
    model.config.update({CONFIG_KEY: {
        "original_vocab_size": original,
        "vocab_size": len(kept),
        "tokenizer_sha256": vocabulary_sha256(tokens),
        "original_tokenizer_sha256": vocabulary_sha256(_tokens_in_id_order(vocab)),
        "id_space": ID_SPACE,
        "kept_ids_file": KEPT_IDS_FILE,
        "coverage": report.coverage,
        "heldout_coverage": heldout,
    }})
    install_vocabulary_guard(model)  # the live model reads original-space ids from now on
    with staged_directory(out_dir) as out:  # a failure half-way leaves `out_dir` as it was
        pruned_tokenizer = _save_pruned_tokenizer(tokenizer, new_spec, out)
        if st is not None:
            st[0].processor = pruned_tokenizer
            st.save(str(out))  # re-saves the (pruned) tokenizer with the model and the other modules
        else:
            model.save_pretrained(out)
        atomic_write_text(out / KEPT_IDS_FILE, json.dumps(kept))
        seal_module_weights(out)
        check_tokenizer_files(out, model.config)
        check_tokenizer(model, pruned_tokenizer)
    logger.info("Pruned vocabulary: %s", report)
    return report


def vocabulary_record(config: Any) -> dict | None:
    """The `ternary_hf_vocabulary` entry of a model config (None when the vocabulary is not pruned)."""
    record = getattr(config, CONFIG_KEY, None)
    return record if isinstance(record, dict) else None


def _accepted_hashes(record: dict) -> set[str]:
    """Vocabularies whose ids a pruned model reads correctly: its own, and the original one when it kept the
    original id space (the table's id map refuses the pruned ids at lookup)."""
    accepted = {record.get("tokenizer_sha256")}
    if record.get("id_space") == ID_SPACE:
        accepted.add(record.get("original_tokenizer_sha256"))
    return accepted


def _mismatch(record: dict, got: str, what: str) -> VocabularyMismatchError:
    hint = (" It is the model's ORIGINAL (unpruned) tokenizer, whose ids index a different table."
            if got == record.get("original_tokenizer_sha256") else "")
    return VocabularyMismatchError(
        f"{what} does not match this model's pruned vocabulary ({record.get('vocab_size')} of "
        f"{record.get('original_vocab_size')} tokens kept by ternary_hf.vocab.prune_vocabulary).{hint} Using it would "
        "silently look up the wrong embedding rows. Use the tokenizer saved with the pruned model "
        "(AutoTokenizer.from_pretrained(<pruned dir>)); its kept_token_ids.json maps kept rows to original ids."
    )


def check_tokenizer(model: Any, tokenizer: Any) -> None:
    """Raise `VocabularyMismatchError` if `model`'s pruned vocabulary cannot read `tokenizer`'s ids: it must be the
    tokenizer saved with the model or (models pruned in the original id space) the original one."""
    config = getattr(model, "config", model)
    if hasattr(model, "__getitem__") and hasattr(model, "_first_module"):  # SentenceTransformer
        config = model[0].auto_model.config
    record = vocabulary_record(config)
    if record is None:
        return
    got = vocabulary_sha256(tokenizer_vocabulary(tokenizer))
    if got not in _accepted_hashes(record):
        raise _mismatch(record, got, f"Tokenizer {type(tokenizer).__name__}")


def check_tokenizer_files(path: str | os.PathLike, config: Any) -> None:
    """Raise `VocabularyMismatchError` if the tokenizer files in `path` are neither the pruned vocabulary nor
    (models pruned in the original id space) the original one."""
    record = vocabulary_record(config)
    if record is None:
        return
    tokens = _vocabulary_from_dir(Path(path))
    if tokens is None:
        return  # no tokenizer saved there: the table's id map still checks every id
    got = vocabulary_sha256(tokens)
    if got not in _accepted_hashes(record):
        raise _mismatch(record, got, f"The tokenizer saved in {path}")


def prepare_id_map(model: nn.Module) -> None:
    """Before weights are loaded: give a pruned model's input embedding its `vocab_rows` buffer (filled from the
    checkpoint), so the id map loads with the table. No-op for other models and older pruned checkpoints."""
    record = vocabulary_record(getattr(model, "config", None))
    if record is None or record.get("id_space") != ID_SPACE:
        return
    table = model.get_input_embeddings()
    device = next(iter(table.buffers()), None)
    device = device.device if device is not None else table.weight.device
    table.register_buffer(ID_MAP_BUFFER, torch.empty(record["original_vocab_size"], dtype=torch.int32, device=device))


def carry_id_map(old: nn.Module, new: nn.Module) -> None:
    """When a table module is replaced (embedding quantization, dequantization), the new one keeps the id map."""
    rows = getattr(old, ID_MAP_BUFFER, None)
    if isinstance(rows, torch.Tensor):
        new.register_buffer(ID_MAP_BUFFER, rows)
        new.register_forward_pre_hook(_map_ids)
        new._ternary_hf_vocab_guard = True


def _map_ids(module: nn.Module, args: tuple):
    """Forward pre-hook: token ids of the original id space -> rows of the pruned table; pruned ids refused."""
    ids = args[0] if args else None
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point():
        return None
    rows_of = getattr(module, ID_MAP_BUFFER)
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= rows_of.numel():
            bad = low if low < 0 else high
            raise VocabularyMismatchError(
                f"Token id {bad} is outside this model's vocabulary ({rows_of.numel()} token ids, "
                f"{module.num_embeddings} kept by pruning): the ids were produced by another tokenizer. Tokenize "
                "with the tokenizer saved with the pruned model (AutoTokenizer.from_pretrained(<pruned dir>)).")
    rows = rows_of[ids]
    if ids.numel() and bool((rows < 0).any()):
        pruned = sorted(set(ids[rows < 0].tolist()))
        raise VocabularyMismatchError(
            f"Token id(s) {pruned[:8]}{' ...' if len(pruned) > 8 else ''} were pruned from this model's vocabulary "
            f"({module.num_embeddings} of {rows_of.numel()} tokens kept): the text was tokenized with a tokenizer "
            "that still has them, probably the original one. Tokenize with the tokenizer saved with the pruned "
            "model (AutoTokenizer.from_pretrained(<pruned dir>)): it splits such words into kept pieces.")
    return (rows.long(), *args[1:])


def install_vocabulary_guard(model: nn.Module) -> None:
    """On a pruned model, map token ids through the table's id map and refuse pruned or out-of-range ids with
    an explanation (older pruned checkpoints: refuse ids beyond the pruned table); no-op for other models."""
    record = vocabulary_record(getattr(model, "config", None))
    get_emb = getattr(model, "get_input_embeddings", None)
    if record is None or not callable(get_emb):
        return
    table = get_emb()
    if table is None or getattr(table, "_ternary_hf_vocab_guard", False):
        return
    if isinstance(getattr(table, ID_MAP_BUFFER, None), torch.Tensor):
        table.register_forward_pre_hook(_map_ids)
        table._ternary_hf_vocab_guard = True
        return
    rows = table.num_embeddings

    def guard(module: nn.Module, args: tuple) -> None:
        ids = args[0] if args else None
        if isinstance(ids, torch.Tensor) and ids.numel() and not ids.is_floating_point():
            top = int(ids.max())
            if top >= rows or int(ids.min()) < 0:
                raise VocabularyMismatchError(
                    f"Token id {top} is outside this model's pruned vocabulary of {rows} tokens (of "
                    f"{record.get('original_vocab_size')}): the ids were produced by another tokenizer, probably "
                    "the original one. Tokenize with the tokenizer saved with the pruned model "
                    "(AutoTokenizer.from_pretrained(<pruned dir>)).")

    table.register_forward_pre_hook(guard)
    table._ternary_hf_vocab_guard = True


def load_kept_ids(path: str | os.PathLike) -> list[int]:
    """Original token id of every row of a pruned model saved in `path`."""
    file = Path(path) / KEPT_IDS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a model saved by prune_vocabulary.")
    return json.loads(file.read_text())
