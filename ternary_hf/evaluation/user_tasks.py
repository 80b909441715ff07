"""Load your own evaluation tasks from csv / tsv / jsonl / json files or a ``datasets`` dataset.

Column names are detected from common spellings (listed per loader) or given explicitly:

- pairs with scores -> :func:`load_pair_task` (``sentence1``, ``sentence2``, ``score``)
- texts with labels -> :func:`load_classification_task` (``text``, ``label``)
- queries, corpus, qrels -> :func:`load_retrieval_task` (BEIR layout: ``_id``/``text`` rows for
  queries and corpus; ``query-id``, ``corpus-id``, ``score`` rows for qrels; a qrels score > 0 is
  relevant and becomes the graded gain when scores are not all 1)

A source is a path, a ``datasets.Dataset`` (or ``DatasetDict`` with ``split``), a list of dicts,
or ``"hf:<name>"`` / ``"hf:<name>:<split>"`` for ``datasets.load_dataset`` (works offline for
datasets already in the local cache).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from ternary_hf.data import ClassificationTask, PairTask, RetrievalTask

TEXT1 = ("sentence1", "text1", "sentence_1", "s1", "anchor", "query")
TEXT2 = ("sentence2", "text2", "sentence_2", "s2", "positive", "document")
SCORE = ("score", "similarity", "label", "relevance", "gold")
TEXT = ("text", "sentence", "document", "content")
LABEL = ("label", "labels", "class", "category", "target")
DOC_ID = ("_id", "id", "corpus-id", "corpus_id", "doc_id", "docid", "pid")
QUERY_ID = ("_id", "id", "query-id", "query_id", "qid")
QREL_QUERY = ("query-id", "query_id", "qid")
QREL_DOC = ("corpus-id", "corpus_id", "doc_id", "docid", "pid")
QREL_SCORE = ("score", "relevance", "label", "rel")


def read_rows(source: Any, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a csv/tsv/jsonl/json file, a ``datasets`` object, a list of dicts or ``hf:name[:split]``."""
    if isinstance(source, (list, tuple)):
        return [dict(r) for r in source]
    if isinstance(source, str) and source.startswith("hf:"):
        import datasets

        name, _, hf_split = source[3:].partition(":")
        return [dict(r) for r in datasets.load_dataset(name, split=hf_split or split or "train")]
    if not isinstance(source, (str, Path)):
        import datasets

        if isinstance(source, datasets.DatasetDict):
            if split is None and len(source) == 1:
                split = next(iter(source))
            if split not in source:
                raise ValueError(f"DatasetDict has splits {list(source)}; pass split= (got {split!r})")
            source = source[split]
        if isinstance(source, datasets.Dataset):
            return [dict(r) for r in source]
        raise TypeError(
            f"cannot read rows from {type(source).__name__}; pass a path, a datasets.Dataset "
            "(or a DatasetDict with split=...), a list of dicts or 'hf:name[:split]'"
        )
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} not found")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    elif suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
    elif suffix == ".json":
        data = json.loads(text)
        rows = data if isinstance(data, list) else data.get("data") or data.get(split or "train")
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
    else:
        raise ValueError(f"{path}: unsupported task file type {suffix!r}; use .csv, .tsv, .jsonl or .json")
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def _column(rows: list[dict], given: str | None, candidates: Iterable[str], role: str, where: str) -> str:
    columns = list(rows[0].keys()) if rows else []
    if given is not None:
        if given not in columns:
            raise ValueError(f"{where}: no column {given!r} for {role}; columns are {columns}")
        return given
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"{where}: cannot find the {role} column (tried {', '.join(candidates)}); columns are {columns}. "
        f"Name it explicitly."
    )


def _where(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else type(source).__name__


def _name(source: Any, name: str | None) -> str:
    if name:
        return name
    return Path(source).stem if isinstance(source, (str, Path)) and not str(source).startswith("hf:") else "user_task"


def load_pair_task(
    source: Any,
    name: str | None = None,
    *,
    text1_column: str | None = None,
    text2_column: str | None = None,
    score_column: str | None = None,
    split: str | None = None,
) -> PairTask:
    """Pairs of texts with a similarity score (Pearson and Spearman are reported)."""
    rows, where = read_rows(source, split), _where(source)
    c1 = _column(rows, text1_column, TEXT1, "first text", where)
    c2 = _column(rows, text2_column, TEXT2, "second text", where)
    cs = _column(rows, score_column, SCORE, "score", where)
    try:
        scores = [float(r[cs]) for r in rows]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: column {cs!r} must hold numbers ({exc})") from exc
    return PairTask(_name(source, name), [str(r[c1]) for r in rows], [str(r[c2]) for r in rows], scores)


def load_classification_task(
    source: Any,
    name: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    split: str | None = None,
    folds: int = 5,
) -> ClassificationTask:
    """Texts with labels (cross-validated logistic-regression accuracy is reported)."""
    rows, where = read_rows(source, split), _where(source)
    ct = _column(rows, text_column, TEXT, "text", where)
    cl = _column(rows, label_column, LABEL, "label", where)
    return ClassificationTask(_name(source, name), [str(r[ct]) for r in rows], [r[cl] for r in rows], folds=folds)


def load_retrieval_task(queries: Any, corpus: Any, qrels: Any, name: str | None = None, split: str | None = None) -> RetrievalTask:
    """Queries, corpus and qrels (BEIR layout). Corpus ``title`` is prepended to ``text`` when present."""
    q_rows, c_rows, r_rows = read_rows(queries, split), read_rows(corpus, split), read_rows(qrels, split)
    qid_c = _column(q_rows, None, QUERY_ID, "query id", _where(queries))
    qtext_c = _column(q_rows, None, ("text", "query"), "query text", _where(queries))
    did_c = _column(c_rows, None, DOC_ID, "document id", _where(corpus))
    dtext_c = _column(c_rows, None, TEXT, "document text", _where(corpus))
    query_texts = {str(r[qid_c]): str(r[qtext_c]) for r in q_rows}
    docs = {}
    for r in c_rows:
        title = str(r.get("title") or "").strip()
        docs[str(r[did_c])] = f"{title} {r[dtext_c]}".strip() if title else str(r[dtext_c])
    rq = _column(r_rows, None, QREL_QUERY, "qrels query id", _where(qrels))
    rd = _column(r_rows, None, QREL_DOC, "qrels document id", _where(qrels))
    rs = next((c for c in QREL_SCORE if c in r_rows[0]), None)
    graded: dict[str, dict[str, float]] = {}
    for r in r_rows:
        gain = float(r[rs]) if rs is not None else 1.0
        if gain > 0:
            graded.setdefault(str(r[rq]), {})[str(r[rd])] = gain
    relevant = {q: set(g) for q, g in graded.items() if q in query_texts}
    query_texts = {q: t for q, t in query_texts.items() if q in relevant}
    if not query_texts:
        raise ValueError(f"{_where(qrels)}: no query has a relevant document in the qrels")
    is_graded = any(g != 1.0 for gains in graded.values() for g in gains.values())
    return RetrievalTask(
        _name(corpus, name),
        query_texts,
        docs,
        relevant,
        graded={q: graded[q] for q in query_texts} if is_graded else None,
    )
