"""FAISS index types, streaming build, atomic checksummed save/load, bad input, ANN eval, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ternary_hf.ann import (
    INDEX_TYPES,
    AnnIndex,
    IndexFileError,
    IndexParams,
    build_index,
    encode_chunks,
    encode_to_memmap,
    evaluate_ann,
    evaluate_embeddings,
    read_corpus,
    search_sharded,
)
from ternary_hf.data import RetrievalTask

from conftest import write_tiny_wordpiece_bert


def clustered(n_corpus: int, n_queries: int, dim: int, n_clusters: int, noise: float = 0.35, seed: int = 0):
    """Corpus and queries drawn around the same random cluster centres (like real embeddings,
    unlike uniform noise, they have neighbourhoods an ANN index can exploit)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    draw = lambda n: (centers[rng.integers(0, n_clusters, n)] + noise * rng.normal(size=(n, dim))).astype(np.float32)  # noqa: E731
    return draw(n_corpus), draw(n_queries)


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """Multi-threaded FAISS crawls on the shared 2-core CI machine; results do not depend on it."""
    from ternary_hf.ann.index import faiss_threads

    with faiss_threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    corpus, queries = clustered(4000, 200, 128, n_clusters=400)
    return corpus, queries, [f"doc{i}" for i in range(len(corpus))]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_wordpiece_bert(tmp_path_factory.mktemp("tiny_ann"), num_hidden_layers=1)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from ternary_hf.evaluation import load_model

    return load_model(tiny_model_dir)


MIN_RECALL = {"flat": 1.0, "hnsw": 0.95, "ivf-flat": 0.9, "ivf-pq": 0.7, "binary": 0.85}


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_index_recall_and_roundtrip(index_type, data, tmp_path):
    corpus, queries, ids = data
    index = AnnIndex.from_embeddings(corpus, ids, index_type, model_id="some/model")
    exact = AnnIndex.from_embeddings(corpus, ids, "flat")
    hits, scores = index.search_embeddings(queries, 10)
    truth, _ = exact.search_embeddings(queries, 10)
    recall = np.mean([len(set(h) & set(t)) / 10 for h, t in zip(hits, truth)])
    assert recall >= MIN_RECALL[index_type]
    assert all(len(h) == 10 for h in hits)
    assert all(s == sorted(s, reverse=True) for s in scores)  # best first
    size = index.save(tmp_path / "i.tann")
    assert size == (tmp_path / "i.tann").stat().st_size > 0
    loaded = AnnIndex.load(tmp_path / "i.tann")
    assert (loaded.index_type, loaded.dim, loaded.model_id, loaded.ntotal) == (index_type, 128, "some/model", 4000)
    hits2, scores2 = loaded.search_embeddings(queries, 10)
    assert hits2 == hits and np.allclose(scores2, scores, atol=1e-5)


def test_cosine_scores_and_exact_ids(data):
    corpus, _, ids = data
    index = AnnIndex.from_embeddings(corpus, ids, "flat")
    hits, scores = index.search_embeddings(corpus[:5] * 3.0, 1)  # scale does not matter for cosine
    assert [h[0] for h in hits] == ids[:5]
    assert np.allclose([s[0] for s in scores], 1.0, atol=1e-5)
    hits, _ = index.search_embeddings(corpus[7], 3)  # a single vector is one query
    assert hits[0][0] == "doc7"
    few = AnnIndex.from_embeddings(corpus[:3], ids[:3], "flat")
    assert len(few.search_embeddings(corpus[:1], 10)[0][0]) == 3  # k larger than the corpus


def test_sharded_search_equals_one_index(data):
    corpus, queries, ids = data
    whole = AnnIndex.from_embeddings(corpus, ids, "flat")
    shards = [AnnIndex.from_embeddings(corpus[i::3], ids[i::3], "flat") for i in range(3)]
    hits, scores = search_sharded(shards, queries, 10)
    want_hits, want_scores = whole.search_embeddings(queries, 10)
    assert hits == want_hits and np.allclose(scores, want_scores, atol=1e-6)
    with pytest.raises(ValueError, match="shards disagree"):
        search_sharded([shards[0], AnnIndex.from_embeddings(corpus[:10, :64], ids[:10], "flat")], queries, 5)
    with pytest.raises(ValueError, match="no shards"):
        search_sharded([], queries, 5)


def test_binary_without_rescoring_and_params(data):
    corpus, queries, ids = data
    plain = AnnIndex.from_embeddings(corpus, ids, "binary", params=IndexParams(rescore="none"))
    rescored = AnnIndex.from_embeddings(corpus, ids, "binary")
    exact, _ = AnnIndex.from_embeddings(corpus, ids, "flat").search_embeddings(queries, 10)
    rec = lambda hits: np.mean([len(set(h) & set(t)) / 10 for h, t in zip(hits, exact)])  # noqa: E731
    assert rec(rescored.search_embeddings(queries, 10)[0]) >= rec(plain.search_embeddings(queries, 10)[0])
    _, s = plain.search_embeddings(queries[:3], 5)
    assert all(-1.0 <= v <= 1.0 for row in s for v in row)
    assert plain.nbytes() < rescored.nbytes() < AnnIndex.from_embeddings(corpus, ids, "flat").nbytes()
    with pytest.raises(ValueError, match="rescore"):
        IndexParams(rescore="bogus")


def test_streaming_add_equals_one_shot(data):
    corpus, queries, ids = data
    for index_type in ("ivf-flat", "binary", "hnsw"):
        params = IndexParams(nlist=16, train_size=1000)
        streamed = AnnIndex.create(index_type, 128, params=params, expected_size=len(corpus))
        for start in range(0, len(corpus), 300):  # chunks smaller than the training buffer
            streamed.add(corpus[start : start + 300], ids[start : start + 300])
        streamed.finalize()
        assert streamed.ntotal == len(corpus) and streamed.ids == ids
        hits, _ = streamed.search_embeddings(queries, 5)
        assert all(len(h) == 5 for h in hits)


# ---------------------------------------------------------------- bad input
def test_bad_input_errors(data, tmp_path):
    corpus, queries, ids = data
    with pytest.raises(ValueError, match="unknown index type 'annoy'"):
        AnnIndex.create("annoy", 128)
    with pytest.raises(ValueError, match="unknown index type"):
        AnnIndex.from_embeddings(corpus, ids, "lsh")
    with pytest.raises(ValueError, match="empty"):
        AnnIndex.from_embeddings(np.zeros((0, 128), np.float32), [], "flat")
    empty = AnnIndex.create("hnsw", 128)
    with pytest.raises(ValueError, match="corpus is empty"):
        empty.finalize()
    with pytest.raises(ValueError, match="index is empty"):
        empty.search_embeddings(queries, 5)
    with pytest.raises(ValueError, match="cannot save an empty index"):
        empty.save(tmp_path / "e.tann")
    index = AnnIndex.from_embeddings(corpus, ids, "flat")
    with pytest.raises(ValueError, match="query embeddings is empty"):
        index.search_embeddings(np.zeros((0, 128), np.float32), 5)
    with pytest.raises(ValueError, match="no queries"):
        index.search([], 5, model=object())
    with pytest.raises(ValueError, match="dimension 64, but the index was built with dimension 128"):
        index.search_embeddings(np.ones((2, 64), np.float32), 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search_embeddings(queries, 0)
    with pytest.raises(ValueError, match="3 embeddings but 2 ids"):
        AnnIndex.create("flat", 128).add(corpus[:3], ids[:2])
    with pytest.raises(ValueError, match="dimension 64"):
        AnnIndex.create("flat", 128).add(np.ones((2, 64), np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="pq_m=7 must divide"):
        AnnIndex.create("ivf-pq", 128, params=IndexParams(pq_m=7))
    with pytest.raises(ValueError, match="needs the model"):
        index.search(["text"], 5)


def test_dimension_mismatch_with_model(tiny, data):
    corpus, _, ids = data  # 128-d index, 32-d model
    index = AnnIndex.from_embeddings(corpus, ids, "flat", model_id="other-model")
    with pytest.raises(ValueError, match=r"32-dimensional embeddings but the index holds 128-dimensional.*other-model"):
        index.search(["a query"], 5, model=tiny.model)


def test_corrupt_truncated_and_foreign_files(data, tmp_path):
    corpus, queries, ids = data
    path = tmp_path / "i.tann"
    AnnIndex.from_embeddings(corpus[:500], ids[:500], "hnsw").save(path)
    blob = path.read_bytes()
    with pytest.raises(IndexFileError, match="does not exist"):
        AnnIndex.load(tmp_path / "missing.tann")
    (tmp_path / "trunc.tann").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        AnnIndex.load(tmp_path / "trunc.tann")
    (tmp_path / "tiny.tann").write_bytes(blob[:10])
    with pytest.raises(IndexFileError, match="truncated"):
        AnnIndex.load(tmp_path / "tiny.tann")
    flipped = bytearray(blob)
    flipped[len(blob) // 3] ^= 0xFF
    (tmp_path / "flip.tann").write_bytes(bytes(flipped))
    with pytest.raises(IndexFileError, match="'faiss' is corrupt"):
        AnnIndex.load(tmp_path / "flip.tann")
    meta_hit = bytearray(blob)
    meta_hit[-60] ^= 0x01  # inside the metadata JSON
    (tmp_path / "meta.tann").write_bytes(bytes(meta_hit))
    with pytest.raises(IndexFileError, match="metadata checksum"):
        AnnIndex.load(tmp_path / "meta.tann")
    (tmp_path / "other.tann").write_bytes(b"\x00" * 200)
    with pytest.raises(IndexFileError, match="not a ternary-hf index file"):
        AnnIndex.load(tmp_path / "other.tann")
    assert isinstance(IndexFileError("x"), ValueError)


def test_save_is_atomic(data, tmp_path, monkeypatch):
    corpus, queries, ids = data
    path = tmp_path / "i.tann"
    old = AnnIndex.from_embeddings(corpus[:100], ids[:100], "flat")
    old.save(path)
    before = path.read_bytes()
    new = AnnIndex.from_embeddings(corpus, ids, "flat")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file survives intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.tann"]  # no temp file left behind
    assert AnnIndex.load(path).ntotal == 100

    fresh = tmp_path / "sub" / "new.tann"
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        new.save(fresh)
    monkeypatch.undo()
    assert not fresh.exists() and list(fresh.parent.iterdir()) == []  # nothing, never half a file


# ---------------------------------------------------------------- encoding, streaming, evaluation
def test_read_corpus_formats(tmp_path):
    (tmp_path / "c.txt").write_text("first doc\n\nsecond doc\n")
    assert list(read_corpus(tmp_path / "c.txt")) == [("0", "first doc"), ("2", "second doc")]
    (tmp_path / "c.jsonl").write_text('{"_id": "a", "title": "T", "text": "x"}\n{"id": 7, "text": "y"}\n')
    assert list(read_corpus(tmp_path / "c.jsonl")) == [("a", "T x"), ("7", "y")]
    (tmp_path / "c.tsv").write_text("id\ttext\nd1\thello\nd2\tworld\n")
    assert list(read_corpus(tmp_path / "c.tsv")) == [("d1", "hello"), ("d2", "world")]
    assert list(read_corpus({"k": "v"})) == [("k", "v")]
    assert list(read_corpus(["u", "v"])) == [("0", "u"), ("1", "v")]
    (tmp_path / "bad.jsonl").write_text('{"_id": 1}\n')
    with pytest.raises(ValueError, match="no 'text' field"):
        list(read_corpus(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError):
        list(read_corpus(tmp_path / "none.txt"))


def test_build_index_streams_chunks_and_memmap(tiny, tmp_path):
    texts = [f"document number {i} about topic {i % 7}" for i in range(300)]
    corpus = ((f"id{i}", t) for i, t in enumerate(texts))  # a generator: no len(), read lazily
    sizes = []
    original = tiny.model.encode

    def spy(batch, **kw):
        sizes.append(len(batch))
        return original(batch, **kw)

    tiny.model.encode = spy
    try:
        index = build_index(tiny.model, corpus, "ivf-flat", chunk_size=64, total=300, show_progress_bar=False,
                            embeddings_path=tmp_path / "emb.npy", params=IndexParams(nlist=4, train_size=100),
                            model_id="tiny")
    finally:
        tiny.model.encode = original
    assert sizes == [64, 64, 64, 64, 44]  # never more than one chunk in memory
    assert index.ntotal == 300 and index.ids[:2] == ["id0", "id1"] and index.model_id == "tiny"
    emb = np.load(tmp_path / "emb.npy", mmap_mode="r")
    assert emb.shape == (300, 32)
    direct = tiny.model.encode(texts[:3], normalize_embeddings=True)
    assert np.allclose(emb[:3], direct, atol=1e-5)
    hits, _ = index.search(texts[:3], 1, model=tiny.model)
    assert [h[0] for h in hits] == ["id0", "id1", "id2"]
    with pytest.raises(ValueError, match="corpus is empty"):
        build_index(tiny.model, [], "flat", show_progress_bar=False)
    with pytest.raises(ValueError, match="unknown index type"):
        build_index(tiny.model, texts, "kd-tree", show_progress_bar=False)
    chunks = list(encode_chunks(tiny.model, read_corpus(texts[:10]), chunk_size=4, show_progress_bar=False))
    assert [len(i) for i, _ in chunks] == [4, 4, 2]
    ids, mm = encode_to_memmap(tiny.model, texts[:10], tmp_path / "e2.npy", total=10, chunk_size=4,
                               show_progress_bar=False)
    assert ids == [str(i) for i in range(10)] and mm.shape == (10, 32)
    assert np.allclose(np.load(tmp_path / "e2.npy")[:3], direct, atol=1e-5)
    with pytest.raises(ValueError, match="not total=11"):
        encode_to_memmap(tiny.model, texts[:10], tmp_path / "e3.npy", total=11, show_progress_bar=False)
    with pytest.raises(ValueError, match="more than total=5"):
        encode_to_memmap(tiny.model, texts[:10], tmp_path / "e4.npy", total=5, show_progress_bar=False)


def test_evaluate_ann_matches_exact_evaluator(tiny):
    from ternary_hf.evaluation import EmbeddingCache, run_task

    docs = {f"d{i}": f"definition {i} of something {i % 5}" for i in range(120)}
    queries = {f"q{i}": f"something {i % 5} number {i}" for i in range(30)}
    qrels = {f"q{i}": {f"d{i}"} for i in range(30)}
    task = RetrievalTask("mini", queries, docs, qrels)
    rows = evaluate_ann([tiny], task, ["flat", "hnsw", "binary"], show_progress_bar=False)
    assert [r.index for r in rows] == ["flat", "hnsw", "binary"]
    flat = rows[0]
    assert flat.recall_at_k == 1.0 and flat.qps > 0 and flat.index_bytes > 120 * 32 * 4
    # nDCG@10 of exact FAISS search == sentence-transformers' evaluator on the same model
    reference = run_task(task, tiny.model, EmbeddingCache(tiny.model))
    assert flat.ndcg_at_10 == pytest.approx(reference.metrics["ndcg@10"], abs=1e-6)
    assert flat.mrr_at_10 == pytest.approx(reference.metrics["mrr@10"], abs=1e-6)
    with pytest.raises(ValueError, match="unknown index type"):
        evaluate_ann([tiny], task, ["flat", "nope"])
    with pytest.raises(ValueError, match="no queries"):
        evaluate_embeddings("m", ["a"], np.ones((1, 4), np.float32), [], np.zeros((0, 4), np.float32), None)
    with pytest.raises(ValueError, match="corpus is empty"):
        evaluate_embeddings("m", [], np.zeros((0, 4), np.float32), ["q"], np.ones((1, 4), np.float32), None)


def test_ann_cli_build_search_eval(tiny_model_dir, tmp_path, capsys):
    from ternary_hf import cli

    def main(argv):
        return cli.main(["ann", *argv])

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": f"d{i}", "text": f"text number {i}"}) for i in range(50)))
    out = tmp_path / "idx.tann"
    assert main(["build", tiny_model_dir, str(corpus), "--index", "binary", "--out", str(out)]) == 0
    assert "50 documents" in capsys.readouterr().out
    assert main(["search", str(out), "text number 3", "-k", "2", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["query"] == "text number 3" and len(line["ids"]) == 2
    assert main(["build", tiny_model_dir, str(corpus), "--index", "annoy", "--out", str(out)]) == 2
    assert "unknown index type" in capsys.readouterr().err
    (tmp_path / "broken.tann").write_bytes(out.read_bytes()[:-5])
    assert main(["search", str(tmp_path / "broken.tann"), "q"]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["search", str(out)]) == 2
    assert "no queries" in capsys.readouterr().err
    (tmp_path / "q.jsonl").write_text('{"_id": "q1", "text": "text number 4"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td4\t1\n")
    task_files = [str(tmp_path / "q.jsonl"), str(corpus), str(tmp_path / "qrels.tsv")]
    rc = main(["eval", tiny_model_dir, "--baseline", tiny_model_dir, "--index", "flat,hnsw", "--threads", "1",
               "--retrieval", *task_files, "--out", str(tmp_path / "res")])
    assert rc == 0
    rows = json.loads((tmp_path / "res" / "ann_results.json").read_text())
    assert [(r["index"]) for r in rows] == ["flat", "hnsw", "flat", "hnsw"]
    assert rows[2]["model"].endswith("(model)") and rows[0]["recall_at_k"] == 1.0
    capsys.readouterr()
    # 50 documents cannot train 256 PQ centroids: a clear error, not a FAISS assertion
    assert main(["eval", tiny_model_dir, "--index", "ivf-pq", "--retrieval", *task_files]) == 2
    assert "needs >= 256 corpus vectors" in capsys.readouterr().err
