"""WordNet (Debian ``wordnet-base``) as offline distillation text and a large retrieval task.

Source: the WordNet 3.0 database files ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv``
(``apt-get install wordnet-base`` puts them in ``/usr/share/wordnet``; 117,659 synsets). Each
synset has lemmas and a gloss; the gloss holds a definition followed by zero or more example
sentences in double quotes (``definition; "example one"; "example two"``). :func:`load_synsets`
splits the examples out of the definition, so ``Synset.gloss`` is the definition alone.

Held-out split (the rule the distillation corpus must respect)
---------------------------------------------------------------
A synset is *held out* when::

    int.from_bytes(sha256(b"ternary-hf/wordnet-heldout/v1:" + synset_id).digest()[:8], "big") % 1000 < 120

i.e. a fixed ~12% of synsets, independent of Python's hash seed, the machine, and the order of
files. ``synset_id`` is the file's part-of-speech letter (``n``, ``v``, ``a``, ``r``; adjective
satellites use ``a`` because they live in ``data.adj``) followed by the 8-digit byte offset, e.g.
``n02084071`` (dog). Held-out synsets (about 14,100) provide the evaluation retrieval task
(:func:`retrieval_task`); :func:`distillation_texts` returns text from the other ~88% only, and
additionally drops any text that also occurs verbatim in a held-out synset (a few glosses and
examples are shared between synsets), so no evaluation text is ever seen in distillation.

Retrieval task
--------------
Queries are example sentences of held-out synsets (one per sampled synset); the relevant document
is that synset's definition (examples removed, so a query never appears inside its answer); the
corpus is the definition of every held-out synset (~14,100 documents). Synsets whose definitions
are identical text are all counted relevant, so duplicates do not penalise a model.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ternary_hf.data import RetrievalTask

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
WORDNET_DIR_ENV = "TERNARY_HF_WORDNET_DIR"
_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
_HELDOUT_SALT = b"ternary-hf/wordnet-heldout/v1:"
_HELDOUT_PER_MILLE = 120

# Adjective lemmas may carry a syntactic marker: "(a)", "(p)" or "(ip)".
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
# Example sentences start at the first double quote that follows a separator (';', ':' or ',');
# quotes elsewhere (`as in the phrase "make strides"`) belong to the definition.
_EXAMPLES_START = re.compile(r'[;:,]\s*"')
# Split the example part at semicolons that touch a quote: tolerates the file's typos such as
# `"drop a hint"; drop names"` and `"bondage to fear:; "he sought...`.
_EXAMPLE_SEP = re.compile(r'"\s*;|;\s*"')


@dataclass(frozen=True)
class Synset:
    """One WordNet synset.

    Attributes:
        synset_id: file part-of-speech letter + 8-digit offset, e.g. ``"n02084071"``.
        pos: WordNet synset type: ``n``, ``v``, ``a``, ``s`` (adjective satellite) or ``r``.
        lemmas: the synset's words, underscores replaced by spaces (``"physical entity"``).
        gloss: the definition, without the example sentences.
        examples: the example sentences, without their quotes.
    """

    synset_id: str
    pos: str
    lemmas: tuple[str, ...]
    gloss: str
    examples: tuple[str, ...]


def split_gloss(raw: str) -> tuple[str, tuple[str, ...]]:
    """Split a raw WordNet gloss into ``(definition, examples)``.

    >>> split_gloss('the destruction of an enemy plane; "the pilot reported two kills"')
    ('the destruction of an enemy plane', ('the pilot reported two kills',))
    """
    raw = raw.strip()
    match = _EXAMPLES_START.search(raw)
    if match is None:
        if raw.startswith('"'):  # a gloss made only of examples
            definition, rest = "", raw
        else:
            return raw.rstrip(" ;"), ()
    else:
        definition, rest = raw[: match.start()], raw[match.end() - 1 :]
    examples = []
    for piece in _EXAMPLE_SEP.split(rest):
        piece = piece.strip().lstrip('"')
        if '"' in piece:  # drop an attribution after the closing quote (`"..." - Shakespeare`)
            piece = piece[: piece.rindex('"')]
        piece = piece.strip().rstrip(";").strip()
        if piece:
            examples.append(piece)
    return definition.strip().rstrip(" ;:,"), tuple(examples)


def _parse_line(line: str, file_pos: str) -> Synset:
    head, _, raw_gloss = line.partition(" | ")
    fields = head.split()
    offset, ss_type, w_cnt = fields[0], fields[2], int(fields[3], 16)
    words = fields[4 : 4 + 2 * w_cnt : 2]
    lemmas = tuple(_ADJ_MARKER.sub("", w).replace("_", " ") for w in words)
    gloss, examples = split_gloss(raw_gloss)
    return Synset(f"{file_pos}{offset}", ss_type, lemmas, gloss, examples)


def _resolve_dir(wordnet_dir: str | os.PathLike | None) -> Path:
    if wordnet_dir is None:
        wordnet_dir = os.environ.get(WORDNET_DIR_ENV, DEFAULT_WORDNET_DIR)
    return Path(wordnet_dir)


@lru_cache(maxsize=4)
def _load_cached(directory: str) -> tuple[Synset, ...]:
    synsets: list[Synset] = []
    for file_pos, name in _FILES.items():
        path = Path(directory) / name
        if not path.is_file():
            raise FileNotFoundError(
                f"WordNet data file {path} not found. Install Debian's WordNet database with "
                f"`apt-get install wordnet-base` (it provides {DEFAULT_WORDNET_DIR}/data.noun etc.), "
                f"or point {WORDNET_DIR_ENV} / wordnet_dir at a directory holding "
                f"{', '.join(_FILES.values())}."
            )
        with open(path, encoding="utf-8", errors="replace") as handle:
            for lineno, line in enumerate(handle, 1):
                if line.startswith("  "):  # license header lines start with two spaces
                    continue
                try:
                    synsets.append(_parse_line(line, file_pos))
                except (IndexError, ValueError) as exc:
                    raise ValueError(f"{path}:{lineno}: not a WordNet data line ({exc})") from exc
    if not synsets:
        raise ValueError(f"no synsets found in {directory}; are the WordNet data files empty?")
    return tuple(synsets)


def load_synsets(wordnet_dir: str | os.PathLike | None = None) -> list[Synset]:
    """Parse every synset of the WordNet data files (nouns, verbs, adjectives, adverbs).

    Args:
        wordnet_dir: directory with ``data.noun``/``data.verb``/``data.adj``/``data.adv``;
            defaults to ``$TERNARY_HF_WORDNET_DIR`` or ``/usr/share/wordnet``.

    Raises:
        FileNotFoundError: a data file is missing (the message names it and the apt package).
    """
    return list(_load_cached(str(_resolve_dir(wordnet_dir).resolve())))


def is_heldout(synset_id: str) -> bool:
    """Whether a synset is held out of distillation (reserved for evaluation).

    Deterministic: a SHA-256 of the id, ~12% of synsets. See the module docstring for the rule.
    """
    digest = hashlib.sha256(_HELDOUT_SALT + synset_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < _HELDOUT_PER_MILLE


def heldout_synsets(wordnet_dir: str | os.PathLike | None = None) -> list[Synset]:
    """The held-out synsets, in file order."""
    return [s for s in load_synsets(wordnet_dir) if is_heldout(s.synset_id)]


def retrieval_task(
    n_queries: int = 1000,
    min_corpus: int = 5000,
    seed: int = 0,
    wordnet_dir: str | os.PathLike | None = None,
) -> RetrievalTask:
    """Example-sentence -> definition retrieval over the held-out synsets.

    Args:
        n_queries: number of queries; each is one example sentence of a different held-out synset
            (sampled with ``seed``); capped at the number of held-out synsets with examples.
        min_corpus: fail if the corpus (all held-out definitions) is smaller than this.
        seed: sampling seed for the queries and for which example of a synset is used.
        wordnet_dir: see :func:`load_synsets`.

    Returns:
        A :class:`RetrievalTask` named ``"wordnet"``: query ids ``"q:<synset_id>"``, document ids
        are synset ids.
    """
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    held = [s for s in heldout_synsets(wordnet_dir) if s.gloss]
    corpus = {s.synset_id: s.gloss for s in held}
    if len(corpus) < min_corpus:
        raise ValueError(
            f"WordNet retrieval corpus has {len(corpus)} held-out definitions, fewer than "
            f"min_corpus={min_corpus}; is the WordNet database complete?"
        )
    ids_by_text: dict[str, set[str]] = {}
    for sid, text in corpus.items():
        ids_by_text.setdefault(text, set()).add(sid)

    rng = random.Random(seed)
    # A query must not occur inside its own answer, or retrieval degenerates to string matching.
    candidates = [s for s in held if any(e not in s.gloss for e in s.examples)]
    chosen = rng.sample(candidates, min(n_queries, len(candidates)))
    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for s in chosen:
        example = rng.choice([e for e in s.examples if e not in s.gloss])
        qid = f"q:{s.synset_id}"
        queries[qid] = example
        relevant[qid] = set(ids_by_text[s.gloss])
    return RetrievalTask("wordnet", queries, corpus, relevant)


def distillation_texts(
    include_glosses: bool = True,
    include_examples: bool = True,
    include_lemma_glosses: bool = False,
    wordnet_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Texts of the non-held-out synsets, for a distillation corpus.

    Args:
        include_glosses: the definitions (102,529 unique texts).
        include_examples: the example sentences (42,525); both together: 145,021 texts.
        include_lemma_glosses: also ``"<lemma>: <definition>"`` for the synset's first lemma
            (248,474 texts with the two above).
        wordnet_dir: see :func:`load_synsets`.

    Returns:
        Unique texts in file order. Any text that also appears in a held-out synset is excluded.
    """
    synsets = load_synsets(wordnet_dir)
    held_texts: set[str] = set()
    for s in synsets:
        if is_heldout(s.synset_id):
            held_texts.add(s.gloss)
            held_texts.update(s.examples)
    out: dict[str, None] = {}  # ordered set
    for s in synsets:
        if is_heldout(s.synset_id):
            continue
        texts: list[str] = []
        if include_glosses and s.gloss:
            texts.append(s.gloss)
        if include_examples:
            texts.extend(s.examples)
        if include_lemma_glosses and s.gloss and s.lemmas:
            texts.append(f"{s.lemmas[0]}: {s.gloss}")
        for text in texts:
            if text not in held_texts:
                out[text] = None
    return list(out)


__all__ = [
    "Synset",
    "load_synsets",
    "split_gloss",
    "is_heldout",
    "heldout_synsets",
    "retrieval_task",
    "distillation_texts",
    "DEFAULT_WORDNET_DIR",
]
