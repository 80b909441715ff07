"""Distillation text data: load texts from a `datasets.Dataset`, a list, or text/jsonl/csv files;
tokenise them once; synthesise long documents; collate batches with dynamic padding.

Length bucketing is done by transformers' own `LengthGroupedSampler`
(`TrainingArguments(train_sampling_strategy="group_by_length")`) from the `length` column written
here: batches of similar lengths cost the tokens they hold instead of the longest text's padding.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

TEXT_COLUMN = "text"
ID_COLUMN = "example_id"
LENGTH_COLUMN = "length"
# Column names tried, in order, when none is given: single texts, then pairs / triplets, whose every
# side is distilled as a separate text (distillation needs no labels).
SINGLE_COLUMNS = ("text", "sentence", "content", "document", "passage")
MULTI_COLUMNS = (
    ("anchor", "positive", "negative"),
    ("anchor", "positive"),
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("query", "positive"),
    ("question", "answer"),
)
_FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}


def _load_files(paths: Sequence[str]) -> Any:
    import datasets

    check_text_files(paths)
    kinds = {_FILE_BUILDERS[os.path.splitext(path)[1].lower()] for path in paths}
    if len(kinds) > 1:
        raise ValueError(f"distillation data files mix formats ({', '.join(sorted(kinds))}); use one format.")
    kind = kinds.pop()
    kwargs: dict[str, Any] = {}
    if kind == "csv" and all(p.lower().endswith(".tsv") for p in paths):
        kwargs["delimiter"] = "\t"
    try:
        return datasets.load_dataset(kind, data_files=list(paths), split="train", **kwargs)
    except Exception as exc:  # datasets wraps parser errors in DatasetGenerationError, without the file
        cause = exc.__cause__ or exc
        raise ValueError(f"cannot read text data from {', '.join(paths)}: {type(cause).__name__}: {cause}") from exc


def check_text_files(paths: Sequence[str | os.PathLike]) -> None:
    """Before any work: every text data file exists, has a supported type and parses (file and line named)."""
    for path in map(os.fspath, paths):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"text data file {path} does not exist.")
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise ValueError(f"{path}: unsupported file type {ext!r}; use .txt (one text per line), .jsonl/.json or "
                             ".csv/.tsv.")
        _check_text_file(path, ext)


def _check_text_file(path: str, ext: str) -> None:
    """Name the file and the line of what `datasets` would only report as a `DatasetGenerationError`."""
    import json

    raw = open(path, "rb").read()
    if not raw.strip():
        raise ValueError(f"text data file {path} is empty (or only blank lines): it holds no text to use.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text ({exc.reason}); save the file as UTF-8.") from None
    if ext not in (".jsonl", ".json"):
        return
    if ext == ".json":
        try:
            json.loads(text)
            return  # one JSON document (a list of records)
        except ValueError:
            pass  # JSON lines in a .json file, checked below
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path} line {number}: not valid JSON ({exc}); each line must be one JSON object "
                             'such as {"text": "..."}.') from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number}: expected a JSON object such as {{\"text\": \"...\"}}, got "
                             f"{type(record).__name__}.")


def _resolve_columns(column_names: list[str], text_column: str | Sequence[str] | None) -> list[str]:
    if text_column is not None:
        wanted = [text_column] if isinstance(text_column, str) else list(text_column)
        wanted = [c.strip() for w in wanted for c in w.split(",") if c.strip()]
        missing = [c for c in wanted if c not in column_names]
        if missing:
            raise ValueError(
                f"text column(s) {missing} not in the dataset; its columns are {column_names}. "
                "Set text_column to one of them (or a comma-separated list for pairs)."
            )
        return wanted
    for name in SINGLE_COLUMNS:
        if name in column_names:
            return [name]
    for names in MULTI_COLUMNS:
        if all(n in column_names for n in names):
            return list(names)
    raise ValueError(
        f"no text column found in the dataset (columns: {column_names}); expected one of {list(SINGLE_COLUMNS)} "
        "or a pair such as sentence1/sentence2. Set text_column=<name> (or 'a,b' for pairs)."
    )


def load_texts(source: Any, text_column: str | Sequence[str] | None = None) -> Any:
    """A `datasets.Dataset` with one string column `text` from any supported source.

    Args:
        source: a `datasets.Dataset` / `DatasetDict` (its `train` split), a list of strings (the texts), or
            a path (str or `os.PathLike`) / list of `os.PathLike` paths to `.txt` (one text per line), `.jsonl`/`.json` or `.csv`/`.tsv` files.
        text_column: the column(s) holding text; a list (or "a,b") for pairs, each side becoming its own
            text. Default: the first of `text`, `sentence`, ... or a known pair (`sentence1`/`sentence2`, ...).

    Raises:
        ValueError: empty data, no text column, or a non-string / empty value (the row is named).
    """
    import datasets

    if isinstance(source, datasets.DatasetDict):
        if "train" not in source:
            raise ValueError(f"DatasetDict has no 'train' split (splits: {list(source)}); pass the split to use.")
        source = source["train"]
    files: list[str] = []
    if isinstance(source, (str, os.PathLike)):
        files = [os.fspath(source)]
    elif isinstance(source, (list, tuple)) and source and all(isinstance(s, os.PathLike) for s in source):
        files = [os.fspath(s) for s in source]
    if files:
        source = _load_files(files)
    elif isinstance(source, (list, tuple)):
        if not all(isinstance(s, str) for s in source):
            bad = next(i for i, s in enumerate(source) if not isinstance(s, str))
            raise ValueError(f"distillation texts must be strings; item {bad} is {type(source[bad]).__name__}.")
        source = datasets.Dataset.from_dict({TEXT_COLUMN: list(source)})
    if not isinstance(source, datasets.Dataset):
        raise TypeError(
            f"unsupported distillation data {type(source).__name__}: pass a datasets.Dataset, a list of strings, "
            "or .txt/.jsonl/.csv file path(s)."
        )
    if len(source) == 0:
        raise ValueError("the distillation dataset is empty: there is nothing to distil on.")
    try:
        columns = _resolve_columns(source.column_names, text_column)
    except ValueError as exc:
        raise ValueError(f"{', '.join(files)}: {exc}" if files else str(exc)) from None
    texts: list[str] = []
    for column in columns:
        for row, value in enumerate(source[column]):
            if not isinstance(value, str):
                raise ValueError(f"column {column!r} row {row}: expected a string, got {type(value).__name__}.")
            if value.strip():
                texts.append(value)
    if not texts:
        raise ValueError(f"the distillation dataset has no non-empty text in column(s) {columns}.")
    return datasets.Dataset.from_dict({TEXT_COLUMN: texts})


def synthesize_long_documents(
    texts: Sequence[str], tokenizer: Any, n_docs: int, target_tokens: int = 200, seed: int = 0
) -> list[str]:
    """`n_docs` documents of about `target_tokens` tokens, each joining randomly drawn `texts` into one
    passage, so a student trained on short texts also sees (and matches the teacher on) long inputs."""
    if n_docs <= 0:
        return []
    rng = random.Random(seed)
    pool = list(texts)
    counts = [len(ids) - 2 for ids in tokenizer(pool[: min(len(pool), 2000)], add_special_tokens=True)["input_ids"]]
    mean_tokens = max(1.0, sum(counts) / max(1, len(counts)))
    per_doc = max(2, round(target_tokens / mean_tokens))
    docs = []
    for _ in range(n_docs):
        parts = [rng.choice(pool).strip().rstrip(".") for _ in range(per_doc)]
        docs.append(". ".join(p[:1].upper() + p[1:] for p in parts) + ".")
    return docs


def wikipedia_paragraphs(min_words: int = 80, max_words: int = 250) -> list[str]:
    """Prose paragraphs of `min_words`-`max_words` words from the English Wikipedia excerpt bundled with
    gensim's test data (about 1,850 paragraphs, roughly 100-330 tokens): real long text, offline, for the
    long-input part of a distillation mix. Needs gensim (`pip install gensim`)."""
    import bz2
    import re

    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
        from gensim.test.utils import datapath
    except ImportError as exc:
        raise ImportError("wikipedia_paragraphs needs gensim's bundled test data: pip install gensim") from exc
    paragraphs = []
    with bz2.open(datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")) as f:
        for _title, text, _pageid in extract_pages(f):
            for block in re.split(r"\n\s*\n", filter_wiki(text)):
                paragraph = " ".join(block.split())
                # list items, tables, templates and headings are not prose
                if min_words <= len(paragraph.split()) <= max_words and not paragraph.startswith(("*", "|", "{", "=", "#")):
                    paragraphs.append(paragraph)
    return paragraphs


def tokenize_texts(dataset: Any, tokenizer: Any, max_length: int, num_proc: int | None = None) -> Any:
    """Tokenise the `text` column (no padding, truncation at `max_length`); add `length` (for length
    bucketing) and `example_id` (the row index, for the teacher-output cache)."""
    if TEXT_COLUMN not in dataset.column_names:
        raise ValueError(f"tokenize_texts expects a {TEXT_COLUMN!r} column; got {dataset.column_names}.")

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        enc = tokenizer(batch[TEXT_COLUMN], truncation=True, max_length=max_length)
        enc[LENGTH_COLUMN] = [len(ids) for ids in enc["input_ids"]]
        enc[ID_COLUMN] = list(indices)
        return dict(enc)

    return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       num_proc=num_proc, desc="Tokenizing distillation texts")


def prepare_text_dataset(data: Any, tokenizer: Any, split: str, text_column: str | Sequence[str] | None,
                         max_length: int, long_documents: int = 0, long_document_tokens: int = 200,
                         seed: int = 0) -> Any:
    """The tokenised training (or eval) dataset of a distillation run, with the example-id and length columns the
    collator and the length-grouped sampler read: texts from anything `load_texts` accepts, plus `long_documents`
    synthetic long documents; an already tokenised `datasets.Dataset` (with `input_ids`) is used as it is."""
    import datasets

    if isinstance(data, datasets.Dataset) and "input_ids" in data.column_names:
        if len(data) == 0:
            raise ValueError(f"the {split} dataset is empty: there is nothing to distil on.")
        if ID_COLUMN not in data.column_names:
            data = data.add_column(ID_COLUMN, list(range(len(data))))
        if LENGTH_COLUMN not in data.column_names:
            data = data.add_column(LENGTH_COLUMN, [len(x) for x in data["input_ids"]])
        return data
    texts = load_texts(data, text_column)
    if long_documents:
        docs = synthesize_long_documents(texts["text"], tokenizer, long_documents, long_document_tokens, seed=seed)
        texts = datasets.concatenate_datasets([texts, datasets.Dataset.from_dict({"text": docs})])
    return tokenize_texts(texts, tokenizer, max_length)


@dataclass
class DistillationCollator:
    """Pads a list of tokenised examples to the longest in the batch; keeps `example_id`."""

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [f[ID_COLUMN] for f in features] if ID_COLUMN in features[0] else None
        model_inputs = [{k: v for k, v in f.items() if k not in (ID_COLUMN, LENGTH_COLUMN)} for f in features]
        batch = dict(self.tokenizer.pad(model_inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                        return_tensors="pt"))
        if ids is not None:
            batch[ID_COLUMN] = torch.tensor(ids, dtype=torch.long)
        return batch
