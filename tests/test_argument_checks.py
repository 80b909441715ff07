"""Unhelpful errors made helpful, and raised before any work: bad text files (file and line), a missing
`--teacher` folder, `--output-dim 0`, an `eval --out` / `--output-dir` that is an existing file, and
`modules_to_not_convert` typos."""

from __future__ import annotations

import argparse

import pytest
from transformers import AutoModel

from ternary_hf import TernaryConfig


@pytest.fixture()
def no_work(monkeypatch):
    """Any model load or training setup fails the test: the checks must come first."""
    import ternary_hf.training.recipe as recipe
    import ternary_hf.compress as compress
    import ternary_hf.evaluation.models as models

    def boom(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(recipe, "build_distillation", boom)
    monkeypatch.setattr(compress, "load_ternary_sentence_transformer", boom)
    monkeypatch.setattr(models, "load_model", boom)


BAD_FILES = {
    "empty.txt": ("", r"empty.txt is empty"),
    "blank.txt": ("\n  \n\n", r"blank.txt is empty \(or only blank lines\)"),
    "broken.jsonl": ('{"text": "fine"}\n{"text": "unterminated\n', r"broken.jsonl line 2: not valid JSON"),
    "list.jsonl": ('{"text": "fine"}\n[1, 2]\n', r"list.jsonl line 2: expected a JSON object"),
    "latin1.txt": ("caf\xe9\n".encode("latin-1"), r"latin1.txt line 1: not UTF-8"),
    "nocolumn.jsonl": ('{"foo": "x"}\n', r"nocolumn.jsonl: no text column found"),
}


def _write(tmp_path, name):
    content, _ = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("name", [n for n in BAD_FILES if n != "nocolumn.jsonl"])
def test_distill_names_the_bad_data_file_and_line_before_any_work(name, tmp_path, no_work, capsys):
    from ternary_hf.commands.distill import main_from_argv

    path = _write(tmp_path, name)
    assert main_from_argv(["--output_dir", str(tmp_path / "out"), "--data", str(path)]) == 2
    import re

    assert re.search(BAD_FILES[name][1], capsys.readouterr().err)


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_text_loading_names_the_file_and_line(name, tmp_path):
    """Before: datasets' DatasetGenerationError without the file or the line."""
    from ternary_hf.training.recipe import load_distillation_texts

    with pytest.raises(ValueError, match=BAD_FILES[name][1]):
        load_distillation_texts([str(_write(tmp_path, name))])


@pytest.mark.parametrize("flag", ["--teacher", "--model"])
def test_distill_missing_local_model_folder(flag, tmp_path, no_work, capsys):
    """Before: 'Repo id must be in the form ...' from huggingface_hub, after loading the student."""
    from ternary_hf.commands.distill import main_from_argv

    missing = tmp_path / "no" / "such" / "model"
    assert main_from_argv(["--output_dir", str(tmp_path / "out"), flag, str(missing)]) == 2
    assert f"{flag} {missing}: no such folder" in capsys.readouterr().err


def test_distill_hub_id_not_cached_offline(tmp_path, no_work, capsys, monkeypatch):
    from ternary_hf.commands.distill import main_from_argv

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main_from_argv(["--output_dir", str(tmp_path / "out"), "--teacher", "nobody/not-a-model"]) == 2
    assert "is not in the local cache" in capsys.readouterr().err


def _quantize(argv):
    from ternary_hf.commands import quantize

    parser = argparse.ArgumentParser()
    quantize.register(parser.add_subparsers())
    args = parser.parse_args(["quantize", *argv])
    return args.func(args)


def test_quantize_output_dim_zero_is_refused(capsys):
    """Before: --output-dim 0 was silently ignored (no PCA, no message)."""
    with pytest.raises(SystemExit):
        _quantize(["--output-dim", "0"])
    assert "0 is not a dimension" in capsys.readouterr().err


def test_compress_output_dim_zero_is_refused(no_work):
    from ternary_hf.compress import compress

    with pytest.raises(ValueError, match=r"output_dim=0 is invalid"):
        compress("unused", "unused", output_dim=0)


def test_quantize_bad_prune_corpus_before_loading(tmp_path, no_work):
    path = _write(tmp_path, "broken.jsonl")
    with pytest.raises(ValueError, match="broken.jsonl line 2"):
        _quantize(["--output-dir", str(tmp_path / "out"), "--prune-vocab", str(path)])


def test_quantize_output_dir_that_is_a_file_or_a_foreign_folder(tmp_path, no_work):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SystemExit, match="is an existing file"):
        _quantize(["--output-dir", str(target)])
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(SystemExit, match="holds no model"):
        _quantize(["--output-dir", str(folder)])


def test_eval_out_existing_file_fails_before_any_work(tmp_path, no_work, capsys):
    """Before: the whole evaluation ran, then writing results.json failed."""
    from ternary_hf import cli

    def main(argv):
        return cli.main(["eval", *argv])

    target = tmp_path / "results"
    target.write_text("x")
    assert main(["--out", str(target)]) == 2
    assert f"--out {target} is an existing file" in capsys.readouterr().err


def test_eval_missing_task_file_fails_before_any_work(tmp_path, no_work, capsys):
    from ternary_hf import cli

    def main(argv):
        return cli.main(["eval", *argv])

    assert main(["--pairs", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- modules_to_not_convert


def test_modules_to_not_convert_typo_names_close_matches(tiny_bert_dir):
    """Before: silently ignored; the layer the user meant to keep was ternarized."""
    with pytest.raises(ValueError, match=r"entry 'poolr' matches no module of BertModel.*Close module names: "
                                         r"pooler"):
        AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(modules_to_not_convert=["poolr"]))


def test_modules_to_not_convert_valid_entries_still_work(tiny_bert_dir):
    model = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig(
        modules_to_not_convert=["pooler", r"encoder.layer.*.output.dense"]))
    assert type(model.pooler.dense).__name__ == "Linear"
    assert type(model.encoder.layer[0].output.dense).__name__ == "Linear"
    assert type(model.encoder.layer[0].intermediate.dense).__name__ == "TernaryLinear"
