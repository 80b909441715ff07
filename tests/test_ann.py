"""FAISS index types, streaming build, atomic checksummed save/load, bad input, ANN eval, CLI."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

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


def main(argv):
    """`ternary-hf ann ARGV`, in process."""
    from ternary_hf import cli

    return cli.main(["ann", *argv])


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


# ---------------------------------------------------------------- model fingerprint (issue 19)
def _copy_model(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_fingerprint_covers_weights_config_tokenizer_not_docs(tiny_model_dir, tmp_path):
    from ternary_hf.ann import model_fingerprint

    model = _copy_model(tiny_model_dir, tmp_path / "m")
    base = model_fingerprint(model)
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= set(base.files)
    assert model_fingerprint(model).digest == base.digest  # stable
    (tmp_path / "m" / "README.md").write_text("a new model card")
    (tmp_path / "m" / "ternary_report.json").write_text("{}")
    (tmp_path / "m" / "checkpoint-3").mkdir()
    (tmp_path / "m" / "checkpoint-3" / "model.safetensors").write_bytes(b"x")
    assert model_fingerprint(model).digest == base.digest  # documents, reports, checkpoints do not count
    assert model_fingerprint(model, variant="ternary-ptq").digest != base.digest  # loaded differently
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        path = tmp_path / "m" / name
        original = path.read_bytes()
        path.write_bytes(original + b" ")
        changed = model_fingerprint(model)
        assert changed.digest != base.digest and f"changed: {name}" in base.differences(changed)
        path.write_bytes(original)
    assert model_fingerprint(model).digest == base.digest
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no model weights"):
        model_fingerprint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        model_fingerprint(tmp_path / "nowhere")


def test_index_refuses_queries_from_changed_model(tiny_model_dir, tmp_path):
    from ternary_hf.ann import ModelMismatchError
    from ternary_hf.evaluation import load_model

    model_dir = _copy_model(tiny_model_dir, tmp_path / "m")
    model = load_model(model_dir).model
    texts = [f"document number {i}" for i in range(40)]
    index = build_index(model, texts, "flat", model_id=model_dir, show_progress_bar=False)
    assert index.model_fingerprint is not None  # taken from the folder the model was loaded from
    index.save(tmp_path / "i.tann")
    loaded = AnnIndex.load(tmp_path / "i.tann")
    assert loaded.model_fingerprint == index.model_fingerprint
    assert loaded.search(texts[:2], 1, model=model)[0] == [["0"], ["1"]]
    loaded.check_model(model_dir)  # same files: fine
    # the same path, other files behind it (a re-run of distill, say): refused with the file that changed
    other = load_model(tiny_model_dir).model
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)
    other.save(model_dir)
    with pytest.raises(ModelMismatchError, match=r"i\.tann was built by model .* \(changed: .*model\.safetensors"):
        loaded.check_model(model_dir, what=str(tmp_path / "i.tann"))
    reloaded = load_model(model_dir).model
    with pytest.raises(ModelMismatchError, match="allow-model-mismatch"):
        loaded.search(texts[:2], 1, model=reloaded)
    with pytest.warns(UserWarning, match="allowed by allow_model_mismatch"):
        loaded.search(texts[:2], 1, model=reloaded, allow_model_mismatch=True)


def test_cli_search_refuses_changed_model(tiny_model_dir, tmp_path, capsys):

    model_dir = _copy_model(tiny_model_dir, tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"text number {i}" for i in range(30)))
    out = tmp_path / "i.tann"
    assert main(["build", model_dir, str(corpus), "--index", "flat", "--out", str(out)]) == 0
    # --out exists: refused before the model is even loaded; --overwrite replaces it
    assert main(["build", "/no/such/model", str(corpus), "--index", "flat", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["build", model_dir, str(corpus), "--index", "flat", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["build", model_dir, str(corpus), "--index", "flat", "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert main(["search", str(out), "text number 3", "--json"]) == 2
    assert "changed: config.json" in capsys.readouterr().err
    assert main(["search", str(out), "text number 3", "--json", "--allow-model-mismatch"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"][0] == "3"


# ---------------------------------------------------------------- shards, on-disk IVF, IndexShards, LanceDB (issue 20)
@pytest.fixture(scope="module")
def shard_dirs(data, tmp_path_factory):
    """The 4000 clustered vectors as two shard folders from one (pretend) model, 5 parquet shards in all."""
    from ternary_hf.ann import ModelFingerprint, write_shards

    corpus, _, ids = data
    root = tmp_path_factory.mktemp("shards")
    fp = ModelFingerprint("ab" * 32, {"model.safetensors": "cd" * 32})
    meta = {"model_id": "pretend/model", "model_fingerprint": fp.to_dict(), "normalized": False}
    chunks = lambda lo, hi: ((ids[i : min(i + 700, hi)], corpus[i : min(i + 700, hi)]) for i in range(lo, hi, 700))  # noqa: E731
    a = write_shards(chunks(0, 2500), root / "a", rows_per_shard=1000, metadata=meta)
    b = write_shards(chunks(2500, 4000), root / "b", rows_per_shard=1000, metadata=meta)
    return a, b


def test_shards_roundtrip_and_damage(shard_dirs, data, tmp_path):
    from ternary_hf.ann import EmbeddingShards, ShardError

    corpus, _, ids = data
    a, b = shard_dirs
    assert [s["rows"] for s in a.manifest["shards"]] == [1000, 1000, 500]
    got = list(a.iter_shards()) + list(b.iter_shards())
    assert sum((i for i, _ in got), []) == ids
    assert np.array_equal(np.concatenate([e for _, e in got]), corpus)  # float32 bit for bit
    import pyarrow.parquet as pq

    assert pq.read_schema(a.files[0]).field("embedding").type.list_size == 128  # plain parquet for other tools
    assert a.sample(300, seed=1).shape == (300, 128)
    broken = tmp_path / "broken"
    shutil.copytree(a.folder, broken)
    (broken / "shard-00001.parquet").unlink()
    with pytest.raises(ShardError, match="lists shard-00001.parquet, which is missing"):
        EmbeddingShards.open(broken)
    shutil.copy(a.files[1], broken / "shard-00001.parquet")
    blob = bytearray((broken / "shard-00002.parquet").read_bytes())
    blob[100] ^= 0xFF
    (broken / "shard-00002.parquet").write_bytes(bytes(blob))
    with pytest.raises(ShardError, match="SHA-256 differs"):
        EmbeddingShards.open(broken)
    (broken / "shard-00002.parquet").write_bytes(bytes(blob[:-10]))
    with pytest.raises(ShardError, match="truncated"):
        EmbeddingShards.open(broken, verify=False)
    with pytest.raises(ShardError, match="no manifest.json"):
        EmbeddingShards.open(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        from ternary_hf.ann import write_shards

        write_shards([(ids[:2], corpus[:2])], a.folder)


@pytest.mark.parametrize("index_type", ["ivf-flat", "ivf-pq"])
def test_ondisk_index_from_shards_matches_exact(shard_dirs, data, tmp_path, index_type):
    from ternary_hf.ann import build_ondisk_index, load_index

    corpus, queries, ids = data
    out = tmp_path / "idx"
    built = build_ondisk_index(list(shard_dirs), out, index_type, params=IndexParams(nlist=32, nprobe=8, train_size=2000))
    assert sorted(p.name for p in out.iterdir()) == ["ids.bin", "ids.offsets.npy", "index.faiss", "index.json", "lists.ivfdata"]
    moved = tmp_path / "moved"
    out.rename(moved)  # the lists file is found next to index.faiss, wherever the folder goes
    index = load_index(moved)
    assert (index.ntotal, index.dim, index.model_id) == (4000, 128, "pretend/model")
    assert index.model_fingerprint.digest == shard_dirs[0].fingerprint.digest
    assert index.ids[0] == "doc0" and index.ids[-1] == "doc3999" and len(index.ids) == 4000
    exact, exact_scores = AnnIndex.from_embeddings(corpus, ids, "flat").search_embeddings(queries, 10)
    if index_type == "ivf-flat":
        index.set_search_params(nprobe=32)  # every list: exact search, through the on-disk lists
        hits, scores = index.search_embeddings(queries, 10)
        assert hits == exact and np.allclose(scores, exact_scores, atol=1e-5)
    hits, _ = load_index(moved).search_embeddings(queries, 10)  # nprobe=8 as built
    recall = np.mean([len(set(h) & set(t)) / 10 for h, t in zip(hits, exact)])
    assert recall >= MIN_RECALL[index_type]
    assert built.params.nlist == 32
    with pytest.raises(FileExistsError, match="already exists"):
        build_ondisk_index(list(shard_dirs), moved, index_type)
    blob = bytearray((moved / "lists.ivfdata").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (moved / "lists.ivfdata").write_bytes(bytes(blob))
    with pytest.raises(IndexFileError, match="lists.ivfdata: SHA-256 differs"):
        load_index(moved)
    (moved / "ids.bin").unlink()
    with pytest.raises(IndexFileError, match="ids.bin is missing"):
        load_index(moved)
    with pytest.raises(ValueError, match="one of ivf-pq, ivf-flat"):
        build_ondisk_index(list(shard_dirs), tmp_path / "x", "hnsw")


def test_shards_of_different_models_are_refused(shard_dirs, data, tmp_path):
    from ternary_hf.ann import ModelFingerprint, ShardError, build_ondisk_index, export_to_lancedb, write_shards

    corpus, queries, ids = data
    a, _ = shard_dirs
    other_fp = ModelFingerprint("ef" * 32, {"model.safetensors": "01" * 32})
    other = write_shards([(ids[:300], corpus[:300])], tmp_path / "other",
                         metadata={"model_fingerprint": other_fp.to_dict()})
    narrow = write_shards([(ids[:300], corpus[:300, :64])], tmp_path / "narrow",
                          metadata={"model_fingerprint": a.fingerprint.to_dict()})
    with pytest.raises(ShardError, match=r"encoded by model efefefefefef .*changed: model\.safetensors"):
        build_ondisk_index([a, other], tmp_path / "idx")
    with pytest.raises(ShardError, match="64-dimensional embeddings but .* 128-dimensional"):
        build_ondisk_index([a, narrow], tmp_path / "idx")
    with pytest.raises(ShardError, match="encoded by model"):
        export_to_lancedb([a, other], tmp_path / "db")
    assert not (tmp_path / "idx").exists()
    # search_sharded (faiss.IndexShards) checks the same
    x = AnnIndex.from_embeddings(corpus[:100], ids[:100], "flat", model_fingerprint=a.fingerprint)
    y = AnnIndex.from_embeddings(corpus[100:200], ids[100:200], "flat", model_fingerprint=other_fp)
    with pytest.raises(ValueError, match="shard 1 was built by model efefefefefef"):
        search_sharded([x, y], queries, 5)
    with pytest.raises(ValueError, match="binary"):
        search_sharded([x, AnnIndex.from_embeddings(corpus[:100], ids[:100], "binary")], queries, 5)


def test_search_sharded_mixed_types_and_l2(data):
    corpus, queries, ids = data
    shards = [AnnIndex.from_embeddings(corpus[:2000], ids[:2000], "hnsw"),
              AnnIndex.from_embeddings(corpus[2000:], ids[2000:], "ivf-flat", params=IndexParams(nlist=8, nprobe=8))]
    hits, _ = search_sharded(shards, queries, 10)
    exact, _ = AnnIndex.from_embeddings(corpus, ids, "flat").search_embeddings(queries, 10)
    assert np.mean([len(set(h) & set(t)) / 10 for h, t in zip(hits, exact)]) >= 0.95
    l2 = [AnnIndex.from_embeddings(corpus[i::2], ids[i::2], "flat", metric="l2") for i in range(2)]
    hits, scores = search_sharded(l2, queries, 5)
    want, want_scores = AnnIndex.from_embeddings(corpus, ids, "flat", metric="l2").search_embeddings(queries, 5)
    assert hits == want and np.allclose(scores, want_scores, rtol=1e-5)


def test_lancedb_export_search_matches_exact(shard_dirs, data, tmp_path):
    pytest.importorskip("lancedb")
    import lancedb

    from ternary_hf.ann import export_to_lancedb, lancedb_fingerprint

    corpus, queries, ids = data
    table = export_to_lancedb(list(shard_dirs), tmp_path / "db", "corpus")
    assert table.count_rows() == 4000
    reopened = lancedb.connect(str(tmp_path / "db")).open_table("corpus")
    assert lancedb_fingerprint(reopened).digest == shard_dirs[0].fingerprint.digest
    exact, _ = AnnIndex.from_embeddings(corpus, ids, "flat").search_embeddings(queries[:20], 10)
    for q, want in zip(queries[:20], exact):  # no ANN index in LanceDB: exhaustive, so exact
        got = reopened.search(q).distance_type("cosine").limit(10).to_arrow().column("id").to_pylist()
        assert got == want
    with pytest.raises(FileExistsError, match="already exists"):
        export_to_lancedb(list(shard_dirs), tmp_path / "db", "corpus")
    assert export_to_lancedb(shard_dirs[0], tmp_path / "db", "corpus", overwrite=True).count_rows() == 2500


def test_ray_and_store_missing_name_their_extras(monkeypatch, tmp_path, tiny_model_dir):
    import builtins

    from ternary_hf.ann import encode_with_ray, export_to_lancedb

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray.") or name == "lancedb":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    (tmp_path / "c.txt").write_text("a\nb\n")
    with pytest.raises(ImportError, match=r"ternary-hf\[ray\]"):
        encode_with_ray(tmp_path / "c.txt", tiny_model_dir, tmp_path / "out")
    with pytest.raises(ImportError, match=r"ternary-hf\[store\]"):
        export_to_lancedb(tmp_path, tmp_path / "db")


def test_unreachable_ray_address_fails_fast(tmp_path, tiny_model_dir, capsys):
    import socket


    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "c.txt").write_text("a\nb\n")
    rc = main(["encode", tiny_model_dir, str(tmp_path / "c.txt"), "--ray", "--address", f"127.0.0.1:{port}",
               "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert not (tmp_path / "out").exists()
    assert main(["encode", tiny_model_dir, str(tmp_path / "c.txt"), "--ray", "--address", "nonsense",
                 "--out", str(tmp_path / "out")]) == 2
    assert "not host:port" in capsys.readouterr().err


def test_cli_encode_index_export_search_single_process(tiny_model_dir, tmp_path, capsys):
    from ternary_hf.ann import EmbeddingShards

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": f"d{i}", "text": f"text number {i} of {i % 9}"}) for i in range(600)))
    shards = tmp_path / "shards"
    assert main(["encode", tiny_model_dir, str(corpus), "--out", str(shards), "--rows-per-shard", "250"]) == 0
    assert "600 embeddings of dim 32 in 3 shards" in capsys.readouterr().out
    opened = EmbeddingShards.open(shards)
    assert opened.manifest["encoder"]["engine"] == "single-process" and opened.fingerprint is not None
    assert main(["encode", tiny_model_dir, str(corpus), "--out", str(shards)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["index", str(shards), "--out", str(tmp_path / "idx"), "--index", "ivf-flat", "--nlist", "8",
                 "--nprobe", "8", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "text number 5 of 5", "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"][0] == "d5"
    assert main(["index", str(tmp_path / "missing"), "--out", str(tmp_path / "idx2")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    if pytest.importorskip("lancedb"):
        assert main(["export", str(shards), "--lancedb", str(tmp_path / "db"), "--table", "t"]) == 0
        assert "600 rows" in capsys.readouterr().out
