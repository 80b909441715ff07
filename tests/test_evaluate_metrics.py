"""The Hugging Face `evaluate` metric modules shipped in the package: they load offline with
`evaluate.load(metric_path(name))` and compute exactly what the suite's own functions compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

evaluate = pytest.importorskip("evaluate")

import ternary_hf  # noqa: E402
from ternary_hf.ann import qrels_metrics  # noqa: E402
from ternary_hf.data import RetrievalTask  # noqa: E402
from ternary_hf.evaluation import METRICS, EmbeddingCache, load_model, metric_path, run_task  # noqa: E402
from ternary_hf.evaluation.fidelity import embedding_fidelity, neighbour_agreement, paired_cosine  # noqa: E402


def load(name: str, tmp_path: Path):
    return evaluate.load(metric_path(name), cache_dir=str(tmp_path / "evaluate-cache"))


def test_metric_paths_are_package_files():
    package = Path(ternary_hf.__file__).resolve().parent
    for name in METRICS:
        path = Path(metric_path(name))
        assert path.is_file() and path.name == f"{name}.py"
        assert package in path.resolve().parents
    with pytest.raises(ValueError, match="available: embedding_fidelity, retrieval"):
        metric_path("bleu")


def test_embedding_fidelity_matches_the_fidelity_functions(tmp_path):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(60, 24)).astype(np.float32)
    model = (reference + 0.4 * rng.normal(size=reference.shape)).astype(np.float32)
    metric = load("embedding_fidelity", tmp_path)
    for start in range(0, 60, 25):  # streamed in batches, as in an evaluation loop
        metric.add_batch(predictions=model[start:start + 25], references=reference[start:start + 25])
    got = metric.compute(k=5)
    cos = paired_cosine(model, reference)
    report = embedding_fidelity(torch.from_numpy(model), torch.from_numpy(reference), k=5)
    assert got == {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                   "top5_agreement": report.neighbour_agreement_at_10}
    assert 0.5 < got["mean_cosine"] < 1 and 0 < got["top5_agreement"] < 1

    # Queries against a corpus: the suite's neighbour agreement.
    corpus_ref = rng.normal(size=(80, 24)).astype(np.float32)
    corpus_model = (corpus_ref + 0.4 * rng.normal(size=corpus_ref.shape)).astype(np.float32)
    got = load("embedding_fidelity", tmp_path).compute(
        predictions=model, references=reference, k=10, corpus_predictions=corpus_model, corpus_references=corpus_ref)
    assert got["top10_agreement"] == neighbour_agreement(model, corpus_model, reference, corpus_ref, k=10)
    with pytest.raises(ValueError, match="corpus_predictions and corpus_references"):
        load("embedding_fidelity", tmp_path).compute(predictions=model, references=reference,
                                                     corpus_predictions=corpus_model)


def test_retrieval_known_values_and_bad_input(tmp_path):
    metric = load("retrieval", tmp_path)
    got = metric.compute(predictions=[["d2", "d1"], ["d3", "d4"]], references=[["d1"], ["d3"]], k=10)
    assert got["mrr@10"] == 0.75 and got["recall@1"] == 0.5 and got["recall@10"] == 1.0
    assert got["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1) / 2)
    with pytest.raises(ValueError, match="more than once"):
        metric.compute(predictions=[["d1", "d1"]], references=[["d1"]])
    with pytest.raises(ValueError, match="no query has a relevant document"):
        metric.compute(predictions=[["d1"]], references=[[]])


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_model(minilm_path).model


def test_retrieval_matches_the_suite(minilm, tmp_path):
    from ternary_hf.data import wordnet

    full = wordnet.retrieval_task(n_queries=30, seed=1)
    keep = sorted({d for docs in full.relevant_docs.values() for d in docs} | set(sorted(full.corpus)[:150]))
    task = RetrievalTask("wordnet_tiny", full.queries, {d: full.corpus[d] for d in keep}, full.relevant_docs)
    cache = EmbeddingCache(minilm)
    suite = run_task(task, minilm, cache).metrics

    # The ranked lists of an exact cosine search over the same embeddings, fed to the metric module.
    qids, dids = list(task.queries), list(task.corpus)
    q = torch.nn.functional.normalize(torch.from_numpy(cache.encode([task.queries[i] for i in qids])), dim=-1)
    d = torch.nn.functional.normalize(torch.from_numpy(cache.encode([task.corpus[i] for i in dids])), dim=-1)
    scores, top = (q @ d.T).topk(10, dim=-1)
    ranked = [[dids[j] for j in row] for row in top.tolist()]
    metric = load("retrieval", tmp_path)
    for qid, hits in zip(qids, ranked):
        metric.add(prediction=hits, reference=sorted(task.relevant_docs[qid]))
    got = metric.compute(k=10)
    for name in ("ndcg@10", "mrr@10", "recall@1", "recall@10"):
        assert got[name] == pytest.approx(suite[name], abs=1e-12), name
    ann = qrels_metrics(task, qids, ranked, scores.tolist())
    assert ann == {name: got[name] for name in ann}


def test_metrics_load_offline_in_a_fresh_process(tmp_path):
    """No network: the endpoint is unreachable and the hub is offline; the modules still load from the package."""
    script = (
        "import json, evaluate\n"
        "from ternary_hf.evaluation import metric_path\n"
        "f = evaluate.load(metric_path('embedding_fidelity'))\n"
        "r = evaluate.load(metric_path('retrieval'))\n"
        "print(json.dumps([f.compute(predictions=[[1.0, 0.0], [0.0, 1.0]], references=[[1.0, 0.0], [1.0, 1.0]], k=1),\n"
        "                  r.compute(predictions=[['d2', 'd1']], references=[['d1']], k=10)]))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fidelity, retrieval = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fidelity["top1_agreement"] == 1.0 and fidelity["min_cosine"] == pytest.approx(2 ** -0.5, rel=1e-6)
    assert retrieval["mrr@10"] == 0.5
