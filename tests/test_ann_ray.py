"""Encoding on a real local Ray cluster: same ids and vectors as one process, a killed worker's chunk is retried,
all corpus formats, and the CLI's `ann build --ray` into an on-disk IVF index checked against exact search.

One local cluster (2 CPUs, no dashboard) serves the module; each encoding run starts two encoder actors, which is
most of the ~10-20 s a run takes on a 2-core machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from conftest import write_tiny_wordpiece_bert  # noqa: E402

from ternary_hf.ann import AnnIndex, EmbeddingShards, encode_to_shards, encode_with_ray, load_index  # noqa: E402
from ternary_hf.ann.encode import encode_texts, read_corpus  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    kill_file = tmp_path_factory.mktemp("kill") / "armed"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "TERNARY_HF_TEST_KILL_FILE")}
    # workers inherit the driver's environment: this checkout and the hook module must be importable there
    os.environ["PYTHONPATH"] = os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")])
    os.environ["TERNARY_HF_TEST_KILL_FILE"] = str(kill_file)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "ray_kill_hook.setup"})
    try:
        yield kill_file
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_wordpiece_bert(tmp_path_factory.mktemp("tiny_ray"), num_hidden_layers=1)


def texts(n: int, offset: int = 0) -> list[str]:
    return [f"document {i} is about {'many ' * (i % 11)}topic {i % 7}" for i in range(offset, offset + n)]


def single_process(model_dir: str, corpus, tmp_path: Path, chunk_size: int) -> tuple[list[str], np.ndarray]:
    from ternary_hf.evaluation import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor: one thread
    try:
        shards = encode_to_shards(load_model(model_dir).model, corpus, tmp_path / "single", chunk_size=chunk_size,
                                  rows_per_shard=400, show_progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    got = list(shards.iter_shards())
    return sum((i for i, _ in got), []), np.concatenate([e for _, e in got])


def read_all(shards: EmbeddingShards) -> tuple[list[str], np.ndarray]:
    got = list(shards.iter_shards())
    return sum((i for i, _ in got), []), np.concatenate([e for _, e in got])


def test_ray_matches_single_process_and_survives_a_killed_worker(cluster, tiny_model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts(1500)) + "\n\n" + "last line\n")  # an empty line: its line number is skipped
    want_ids, want = single_process(tiny_model, corpus, tmp_path, chunk_size=128)
    cluster.write_text("armed")  # the first encoder call kills its worker process
    shards = encode_with_ray(corpus, tiny_model, tmp_path / "ray", chunk_size=128, rows_per_shard=400,
                             show_progress_bar=False)
    assert Path(str(cluster) + ".fired").exists()  # a worker really died mid-run
    ids, emb = read_all(EmbeddingShards.open(tmp_path / "ray"))
    assert ids == want_ids and len(ids) == 1501 and ids[-1] == "1501"  # nothing lost, nothing twice, in order
    assert np.array_equal(emb, want)  # bit for bit: the same chunks, encoded the same way
    assert [s["rows"] for s in shards.manifest["shards"]] == [400, 400, 400, 301]
    assert shards.manifest["encoder"]["engine"] == "ray" and shards.manifest["encoder"]["actors"] == 2
    assert shards.fingerprint is not None
    # a second run's vectors are the same bits too (both equal the single-process ones): shards hash the same
    # as long as the writer is deterministic, which the single-process twin shows
    twin = EmbeddingShards.open(tmp_path / "single")
    assert [s["sha256"] for s in twin.manifest["shards"]] == [s["sha256"] for s in shards.manifest["shards"]]


def test_ray_reads_every_format_from_a_folder(cluster, tiny_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(json.dumps({"_id": f"j{i}", "title": "T", "text": t})
                                              for i, t in enumerate(texts(150))))
    (folder / "b.csv").write_text("id,text\n" + "\n".join(f"c{i},{t}" for i, t in enumerate(texts(120, 500))))
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(130)], "text": texts(130, 900)}), folder / "c.parquet",
                   row_group_size=50)
    (folder / "d.txt").write_text("\n".join(texts(90, 1500)))
    shards = encode_with_ray(folder, tiny_model, tmp_path / "ray", chunk_size=64, show_progress_bar=False)
    ids, emb = read_all(shards)
    from ternary_hf.evaluation import load_model

    model = load_model(tiny_model).model
    want_ids, want = [], []
    for name in ("a.jsonl", "b.csv", "c.parquet", "d.txt"):  # files in sorted order, each chunked from its start
        pairs = list(read_corpus(folder / name))
        prefix = "d.txt:" if name == "d.txt" else ""  # positional ids get the file name with several files
        want_ids += [prefix + i for i, _ in pairs]
        want += [encode_texts(model, [t for _, t in pairs[s : s + 64]]) for s in range(0, len(pairs), 64)]
    assert ids == want_ids and ids[0] == "j0" and ids[-1] == "d.txt:89"
    np.testing.assert_allclose(emb, np.concatenate(want), rtol=0, atol=1e-6)
    # a user's own Ray Dataset with id/text columns goes through the same actors
    rows = [{"id": f"r{i}", "text": t} for i, t in enumerate(texts(100))]
    from_ds = encode_with_ray(ray.data.from_items(rows), tiny_model, tmp_path / "ds", chunk_size=50,
                              show_progress_bar=False)
    ids, emb = read_all(from_ds)
    assert ids == [r["id"] for r in rows]
    np.testing.assert_allclose(emb, encode_texts(model, [r["text"] for r in rows]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no id column"):
        encode_with_ray(ray.data.from_items([{"text": "x"}]), tiny_model, tmp_path / "bad", show_progress_bar=False)


def test_cli_build_ray_ondisk_index_against_exact(cluster, tiny_model, tmp_path, capsys):
    from ternary_hf import cli

    def main(argv):
        return cli.main(["ann", *argv])

    corpus = tmp_path / "c.jsonl"
    docs = texts(1200)
    corpus.write_text("\n".join(json.dumps({"_id": f"d{i}", "text": t}) for i, t in enumerate(docs)))
    out = tmp_path / "index"
    rc = main(["build", tiny_model, str(corpus), "--ray", "--index", "ivf-flat", "--nlist", "16", "--nprobe", "16",
               "--rows-per-shard", "300", "--chunk-size", "100", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "1,200 documents" in capsys.readouterr().out
    shards = EmbeddingShards.open(str(out) + ".shards")
    assert len(shards.files) == 4
    index = load_index(out)
    ids, emb = read_all(shards)
    exact = AnnIndex.from_embeddings(emb, ids, "flat")
    queries = emb[::37] + 0.01
    assert index.search_embeddings(queries, 10)[0] == exact.search_embeddings(queries, 10)[0]  # nprobe = nlist
    assert main(["search", str(out), docs[7], "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == ["d7"]
    # nothing is encoded when the output is taken
    assert main(["build", tiny_model, str(corpus), "--ray", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["build", tiny_model, str(corpus), "--ray", "--index", "hnsw", "--out", str(tmp_path / "x")]) == 2
    assert "--index must be one of ivf-pq, ivf-flat" in capsys.readouterr().err
