"""Whole-model compression: embedding formats (int8 / int4 / ternary), vocabulary pruning, PCA output
dimension, footprint/card reporting and the `quantize` CLI options, on tiny models (one MiniLM check)."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModel, AutoTokenizer, BertForMaskedLM

import ternary_hf
from ternary_hf import TernaryConfig
from ternary_hf.embedding import QuantizedEmbedding, dequantize_rows, quantize_rows
from ternary_hf.ternarize import ternarize
from ternary_hf.vocab import VocabularyMismatchError, check_tokenizer, prune_vocabulary

from conftest import TOKENIZER_FILES, tiny_bert_config, write_tiny_wordpiece_bert

KINDS = ("int8", "int4", "ternary")

CORPUS = [
    "the cat sat on the mat", "a dog runs in the park", "birds fly over the river at dawn",
    "the old man reads a book", "children play football after school", "rain falls on the quiet town",
    "she plays the piano every evening", "the train leaves the station at noon",
    "a small boat sails across the lake", "the garden is full of red roses",
] * 3


def _config(kind: str, **kw) -> TernaryConfig:
    return TernaryConfig(embedding_dtype=kind, embedding_group_size=16, activation_quant="none", **kw)


def _ids(n: int = 120) -> torch.Tensor:
    return torch.randint(0, n, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny_wordpiece_dir(tmp_path_factory):
    """A random 2-layer, 32-wide BertModel with MiniLM's real WordPiece tokenizer (30,522 tokens)."""
    return write_tiny_wordpiece_bert(tmp_path_factory.mktemp("tiny_wordpiece"), max_position_embeddings=64)


def _ternary_st(path: str, kind: str = "float"):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(path, model_kwargs={"quantization_config": _config(kind)})
    return SentenceTransformer(modules=[transformer, Pooling(32), Normalize()], device="cpu")


# ---------------------------------------------------------------- embedding formats


@pytest.mark.parametrize("kind", KINDS)
def test_embedding_format_round_trip_is_bit_identical(kind, tiny_bert_dir, tmp_path):
    fp = AutoModel.from_pretrained(tiny_bert_dir)
    q = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=_config(kind))
    table = q.embeddings.word_embeddings
    assert isinstance(table, QuantizedEmbedding) and table.kind == kind
    w = fp.embeddings.word_embeddings.weight
    deq = table.dequantized_weight()
    if kind == "int4":  # error of round-to-nearest: half a step of each group's scale
        step = table.weight_scale.repeat_interleave(16, dim=1)
        assert table.weight.shape == (120, 16) and table.weight_scale.shape == (120, 2)
        assert ((deq - w).abs() <= step / 2 + 1e-6).all()
    elif kind == "ternary":  # exactly the per-row ternarization rule, packed 4 codes per byte
        codes, scale = ternarize(w, "twn", "per_channel")
        assert table.weight.shape == (120, 8)
        torch.testing.assert_close(deq, codes.float() * scale[:, None])
    q.save_pretrained(tmp_path)
    q2 = AutoModel.from_pretrained(tmp_path)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        a, b = getattr(q.embeddings, name), getattr(q2.embeddings, name)
        assert isinstance(b, QuantizedEmbedding) and b.kind == kind
        assert torch.equal(a.weight, b.weight) and torch.equal(a.weight_scale, b.weight_scale)
    x = _ids()
    assert torch.equal(q(x).last_hidden_state, q2(x).last_hidden_state)
    from_model, from_path = ternary_hf.footprint(q), ternary_hf.footprint(tmp_path)
    assert from_model.embedding_tables == from_path.embedding_tables and set(from_path.embedding_tables) == {kind}
    assert from_model.total == from_path.total
    assert from_path.fp32_bytes == pytest.approx(ternary_hf.footprint(tiny_bert_dir).fp32_bytes, rel=0.01)
    assert f"tables stored {kind}" in from_path.to_markdown()
    # dequantize() gives the same function in float
    torch.testing.assert_close(q2.dequantize()(x).last_hidden_state, q(x).last_hidden_state, rtol=0, atol=1e-5)


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kind", KINDS)
def test_lookup_dequantizes_only_the_rows_it_returns(kind, monkeypatch):
    table = QuantizedEmbedding.from_embedding(nn.Embedding(4000, 64), kind, group_size=16)
    ids = torch.tensor([[0, 5, 3999, 17], [2, 2, 8, 1000]])
    expected = table.dequantized_weight()[ids]
    monkeypatch.setattr(QuantizedEmbedding, "dequantized_weight", lambda *a, **k: pytest.fail("whole table built"))
    with _LargestOutput() as probe:
        out = table(ids)
    assert torch.equal(out, expected)
    assert probe.largest <= ids.numel() * 64  # no intermediate anywhere near the 4000 x 64 table


def test_zero_rows_stay_zero_and_layout_errors_name_the_problem():
    w = torch.randn(6, 32)
    w[0] = 0
    for kind in KINDS:
        codes, scale = quantize_rows(w, kind, group_size=16)
        assert torch.equal(dequantize_rows(codes[:1], scale[:1], kind, 32, torch.float32), torch.zeros(1, 32))
    with pytest.raises(ValueError, match="not divisible by TernaryConfig.embedding_group_size=24"):
        quantize_rows(w, "int4", group_size=24)
    with pytest.raises(ValueError, match="embedding_group_size must be an even integer"):
        TernaryConfig(embedding_group_size=3)
    with pytest.raises(ValueError, match="embedding_dtype='int2' is invalid"):
        TernaryConfig(embedding_dtype="int2")


def test_config_disagreeing_with_stored_tables_is_refused(tiny_bert_dir, tmp_path):
    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=_config("int4")).save_pretrained(tmp_path)
    cfg_file = tmp_path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["quantization_config"]["embedding_group_size"] = 8
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"disagrees with the weights .*embedding_group_size=8 \(weights: 16\)"):
        AutoModel.from_pretrained(tmp_path)


def test_post_training_embedding_quantization_of_a_packed_checkpoint(tiny_bert_dir, tmp_path):
    from ternary_hf.integration import quantize_embeddings

    AutoModel.from_pretrained(tiny_bert_dir, quantization_config=_config("float")).save_pretrained(tmp_path / "a")
    m = AutoModel.from_pretrained(tmp_path / "a")
    assert type(m.embeddings.word_embeddings) is nn.Embedding
    names = quantize_embeddings(m, "int4", 16)
    assert "embeddings.word_embeddings" in names and m.config.quantization_config.embedding_dtype == "int4"
    m.save_pretrained(tmp_path / "b")
    m2 = AutoModel.from_pretrained(tmp_path / "b")
    assert m2.embeddings.word_embeddings.kind == "int4"
    x = _ids()
    assert torch.equal(m(x).last_hidden_state, m2(x).last_hidden_state)
    with pytest.raises(ValueError, match="already stored as int4"):
        quantize_embeddings(m2, "ternary")


@pytest.mark.parametrize("kind", ["int4", "ternary"])
def test_qat_keeps_float_tables_and_saves_them_quantized(kind, tiny_bert_dir, tmp_path):
    q = AutoModel.from_pretrained(tiny_bert_dir, quantization_config=_config(kind, mode="qat"))
    assert type(q.embeddings.word_embeddings) is nn.Embedding  # trainable while distilling
    q.save_pretrained(tmp_path)
    table = AutoModel.from_pretrained(tmp_path).embeddings.word_embeddings
    assert isinstance(table, QuantizedEmbedding) and table.kind == kind
    codes, scale = quantize_rows(q.embeddings.word_embeddings.weight, kind, group_size=16)
    assert torch.equal(table.weight, codes) and torch.equal(table.weight_scale, scale)


def test_tied_tables_stay_float_with_a_warning(tmp_path, caplog):
    BertForMaskedLM(tiny_bert_config()).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ternary_hf.integration"):
        m = BertForMaskedLM.from_pretrained(tmp_path, quantization_config=_config("int4"))
    assert type(m.bert.embeddings.word_embeddings) is nn.Embedding
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight
    assert isinstance(m.bert.embeddings.position_embeddings, QuantizedEmbedding)
    assert "'bert.embeddings.word_embeddings' is tied to the output layer" in caplog.text


# ---------------------------------------------------------------- vocabulary pruning


@pytest.mark.parametrize("kind", ["float", "int4"])
def test_pruned_model_and_tokenizer_equal_the_original_on_covered_text(kind, tiny_wordpiece_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    st = _ternary_st(tiny_wordpiece_dir, kind)
    texts = ["the cat sat on the mat", "children play football after school", "a small boat sails"]
    original_tokenizer = st[0].tokenizer
    before = st.encode(texts, convert_to_tensor=True)
    report = prune_vocabulary(st, CORPUS, tmp_path, eval_texts=texts, warn_below=0.0)
    assert report.coverage == 1.0 and report.eval_coverage == 1.0 and report.heldout_coverage is not None
    pruned = SentenceTransformer(str(tmp_path), device="cpu")
    table = pruned[0].auto_model.embeddings.word_embeddings
    kept = json.loads((tmp_path / "kept_token_ids.json").read_text())
    assert table.num_embeddings == len(kept) == report.kept < 3000  # specials + characters + corpus words
    assert pruned[0].auto_model.config.vocab_size == len(kept)
    assert (kind == "float") == (type(table) is nn.Embedding)
    assert table.vocab_rows.shape == (30522,) and int((table.vocab_rows >= 0).sum()) == len(kept)
    tok = pruned[0].tokenizer
    assert len(tok) == 30522  # the original id space: pruned tokens are unmatchable placeholders
    for text in texts:  # same pieces, same ids
        assert tok(text)["input_ids"] == original_tokenizer(text)["input_ids"]
    assert torch.equal(pruned.encode(texts, convert_to_tensor=True), before)
    assert tok("zyzzyva quux")["input_ids"].count(tok.unk_token_id) == 0  # unseen words split into characters
    size = ternary_hf.footprint(tmp_path)
    assert (size.vocab_size, size.original_vocab_size) == (len(kept), 30522)
    assert f"{len(kept):,} of 30,522 tokens" in size.to_markdown()
    card = ternary_hf.render_model_card(tmp_path)
    assert "pruned to" in card and (kind == "float" or "stored int4" in card)


def test_pruned_model_reads_the_original_tokenizer_or_refuses_it(tiny_wordpiece_dir, tmp_path):
    """Issue 19: the original tokenizer gave silently wrong embeddings for ids inside the pruned table. Now
    both tokenizers share the original id space: covered text embeds exactly, pruned ids raise."""
    st = _ternary_st(tiny_wordpiece_dir)
    texts = ["the cat sat on the mat", "a dog runs in the park"]
    with torch.no_grad():
        before = st[0].auto_model(**st[0].tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state
    prune_vocabulary(st, CORPUS, tmp_path / "pruned", warn_below=0.0)
    original = AutoTokenizer.from_pretrained(tiny_wordpiece_dir)
    model = AutoModel.from_pretrained(tmp_path / "pruned")
    check_tokenizer(model, original)  # same id space: accepted
    check_tokenizer(model, AutoTokenizer.from_pretrained(tmp_path / "pruned"))
    with torch.no_grad():
        after = model(**original(texts, padding=True, return_tensors="pt")).last_hidden_state
    assert torch.equal(after, before)  # "a" / "the" were misread before (ids inside the pruned table)
    ids = original(["zebras quarrel"], return_tensors="pt")["input_ids"]  # words outside the corpus
    with pytest.raises(VocabularyMismatchError, match=r"were pruned from this model's vocabulary"):
        model(input_ids=ids)
    with pytest.raises(VocabularyMismatchError, match="outside this model's vocabulary"):
        model(input_ids=torch.tensor([[101, 40000, 102]]))
    # The original tokenizer files next to the pruned weights: accepted (same id space).
    shutil.copytree(tmp_path / "pruned", tmp_path / "mixed")
    for name in TOKENIZER_FILES:
        if (Path(tiny_wordpiece_dir) / name).is_file():
            shutil.copy(Path(tiny_wordpiece_dir) / name, tmp_path / "mixed" / name)
    AutoModel.from_pretrained(tmp_path / "mixed")
    # A tokenizer of another vocabulary: refused at load and by check_tokenizer.
    other = json.loads((tmp_path / "mixed" / "tokenizer.json").read_text())
    vocab = other["model"]["vocab"]
    vocab["zzzz"], vocab["the"] = vocab.pop("the"), vocab.pop("zzzz", len(vocab))
    (tmp_path / "mixed" / "tokenizer.json").write_text(json.dumps(other))
    with pytest.raises(VocabularyMismatchError, match="does not match this model's pruned vocabulary"):
        AutoModel.from_pretrained(tmp_path / "mixed")


def test_pruned_id_map_survives_quantizing_and_dequantizing_the_table(tiny_wordpiece_dir, tmp_path):
    from ternary_hf.integration import dequantize_modules, quantize_embeddings

    st = _ternary_st(tiny_wordpiece_dir)
    prune_vocabulary(st, CORPUS, tmp_path / "pruned", warn_below=0.0)
    model = AutoModel.from_pretrained(tmp_path / "pruned")
    ids = AutoTokenizer.from_pretrained(tiny_wordpiece_dir)(["the cat"], return_tensors="pt")["input_ids"]
    for change in (lambda m: quantize_embeddings(m, "int8"), dequantize_modules):
        change(model)
        table = model.get_input_embeddings()
        assert table.vocab_rows.shape == (30522,)
        model(input_ids=ids)
        with pytest.raises(VocabularyMismatchError, match="were pruned"):
            model(input_ids=torch.tensor([[101, 29000, 102]]))


def test_pruning_needs_a_ternary_model(tiny_wordpiece_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    st = SentenceTransformer(modules=[Transformer(tiny_wordpiece_dir), Pooling(32)], device="cpu")
    with pytest.raises(ValueError, match="needs a ternary model"):
        prune_vocabulary(st, CORPUS, tmp_path / "pruned", warn_below=0.0)


def test_low_coverage_warns_with_the_coverage(tiny_wordpiece_dir, tmp_path):
    st = _ternary_st(tiny_wordpiece_dir)
    corpus = [f"word{i} apple banana" for i in range(30)] + ["cherry"]
    with pytest.warns(UserWarning, match=r"covers only \d+\.\d+% of the (held-out corpus|eval texts) tokens"):
        report = prune_vocabulary(st, corpus, tmp_path, eval_texts=["the quick brown fox jumps over the lazy dog"])
    assert report.eval_coverage < 0.99 and report.warnings


def test_pruning_refuses_a_tied_output_head_and_non_wordpiece_tokenizers(tmp_path):
    from ternary_hf.vocab import _prune_table, _wordpiece_json

    with pytest.raises(ValueError, match="output embedding layer"):
        _prune_table(BertForMaskedLM(tiny_bert_config()), [0, 1, 2])

    class Fake:
        class backend_tokenizer:
            @staticmethod
            def to_str():
                return json.dumps({"model": {"type": "Unigram"}})

    with pytest.raises(ValueError, match="supports WordPiece"):
        _wordpiece_json(Fake())


# ---------------------------------------------------------------- output dimension


def test_pca_output_dimension_survives_save_and_load(tiny_wordpiece_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from ternary_hf.dimension import project_with_head, reduce_output_dimension

    st = _ternary_st(tiny_wordpiece_dir)
    full = st.encode(CORPUS[:10], convert_to_tensor=True)
    report = reduce_output_dimension(st, CORPUS, 8, out_dir=tmp_path)
    assert report.output_dim == 8 and 0 < report.explained_variance <= 1
    reduced = st.encode(CORPUS[:10], convert_to_tensor=True)
    loaded = SentenceTransformer(str(tmp_path), device="cpu")
    out = loaded.encode(CORPUS[:10], convert_to_tensor=True)
    assert out.shape == (10, 8) and loaded.get_embedding_dimension() == 8
    torch.testing.assert_close(out, reduced)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(project_with_head(loaded, full), out, rtol=1e-4, atol=1e-5)
    size = ternary_hf.footprint(tmp_path)
    assert size.output_dim == 8 and size.heads > 0 and "output dimension | 8 (reduced from 32)" in size.to_markdown()
    with pytest.raises(ValueError, match="at least 31 texts"):
        reduce_output_dimension(_ternary_st(tiny_wordpiece_dir), CORPUS[:5], 31)


# ---------------------------------------------------------------- CLI and the real model


def test_quantize_cli_compresses_with_every_option(tiny_wordpiece_dir, tmp_path, capsys):
    import argparse

    from ternary_hf.commands import quantize

    st_dir = tmp_path / "st"
    _ternary_st(tiny_wordpiece_dir).save(str(st_dir))  # an already-ternary checkpoint, like a distilled one
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    parser = argparse.ArgumentParser()
    quantize.register(parser.add_subparsers())
    args = parser.parse_args(["quantize", str(st_dir), "--output-dir", str(tmp_path / "out"), "--embedding-dtype", "int4",
                              "--embedding-group-size", "16", "--prune-vocab", str(corpus), "--output-dim", "8",
                              "--n-texts", "16", "--baseline", str(st_dir)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "already ternary" in out and "vocabulary: kept" in out and "PCA 32 -> 8" in out
    report = json.loads((tmp_path / "out" / "ternary_report.json").read_text())
    assert report["config"]["embedding_dtype"] == "int4" and report["footprint"]["output_dim"] == 8
    assert report["footprint"]["original_vocab_size"] == 30522 and report["vocabulary"]["kept"] < 3000
    # the fidelity sentences are mostly outside the tiny corpus: the report says so
    assert report["vocabulary"]["eval_coverage"] < 0.99 and report["vocabulary"]["warnings"]
    assert 0 < report["fidelity"]["mean_cosine"] <= 1


def test_minilm_int4_and_pruned_vocabulary_reach_a_tenth_of_fp32(minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    from ternary_hf.compress import compress, load_ternary_sentence_transformer
    from ternary_hf.training.data import wikipedia_paragraphs

    corpus = wikipedia_paragraphs()[:400]  # training-side text (bundled with gensim)
    st = load_ternary_sentence_transformer(minilm_path, TernaryConfig(embedding_dtype="int4"))
    covered = [p.split(". ")[0] for p in corpus[:4]]  # whole words of the corpus
    from ternary_hf.kernels.fused_model import whole_model

    with whole_model(False):  # a pruned model runs the per-layer path (its id map); compare on the same path
        before = st.encode(covered, convert_to_tensor=True)
    result = compress(st, tmp_path, prune_corpus=corpus)
    size = ternary_hf.footprint(tmp_path)
    fp32_file = (Path(minilm_path) / "model.safetensors").stat().st_size
    assert size.file_bytes / fp32_file < 0.10 and result.vocabulary.kept < 20000
    assert set(size.embedding_tables) == {"int4"} and size.original_vocab_size == 30522
    after = SentenceTransformer(str(tmp_path), device="cpu").encode(covered, convert_to_tensor=True)
    assert torch.equal(after, before)
