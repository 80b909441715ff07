"""`ternary-hf quickstart`: the `--fast` run end to end (report folder, plots, reloadable checkpoint,
sane numbers), and bad input refused before any work and without leaving files behind."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ternary_hf.quickstart import (
    QuickstartConfig,
    QuickstartError,
    check_output_dir,
    corpus_search_sets,
    load_corpus,
    resolve_model,
    run_quickstart,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """One `--fast` quickstart on the bundled MiniLM (a few training steps, small evaluation subsets)."""
    parent = tmp_path_factory.mktemp("quickstart")
    printed: list[str] = []
    result = run_quickstart(QuickstartConfig(out=str(parent / "report"), fast=True, show_progress=False),
                            printer=printed.append)
    return result, parent, "\n".join(printed)


def test_fast_run_writes_the_report_folder(fast_run):
    result, parent, printed = fast_run
    out = parent / "report"
    assert result.out == out
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "training_curve.png", "quality_vs_size_speed.png", "model"} <= names
    assert _leftovers(parent) == []  # built in a temp folder, renamed into place; nothing else left
    assert not (out / "model" / ".trainer").exists()

    md = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Quality", "## Footprint", "## Speed", "## FAISS search", "### Sample searches"):
        assert heading in md
    assert "| task | metric | fp32 | PTQ | PTQ retained | distilled | distilled retained |" in md
    assert "| model | weights | ratio to fp32 |" in md
    assert "| model | texts/s | x fp32 |" in md
    assert "| wordnet | ndcg@10 |" in md
    assert "(training_curve.png)" in md and "(quality_vs_size_speed.png)" in md

    # The summary table is printed last, with the sample searches before it.
    assert "Sample searches over" in printed
    assert result.summary in printed
    for row in ("mean quality retained", "cosine to fp32, short texts", "weights (MiB)", "size (x fp32)",
                "encoding speed"):
        assert row in result.summary
    assert "int8 embedding tables" in result.summary


def test_fast_run_plots_are_valid_pngs(fast_run):
    import matplotlib.image

    result, _, _ = fast_run
    for name in ("training_curve.png", "quality_vs_size_speed.png"):
        path = result.out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
        assert image.std() > 0  # not a blank canvas


def test_fast_run_results_are_sane(fast_run):
    result, _, _ = fast_run
    results = json.loads((result.out / "results.json").read_text(encoding="utf-8"))
    assert results == json.loads(json.dumps(result.results, default=float))  # what was returned is what was written
    assert results["kind"] == "ternary-hf-quickstart"
    training = results["training"]
    assert training["steps"] == 5  # --fast is step-bounded
    assert [p["step"] for p in training["curve"]] == [1, 2, 3, 4, 5]
    assert all(p["loss"] > 0 and math.isfinite(p["loss"]) for p in training["curve"])
    minutes = [p["minutes"] for p in training["curve"]]
    assert minutes == sorted(minutes)
    for name in ("PTQ", "distilled"):
        fid = results["fidelity"][name]
        for key in ("cos_short_mean", "cos_short_min", "cos_long_mean", "cos_long_min"):
            assert -1.0 <= fid[key] <= 1.0
        assert fid["cos_short_min"] <= fid["cos_short_mean"]
        assert 0.0 <= fid["top10_agreement"] <= 1.0
        quality = results["quality"][name]
        assert {r["task"] for r in quality["rows"]} == {"wordsim353", "wordnet"}
        assert 0.0 < quality["mean_retained"] < 200.0
    # The default checkpoint stores int8 embedding tables: about a sixth of fp32 (float tables: about half).
    fp = results["footprint"]
    assert fp["embedding_dtype"] == "int8"
    assert set(fp["checkpoint"]["embedding_tables"]) == {"int8"}
    assert fp["fp32"]["ratio"] == pytest.approx(1.0)
    assert 0.1 < fp["distilled"]["ratio"] < 0.25
    assert fp["PTQ"]["ratio"] == pytest.approx(fp["distilled"]["ratio"], rel=0.01)
    assert fp["checkpoint"]["total"] == pytest.approx(fp["distilled"]["bytes"], rel=0.01)
    assert all(results["speed_texts_per_s"][m] > 0 for m in ("fp32", "PTQ", "distilled"))
    ann = results["ann"]
    assert [r["model"] for r in ann["rows"]] == ["fp32", "distilled"]
    assert ann["rows"][0]["top10_agreement_with_fp32_exact"] == pytest.approx(1.0)
    for row in ann["rows"]:
        assert 0.0 <= row["ndcg@10"] <= 1.0 and 0.0 <= row["recall@10_vs_own_exact"] <= 1.0
    assert len(ann["samples"]) == 3
    for sample in ann["samples"]:
        for hits in sample["hits"].values():
            assert len(hits) == 3 and all(-1.0 <= h["score"] <= 1.0 for h in hits)


def test_fast_run_checkpoint_reloads_as_ternary_and_is_ready_to_push(fast_run):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    import ternary_hf
    from ternary_hf.hub import inspect_checkpoint

    result, _, _ = fast_run
    model_dir = result.model_dir
    info = inspect_checkpoint(model_dir)  # what `ternary-hf push` checks before uploading
    assert info.is_sentence_transformer and len(info.ternary_layers) == 37  # 6 x (4 attention + 2 FFN) + pooler
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "ternary-hf" in card and "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "## Evaluation" in card and "## Distillation recipe" in card

    model = SentenceTransformer(str(model_dir), device="cpu")
    layers = [m for m in model.modules() if isinstance(m, ternary_hf.TernaryLinear)]
    assert len(layers) == 37 and all(layer.is_packed for layer in layers)
    emb = model.encode(["A ternary model keeps two bits per weight.", "Search with FAISS."])
    assert emb.shape == (2, 384) and np.isfinite(emb).all()


# --------------------------------------------------------------------------- bad input
def test_missing_model_path_is_refused():
    with pytest.raises(QuickstartError, match="no such folder"):
        resolve_model("./no/such/model-dir")


def test_model_file_instead_of_folder_is_refused(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(QuickstartError, match="is a file"):
        resolve_model(str(f))


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(QuickstartError, match="cannot load its config"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_corpus_is_refused(tmp_path, content):
    f = tmp_path / "texts.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(QuickstartError, match="empty"):
        load_corpus(str(f))


def test_corpus_without_text_column_is_refused(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"label": 1}\n{"label": 0}\n', encoding="utf-8")
    with pytest.raises(QuickstartError, match="no text column"):
        load_corpus(str(f))


def test_missing_corpus_is_refused(tmp_path):
    with pytest.raises(QuickstartError, match="no such file"):
        load_corpus(str(tmp_path / "nope.txt"))


def test_corpus_file_and_dataset_folder_are_read(tmp_path):
    import datasets

    f = tmp_path / "texts.txt"
    f.write_text("first text\n\nsecond text\nthird text\n", encoding="utf-8")
    assert load_corpus(str(f))["text"] == ["first text", "second text", "third text"]
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"sentence": ["a b", "c d"]}).save_to_disk(str(folder))
    assert load_corpus(str(folder))["text"] == ["a b", "c d"]


def test_search_sets_hold_queries_out_of_the_index():
    texts = [f"text {i}" for i in range(50)] + ["text 3"]  # duplicates are indexed once
    docs, queries = corpus_search_sets(texts, n_docs=20, n_queries=3, seed=0)
    assert len(docs) == 20 and len(queries) == 3
    assert not set(docs.values()) & set(queries.values())


def test_output_dir_with_unrelated_files_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(QuickstartError, match="notes.txt.*--overwrite"):
        check_output_dir(out, overwrite=False)
    assert check_output_dir(out, overwrite=True) == out
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(QuickstartError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_dir(empty, overwrite=False) == empty


def test_cli_refuses_bad_input_before_any_work(tmp_path, capsys):
    from ternary_hf import cli

    def main(argv):
        return cli.main(["quickstart", *argv])

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep", encoding="utf-8")
    assert main(["--fast", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text(encoding="utf-8") == "keep"

    assert main(["--fast", "--out", str(tmp_path / "new"), "--model", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert main(["--fast", "--out", str(tmp_path / "new"), "--corpus", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "out"]  # nothing written


def test_failure_mid_run_leaves_no_partial_report(tmp_path, monkeypatch):
    import ternary_hf.quickstart.run as run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the temp folder exists

    monkeypatch.setattr(run, "training_plan", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_quickstart(QuickstartConfig(out=str(out), fast=True, show_progress=False), printer=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_publish_replaces_only_with_overwrite(tmp_path):
    from ternary_hf.quickstart import publish_report as _publish

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old", encoding="utf-8")
    staging = tmp_path / ".out.partial-x"
    staging.mkdir()
    (staging / "report.md").write_text("new", encoding="utf-8")
    with pytest.raises(QuickstartError, match="kept in"):
        _publish(staging, out, overwrite=False)
    assert (out / "old.txt").exists() and (staging / "report.md").exists()
    _publish(staging, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_evaluation_stage_shows_one_bar_and_no_encoding_bars(tmp_path, capsys):
    """Every evaluation step used to print sentence-transformers' own `Batches:` bars between the stage lines:
    the stage now shows one bar over models x tasks (+ fidelity)."""
    from ternary_hf.evaluation import FidelitySets, default_tasks, load_model
    from ternary_hf.quickstart.run import _evaluate_all

    from conftest import write_tiny_wordpiece_bert

    path = write_tiny_wordpiece_bert(tmp_path / "tiny")
    models = [load_model(path, label=label) for label in ("fp32", "PTQ", "distilled")]
    texts = [f"text number {i} of the set" for i in range(150)]  # several encoding batches per call
    sets = FidelitySets(short=texts[:80], long=texts[80:100], queries=texts[:10], corpus=texts[10:], k=5)
    capsys.readouterr()
    reports = _evaluate_all(models, default_tasks(["wordsim353"]), sets, show=True)
    err = capsys.readouterr().err
    assert [r.label for r in reports] == ["fp32", "PTQ", "distilled"]
    assert reports[1].fidelity and reports[2].fidelity
    assert "Batches" not in err and "encoding" not in err
    # one bar over 3 models x 1 task + 2 fidelity measures (its first frame is always drawn; later frames depend
    # on tqdm's refresh interval, so only the total is checked)
    assert "evaluating" in err and "0/5" in err
    assert {segment.split(":")[0].strip() for segment in err.replace("\n", "\r").split("\r") if segment.strip()} \
        == {"evaluating"}
