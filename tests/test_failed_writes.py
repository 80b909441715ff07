"""No failure leaves a half-written model: every command that writes a model stages it in a temporary folder.

A full disk is simulated by making transformers' safetensors writer write half a file and raise ENOSPC.
"""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import types
from pathlib import Path

import pytest
from safetensors.torch import save_file
from transformers import AutoModel

from ternary_hf import TernaryConfig

from test_compression import CORPUS, _ternary_st, tiny_wordpiece_dir  # noqa: F401  (fixture)


def _full_disk(monkeypatch):
    """transformers' `save_pretrained` writes half of the first weight file, then the disk is full."""
    import transformers.modeling_utils as mu

    def save_half(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(mu, "safe_save_file", save_half)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def _quantize(argv: list[str]) -> int:
    from ternary_hf.commands import quantize

    parser = argparse.ArgumentParser()
    quantize.register(parser.add_subparsers())
    args = parser.parse_args(["quantize", *argv])
    return args.func(args)


@pytest.fixture()
def st_dir(tiny_wordpiece_dir, tmp_path):  # noqa: F811
    out = tmp_path / "st"
    _ternary_st(tiny_wordpiece_dir).save(str(out))  # an already-ternary checkpoint, like a distilled one
    return out


def test_quantize_in_place_on_a_full_disk_leaves_the_model_as_it_was(st_dir, monkeypatch):
    """Before: config.json said embedding_dtype int8 over the old float weights, and it loaded silently."""
    before = _snapshot(st_dir)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        _quantize([str(st_dir), "--output-dir", str(st_dir), "--embedding-dtype", "int8", "--n-texts", "8",
                   "--baseline", str(st_dir)])
    assert _snapshot(st_dir) == before
    _no_leftovers(st_dir.parent)


def test_quantize_out_of_place_on_a_full_disk_leaves_no_folder(st_dir, tmp_path, monkeypatch):
    """Before: a folder with config files and no weights, which looks like a model."""
    out = tmp_path / "out"
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        _quantize([str(st_dir), "--output-dir", str(out), "--embedding-dtype", "int8", "--n-texts", "8",
                   "--baseline", str(st_dir)])
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_quantize_in_place_succeeds_and_replaces_the_folder(st_dir):
    assert _quantize([str(st_dir), "--output-dir", str(st_dir), "--embedding-dtype", "int8", "--n-texts", "8",
                      "--baseline", str(st_dir)]) == 0
    config = json.loads((st_dir / "config.json").read_text())
    assert config["quantization_config"]["embedding_dtype"] == "int8"
    assert (st_dir / "ternary_report.json").is_file() and (st_dir / "README.md").is_file()
    from ternary_hf.checkpoint import inspect_checkpoint

    inspect_checkpoint(st_dir)
    _no_leftovers(st_dir.parent)


@pytest.mark.parametrize("prune", [False, True])
def test_compress_on_a_full_disk_keeps_the_previous_output(st_dir, tmp_path, monkeypatch, prune):
    from ternary_hf.compress import compress, load_ternary_sentence_transformer

    out = tmp_path / "small"
    compress(load_ternary_sentence_transformer(st_dir), out)  # a previous, complete output
    before = _snapshot(out)
    model = load_ternary_sentence_transformer(st_dir)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        compress(model, out, embedding_dtype="int8", prune_corpus=CORPUS if prune else None)
    assert _snapshot(out) == before
    _no_leftovers(tmp_path)


def test_save_for_push_on_a_full_disk_leaves_the_folder(tiny_bert_dir, tmp_path, monkeypatch):
    from ternary_hf.hub import save_for_push

    model = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=TernaryConfig())
    target = tmp_path / "staging"
    save_for_push(model, target)
    before = _snapshot(target)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        save_for_push(model, target)
    assert _snapshot(target) == before
    _no_leftovers(tmp_path)


class _Trainer:
    """What `save_final_model` uses of a Trainer: `args.should_save` and `save_model(path)`."""

    def __init__(self, fail: bool):
        self.args = types.SimpleNamespace(should_save=True)
        self.fail = fail

    def save_model(self, path):
        Path(path, "config.json").write_text('{"new": true}')
        (Path(path) / "1_Pooling").mkdir()
        Path(path, "1_Pooling", "config.json").write_text("{}")
        if self.fail:
            Path(path, "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        Path(path, "model.safetensors").write_bytes(b"new weights")


@pytest.mark.parametrize("fail", [True, False])
def test_distill_final_save_is_staged(tmp_path, fail):
    from ternary_hf.training.recipe import save_final_model

    out = tmp_path / "run"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "latent.safetensors").write_bytes(b"resumable")
    (out / "config.json").write_text('{"old": true}')
    (out / "model.safetensors").write_bytes(b"old weights")
    before = _snapshot(out)
    if fail:
        with pytest.raises(OSError, match="No space left"):
            save_final_model(_Trainer(fail), str(out))
        assert _snapshot(out) == before
    else:
        save_final_model(_Trainer(fail), str(out))
        after = _snapshot(out)
        assert after["model.safetensors"] == b"new weights" and after["config.json"] == b'{"new": true}'
        assert after["checkpoint-10/latent.safetensors"] == b"resumable" and "1_Pooling/config.json" in after
    _no_leftovers(tmp_path)


def test_prune_vocabulary_on_a_full_disk_leaves_no_folder(st_dir, tmp_path, monkeypatch):
    from ternary_hf.compress import load_ternary_sentence_transformer
    from ternary_hf.vocab import prune_vocabulary

    model = load_ternary_sentence_transformer(st_dir)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        prune_vocabulary(model, CORPUS, tmp_path / "pruned", warn_below=0.0)
    assert not (tmp_path / "pruned").exists()
    _no_leftovers(tmp_path)


def test_two_writers_of_one_folder_never_mix(st_dir, tmp_path):
    """Concurrent writers: each stages its own folder; the last to finish wins whole."""
    import threading

    from ternary_hf.compress import compress, load_ternary_sentence_transformer

    out = tmp_path / "shared"
    models = {kind: load_ternary_sentence_transformer(st_dir) for kind in ("int8", "int4")}
    errors = []

    def write(kind):
        try:
            compress(models[kind], out, embedding_dtype=kind, embedding_group_size=16)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    config = json.loads((out / "config.json").read_text())
    kind = config["quantization_config"]["embedding_dtype"]
    from ternary_hf.checkpoint import inspect_checkpoint

    inspect_checkpoint(out)  # the weights verify against their own hashes: one writer's complete output
    from sentence_transformers import SentenceTransformer

    loaded = SentenceTransformer(str(out), device="cpu")
    assert loaded[0].auto_model.config.quantization_config.embedding_dtype == kind
    shutil.rmtree(out)
