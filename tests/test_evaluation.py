"""Evaluation suite: reference numbers on the real MiniLM, tasks, comparison reports, user tasks, CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from ternary_hf.data import ClassificationTask, PairTask, RetrievalTask, gensim_sets
from ternary_hf.data import wordnet as wn
from ternary_hf.evaluation import (
    EmbeddingCache,
    FidelitySets,
    compare,
    default_tasks,
    evaluate,
    load_classification_task,
    load_model,
    load_pair_task,
    load_retrieval_task,
    run_task,
)

from conftest import write_tiny_wordpiece_bert


@pytest.fixture(scope="module")
def tiny_st_dir(tmp_path_factory):
    """A random 2-layer, 32-wide BERT with MiniLM's tokenizer, in plain transformers layout."""
    return write_tiny_wordpiece_bert(tmp_path_factory.mktemp("tiny_st"))


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_model(minilm_path)


def small_wordnet_task(n_queries: int = 40, n_corpus: int = 400, seed: int = 0) -> RetrievalTask:
    """A subset of the WordNet task: every relevant definition plus random distractors."""
    full = wn.retrieval_task(n_queries=n_queries, seed=seed)
    keep = {d for docs in full.relevant_docs.values() for d in docs}
    others = sorted(set(full.corpus) - keep)
    keep |= set(random.Random(seed).sample(others, n_corpus - len(keep)))
    return RetrievalTask("wordnet_small", full.queries, {d: full.corpus[d] for d in sorted(keep)}, full.relevant_docs)


def small_pairs() -> PairTask:
    ws = gensim_sets.wordsim353()
    return PairTask("wordsim_small", ws.texts1[:80], ws.texts2[:80], ws.scores[:80])


def small_polarity() -> ClassificationTask:
    pol = gensim_sets.polarity(folds=4)
    return ClassificationTask("polarity_small", pol.texts[:40] + pol.texts[-40:], pol.labels[:40] + pol.labels[-40:], folds=4)


# ---------------------------------------------------------------- reference numbers (real model)
def test_reference_numbers_minilm(minilm):
    """all-MiniLM-L6-v2 fp32 reproduces the issue's reference run."""
    cache = EmbeddingCache(minilm.model)
    ws = run_task(gensim_sets.wordsim353(), minilm.model, cache)
    assert ws.metrics["spearman"] == pytest.approx(0.729, abs=0.01)
    lee = run_task(gensim_sets.lee50_pairs(), minilm.model, cache)
    assert lee.metrics["pearson"] == pytest.approx(0.656, abs=0.01)
    assert lee.metrics["spearman"] == pytest.approx(0.508, abs=0.01)
    graded = run_task(gensim_sets.lee50_graded(), minilm.model, cache)
    assert graded.metrics["graded_ndcg@10"] == pytest.approx(0.857, abs=0.01)
    assert ws.headline == ["spearman"] and lee.headline == ["pearson", "spearman"]


# ---------------------------------------------------------------- data shapes
def test_gensim_sets_shapes():
    assert len(gensim_sets.lee_documents()) == 50
    ratings = gensim_sets.lee_ratings()
    assert np.allclose(ratings, ratings.T) and np.allclose(np.diag(ratings), 1)
    assert len(gensim_sets.lee50_pairs().scores) == 1225
    assert len(gensim_sets.wordsim353().texts1) == 353
    assert len(gensim_sets.simlex999().texts1) == 999
    pol = gensim_sets.polarity()
    assert len(pol.texts) == 200 and sorted(set(pol.labels)) == ["neg", "pos"]
    assert len(gensim_sets.lee_background_documents()) == 300
    assert [t.name for t in default_tasks(["wordsim353", "lee50_graded"])] == ["wordsim353", "lee50_graded"]


def test_missing_gensim_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TERNARY_HF_GENSIM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="wordsim353.tsv"):
        gensim_sets.wordsim353()


def test_task_validation():
    with pytest.raises(ValueError, match="lengths differ"):
        PairTask("p", ["a"], ["b", "c"], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        PairTask("p", [], [], [])
    with pytest.raises(ValueError, match="empty corpus"):
        RetrievalTask("r", {"q": "x"}, {}, {"q": {"d"}})
    with pytest.raises(ValueError, match="no queries"):
        RetrievalTask("r", {}, {"d": "x"}, {})
    with pytest.raises(ValueError, match="not in the corpus"):
        RetrievalTask("r", {"q": "x"}, {"d": "y"}, {"q": {"nope"}})
    with pytest.raises(ValueError, match="no relevant document"):
        RetrievalTask("r", {"q": "x", "q2": "z"}, {"d": "y"}, {"q": {"d"}})
    with pytest.raises(ValueError, match="two classes"):
        ClassificationTask("c", ["a", "b"], [1, 1])
    with pytest.raises(ValueError, match="unknown task"):
        default_tasks(["wordsim353", "nope"])


# ---------------------------------------------------------------- tasks on a tiny model
def test_graded_ndcg_ignores_the_query_document(tiny_st_dir):
    model = load_model(tiny_st_dir)
    texts = {"a": "the cat sat on the mat", "b": "a dog in the park", "c": "stock markets fell today"}
    task = RetrievalTask("g", queries=texts, corpus=texts, relevant_docs={},
                         graded={"a": {"b": 1.0}, "b": {"a": 1.0}, "c": {"a": 0.5}})
    cache = EmbeddingCache(model.model)
    result = run_task(task, model.model, cache)
    assert result.headline == ["graded_ndcg@10"]
    # with the self-match excluded each query ranks 2 documents; a perfect score would be 1 only by luck
    emb = cache.encode(list(texts.values()))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    expected = []
    from sklearn.metrics import ndcg_score
    for i, q in enumerate("abc"):
        others = [j for j in range(3) if j != i]
        gains = [task.graded[q].get("abc"[j], 0.0) for j in others]
        expected.append(ndcg_score([2.0 ** np.array(gains) - 1], [sims[i, others]], k=10))
    assert result.metrics["graded_ndcg@10"] == pytest.approx(np.mean(expected))


def test_cache_encodes_each_text_once(tiny_st_dir):
    model = load_model(tiny_st_dir)
    calls = []
    original = model.model.encode

    def counting(texts, **kw):
        calls.append(len(texts))
        return original(texts, **kw)

    model.model.encode = counting
    cache = EmbeddingCache(model.model)
    run_task(gensim_sets.lee50_pairs(), model.model, cache)
    assert sum(calls) == 50  # 1,225 pairs over 50 distinct documents
    a = cache.encode(["x y", "z"])
    b = cache.encode(["z", "x y"])
    assert np.array_equal(a[::-1], b)
    with pytest.raises(ValueError, match="another model"):
        run_task(small_pairs(), load_model(tiny_st_dir).model, cache)


def test_compare_model_with_itself_and_reports(tiny_st_dir, tmp_path):
    tasks = [small_pairs(), small_polarity(), small_wordnet_task()]
    sets = FidelitySets(short=gensim_sets.polarity().texts[:30], long=gensim_sets.lee_documents()[:5],
                        queries=list(tasks[2].queries.values())[:20], corpus=list(tasks[2].corpus.values()))
    cmp = compare(tiny_st_dir, tiny_st_dir, tasks, fidelity=sets)
    names = [(r["task"], r["metric"]) for r in cmp.rows]
    assert names == [("wordsim_small", "spearman"), ("polarity_small", "accuracy"),
                     ("wordnet_small", "ndcg@10"), ("wordnet_small", "mrr@10"), ("wordnet_small", "recall@1")]
    assert all(r["retained"] == pytest.approx(100.0) for r in cmp.rows if r["baseline"])
    assert all(r["model"] == r["baseline"] for r in cmp.rows)
    assert cmp.mean_retained == pytest.approx(100.0)
    assert cmp.model.fidelity["cos_short_mean"] == pytest.approx(1.0, abs=1e-5)
    assert cmp.model.fidelity["top10_agreement"] == pytest.approx(1.0)
    assert cmp.model.size["bytes"] > 0
    paths = cmp.save(tmp_path / "out")
    data = json.loads(Path(paths["json"]).read_text())
    assert data["mean_retained"] == pytest.approx(100.0) and len(data["rows"]) == 5
    md = Path(paths["markdown"]).read_text()
    assert "mean retained" in md and "cos_long_mean" in md
    assert Path(paths["plot"]).read_bytes()[:4] == b"\x89PNG"


def test_compare_ptq_ternary_loses_fidelity(tiny_st_dir):
    tasks = [small_pairs()]
    sets = FidelitySets(short=gensim_sets.polarity().texts[:20], long=gensim_sets.lee_documents()[:4],
                        queries=gensim_sets.polarity().texts[:10], corpus=gensim_sets.polarity().texts[50:90])
    cmp = compare(tiny_st_dir, tiny_st_dir, tasks, fidelity=sets, quantize_model=True,
                  speed=gensim_sets.polarity().texts[:16])
    import ternary_hf

    assert ternary_hf.is_ternary_model(cmp.model.cache.model[0].auto_model)
    assert cmp.model.size["bytes"] < cmp.baseline.size["bytes"]
    assert 0 < cmp.model.fidelity["cos_short_mean"] < 0.999
    assert cmp.model.speed > 0 and cmp.baseline.speed > 0
    assert "+ternary-ptq" in cmp.model.label


def test_transformers_model_object_matches_path(tiny_st_dir):
    from transformers import AutoModel

    from_path = load_model(tiny_st_dir)
    net = AutoModel.from_pretrained(tiny_st_dir)
    wrapped = load_model(net)
    texts = ["a short text", "another, rather longer, sentence about ternary weights"]
    a = from_path.model.encode(texts)
    b = wrapped.model.encode(texts)
    assert np.allclose(a, b, atol=1e-5)
    assert wrapped.model[0].auto_model is net
    with pytest.raises(TypeError, match="cannot evaluate"):
        load_model(42)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("/nonexistent/model/dir")
    with pytest.raises(ValueError, match="quantize=True"):
        load_model(net, quantize=True)


def test_wrapped_model_keeps_its_length_limit_with_a_given_tokenizer(minilm_path):
    """A tokenizer passed with a model object must not replace the model's configured max_seq_length (256 for
    all-MiniLM-L6-v2) with its own model_max_length (512), and the caller's tokenizer stays unchanged."""
    from transformers import AutoModel, AutoTokenizer

    net = AutoModel.from_pretrained(minilm_path)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    own_limit = tokenizer.model_max_length
    configured = load_model(minilm_path).model.max_seq_length
    assert configured == 256 != own_limit
    assert load_model(net, tokenizer=tokenizer).model.max_seq_length == configured
    wrapped = load_model(net, tokenizer=tokenizer, max_seq_length=128).model
    assert wrapped.max_seq_length == 128
    assert wrapped.tokenize(["word " * 400])["input_ids"].shape[1] == 128
    assert tokenizer.model_max_length == own_limit


def test_evaluate_rejects_bad_task_lists(tiny_st_dir):
    with pytest.raises(ValueError, match="no tasks"):
        evaluate(tiny_st_dir, [])
    with pytest.raises(ValueError, match="unique"):
        evaluate(tiny_st_dir, [small_pairs(), small_pairs()])
    few = ClassificationTask("few", ["a", "b", "c", "d"], [0, 0, 1, 1], folds=5)
    with pytest.raises(ValueError, match="smallest class"):
        evaluate(tiny_st_dir, [few])


# ---------------------------------------------------------------- user tasks
def test_user_tasks_from_files(tmp_path, tiny_st_dir):
    (tmp_path / "sts.csv").write_text("sentence1,sentence2,score\na cat,a kitten,4.5\na car,a banana,0.5\nsun,moon,2\n")
    (tmp_path / "cls.jsonl").write_text("\n".join(json.dumps({"text": f"text {i}", "label": i % 2}) for i in range(12)))
    (tmp_path / "q.jsonl").write_text('{"_id": "q1", "text": "feline"}\n{"_id": "q2", "text": "vehicle"}\n')
    (tmp_path / "c.jsonl").write_text(
        '{"_id": "d1", "title": "Cat", "text": "a small feline"}\n{"_id": "d2", "text": "a car"}\n{"_id": "d3", "text": "x"}\n'
    )
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td2\t1\nq2\td3\t0\n")
    pairs = load_pair_task(tmp_path / "sts.csv")
    assert pairs.name == "sts" and pairs.scores == [4.5, 0.5, 2.0]
    cls = load_classification_task(tmp_path / "cls.jsonl", folds=3)
    assert cls.labels[:2] == [0, 1]
    ret = load_retrieval_task(tmp_path / "q.jsonl", tmp_path / "c.jsonl", tmp_path / "qrels.tsv")
    assert ret.relevant_docs == {"q1": {"d1"}, "q2": {"d2"}}
    assert ret.corpus["d1"] == "Cat a small feline"
    assert ret.graded == {"q1": {"d1": 2.0}, "q2": {"d2": 1.0}}
    report = evaluate(tiny_st_dir, [pairs, cls, ret])
    assert {r.task for r in report.results} == {"sts", "cls", "c"}
    assert set(report.results[2].metrics) >= {"ndcg@10", "graded_ndcg@10", "mrr@10", "recall@1"}
    rows = [{"sentence1": "a", "sentence2": "b", "score": 1.0}, {"sentence1": "c", "sentence2": "d", "score": 0.0}]
    assert load_pair_task(rows, name="inline").texts2 == ["b", "d"]
    import datasets

    ds = datasets.Dataset.from_list([{"text": f"t{i}", "label": i % 2} for i in range(10)])
    assert load_classification_task(ds, name="hf").texts[:2] == ["t0", "t1"]
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(4))})
    assert len(load_classification_task(dd, split="test", folds=2).texts) == 4
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]"):
        load_classification_task(dd)
    with pytest.raises(TypeError, match="cannot read rows from int"):
        load_pair_task(5)


def test_user_task_bad_input(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match=r"first text column.*columns are \['a', 'b', 'c'\]"):
        load_pair_task(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="no column 'zzz'"):
        load_pair_task(tmp_path / "bad.csv", text1_column="zzz")
    (tmp_path / "bad.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported task file type"):
        load_pair_task(tmp_path / "bad.txt")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="no rows"):
        load_pair_task(tmp_path / "empty.csv")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2"):
        load_classification_task(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError):
        load_pair_task(tmp_path / "missing.csv")
    (tmp_path / "nan.csv").write_text("sentence1,sentence2,score\na,b,high\n")
    with pytest.raises(ValueError, match="must hold numbers"):
        load_pair_task(tmp_path / "nan.csv")


# ---------------------------------------------------------------- CLI
def test_eval_cli(tiny_st_dir, tmp_path, capsys):
    from ternary_hf import cli

    def main(argv):
        return cli.main(["eval", *argv])

    (tmp_path / "sts.csv").write_text("sentence1,sentence2,score\na cat,a kitten,4.5\na car,a banana,0.5\nsun,moon,2\n")
    rc = main([tiny_st_dir, "--no-default-tasks", "--pairs", str(tmp_path / "sts.csv"), "--out", str(tmp_path / "o")])
    assert rc == 0
    assert (tmp_path / "o" / "results.json").is_file() and (tmp_path / "o" / "quality_vs_size.png").is_file()
    assert "| sts | spearman |" in capsys.readouterr().out
    rc = main([tiny_st_dir, "--tasks", "wordsim353,bogus"])
    assert rc == 2 and "unknown task" in capsys.readouterr().err
    rc = main([tiny_st_dir, "--no-default-tasks"])
    assert rc == 2 and "no tasks selected" in capsys.readouterr().err
