"""WordNet loader: parsing, held-out split, retrieval task, distillation corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ternary_hf.data import RetrievalTask
from ternary_hf.data import wordnet as wn

WORDNET = Path(wn.DEFAULT_WORDNET_DIR)
needs_wordnet = pytest.mark.skipif(
    not (WORDNET / "data.noun").is_file(), reason="apt-get install wordnet-base"
)


@pytest.mark.parametrize(
    "raw, definition, examples",
    [
        ("an act that has disastrous consequences  ", "an act that has disastrous consequences", ()),
        (
            'cause to be alert; "Coffee and tea stimulate me"; "This herbal infusion doesn\'t stimulate"',
            "cause to be alert",
            ("Coffee and tea stimulate me", "This herbal infusion doesn't stimulate"),
        ),
        (  # quotes inside the definition stay there
            'significant progress (especially in the phrase "make strides"); "they made big strides"',
            'significant progress (especially in the phrase "make strides")',
            ("they made big strides",),
        ),
        (  # colon separator and a trailing attribution
            'put in place of another: "he sent Smith in for Jones" - Anon; "next one"',
            "put in place of another",
            ("he sent Smith in for Jones", "next one"),
        ),
        (  # typo in the file: missing opening quote of the second example
            'drop; "drop a hint"; drop names"',
            "drop",
            ("drop a hint", "drop names"),
        ),
    ],
)
def test_split_gloss(raw, definition, examples):
    assert wn.split_gloss(raw) == (definition, examples)


def _write_wordnet(tmp_path: Path) -> Path:
    lines = {
        "data.noun": [
            "  1 This software and database is being provided ...",
            "00217593 04 n 01 kill 1 002 @ 00217014 n 0000 + 00355365 v 0101 | the destruction of "
            'an enemy plane; "the pilot reported two kills during the mission"  ',
            "00217499 04 n 02 disaster 0 calamity 0 001 @ 00217014 n 0000 | an act that has "
            "disastrous consequences  ",
        ],
        "data.verb": [
            "00022686 29 v 02 stimulate 0 perk_up 1 000 01 + 02 00 | cause to be alert; "
            '"Coffee and tea stimulate me"  ',
        ],
        "data.adj": [
            "00021110 00 s 01 complaisant(a) 0 000 | showing willingness  ",
        ],
        "data.adv": [
            "00001740 02 r 01 barely 0 000 | only just  ",
        ],
    }
    for name, content in lines.items():
        (tmp_path / name).write_text("\n".join(content) + "\n")
    return tmp_path


def test_load_synsets_from_directory(tmp_path):
    synsets = {s.synset_id: s for s in wn.load_synsets(_write_wordnet(tmp_path))}
    assert set(synsets) == {"n00217593", "n00217499", "v00022686", "a00021110", "r00001740"}
    kill = synsets["n00217593"]
    assert kill.pos == "n" and kill.lemmas == ("kill",)
    assert kill.gloss == "the destruction of an enemy plane"
    assert kill.examples == ("the pilot reported two kills during the mission",)
    assert synsets["v00022686"].lemmas == ("stimulate", "perk up")
    assert synsets["a00021110"].pos == "s" and synsets["a00021110"].lemmas == ("complaisant",)


def test_missing_file_names_file_and_package(tmp_path):
    _write_wordnet(tmp_path)
    (tmp_path / "data.verb").unlink()
    with pytest.raises(FileNotFoundError, match=r"data\.verb.*apt-get install wordnet-base"):
        wn.load_synsets(tmp_path)


def test_corrupt_line_names_location(tmp_path):
    _write_wordnet(tmp_path)
    (tmp_path / "data.adv").write_text("garbage | nothing\n")
    with pytest.raises(ValueError, match=r"data\.adv:1"):
        wn.load_synsets(tmp_path)


def test_is_heldout_is_the_documented_rule():
    ids = [f"n{i:08d}" for i in range(0, 200_000, 7)]
    expected = [
        int.from_bytes(hashlib.sha256(b"ternary-hf/wordnet-heldout/v1:" + i.encode()).digest()[:8], "big")
        % 1000
        < 120
        for i in ids
    ]
    got = [wn.is_heldout(i) for i in ids]
    assert got == expected
    assert 0.10 < sum(got) / len(got) < 0.14


@needs_wordnet
def test_real_wordnet_counts_and_split():
    synsets = wn.load_synsets()
    assert len(synsets) == 117_659  # WordNet 3.0
    assert len({s.synset_id for s in synsets}) == len(synsets)
    dog = next(s for s in synsets if s.synset_id == "n02084071")
    assert "dog" in dog.lemmas and '"' not in dog.gloss and dog.examples
    held = [s for s in synsets if wn.is_heldout(s.synset_id)]
    assert 0.10 < len(held) / len(synsets) < 0.14


@needs_wordnet
def test_retrieval_task_shape_and_no_leak():
    task = wn.retrieval_task(n_queries=300, seed=1)
    assert isinstance(task, RetrievalTask)
    assert len(task.queries) == 300 and len(task.corpus) >= 5000
    assert all(wn.is_heldout(d) for d in task.corpus)
    for qid, text in task.queries.items():
        sid = qid.removeprefix("q:")
        assert sid in task.relevant_docs[qid]
        assert all(text not in task.corpus[d] for d in task.relevant_docs[qid])
    # deterministic for a seed, different across seeds
    assert wn.retrieval_task(n_queries=300, seed=1).queries == task.queries
    assert wn.retrieval_task(n_queries=300, seed=2).queries != task.queries


@needs_wordnet
def test_retrieval_task_min_corpus_and_bad_n():
    with pytest.raises(ValueError, match="min_corpus"):
        wn.retrieval_task(min_corpus=10**6)
    with pytest.raises(ValueError, match="n_queries"):
        wn.retrieval_task(n_queries=0)


@needs_wordnet
def test_distillation_texts_exclude_heldout():
    texts = wn.distillation_texts()
    assert 130_000 < len(texts) < 160_000
    assert len(set(texts)) == len(texts)
    held_texts = set()
    for s in wn.heldout_synsets():
        held_texts.add(s.gloss)
        held_texts.update(s.examples)
    assert not held_texts.intersection(texts)
    task = wn.retrieval_task(n_queries=1000)
    assert not set(task.queries.values()).intersection(texts)
    assert not set(task.corpus.values()).intersection(texts)
    only_glosses = wn.distillation_texts(include_examples=False)
    with_lemmas = wn.distillation_texts(include_lemma_glosses=True)
    assert len(only_glosses) < len(texts) < len(with_lemmas)
