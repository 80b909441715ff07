"""Publishing ternary checkpoints: real huggingface_hub / transformers / sentence-transformers clients,
real HTTP, against the local Hub API server of `tests/hub_server.py`."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from hub_server import HubServer, point_client_at  # noqa: E402

import ternary_hf  # noqa: E402
from ternary_hf import hub as th  # noqa: E402

# huggingface_hub's own LFS PUT passes a file object as `data=`, which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

ALICE, BOB = "tok-alice", "tok-bob"
from conftest import TOKENIZER_FILES, write_tiny_wordpiece_bert  # noqa: E402
SENTENCES = ["Ternary weights keep two bits.", "A quick brown fox.", "Search with embeddings"]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hub_server():
    server = HubServer(tokens={ALICE: "alice", BOB: "bob"}).start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    """The server, with huggingface_hub pointed at it, a fresh cache, and alice's token in HF_TOKEN."""
    hub_server.reset_calls()
    point_client_at(hub_server.endpoint, tmp_path / "hf-home", monkeypatch)
    monkeypatch.setenv("HF_TOKEN", ALICE)
    yield hub_server
    # Every request the clients made must be one the server implements (no silent 501 fallbacks).
    assert [str(c) for c in hub_server.calls if c.route.startswith("<")] == []


@pytest.fixture(scope="module")
def fp_dir(tmp_path_factory):
    """A tiny full-precision BERT with the real all-MiniLM-L6-v2 tokenizer (fast to ternarize)."""
    return Path(write_tiny_wordpiece_bert(tmp_path_factory.mktemp("tiny-fp"), initializer_range=0.02))


def load_ternary(path, **kwargs):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), quantization_config=ternary_hf.TernaryConfig(**kwargs)).eval()


@pytest.fixture(scope="module")
def ternary_dir(fp_dir, tmp_path_factory):
    """A saved ternary checkpoint (transformers layout), tokenizer included."""
    out = tmp_path_factory.mktemp("tiny-ternary")
    load_ternary(fp_dir).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copyfile(fp_dir / name, out / name)
    return out


def encode(model, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    with torch.no_grad():
        return model(**tok(SENTENCES, return_tensors="pt", padding=True)).last_hidden_state


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def load_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def routes(calls) -> list[str]:
    return [f"{c.method} {c.route}" for c in calls]


# --------------------------------------------------------------------------- transformers
def test_model_push_to_hub_then_from_pretrained_reproduces_outputs(hub, fp_dir, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModel

    model = th.enable_push_to_hub(load_ternary(fp_dir))
    expected = encode(model, fp_dir)
    commit = model.push_to_hub("alice/tiny-ternary")  # the library method, routed through ternary-hf

    repo = "alice/tiny-ternary"
    assert commit.oid == hub.head(repo)
    stored = hub.files(repo)
    assert {"model.safetensors", "config.json", "README.md", *TOKENIZER_FILES} <= set(stored)
    assert json.loads(stored["config.json"])["quantization_config"]["quant_method"] == "ternary"
    # The packed weights went through LFS (batch + PUT), not inline in the commit.
    weights = hub.file_entry(repo, "model.safetensors")
    assert weights.lfs_oid == hashlib.sha256(stored["model.safetensors"]).hexdigest()
    assert "PUT /lfs-storage/{repo}/{oid}" in routes(hub.calls)
    # The uploaded tensors are what save_pretrained writes locally (safetensors orders its metadata
    # differently on each save, so tensors are compared, not bytes; push_checkpoint's test compares bytes).
    model.save_pretrained(tmp_path / "local")
    uploaded, local = load_safetensors(stored["model.safetensors"]), load_safetensors(
        (tmp_path / "local" / "model.safetensors").read_bytes())
    assert uploaded.keys() == local.keys() and all(torch.equal(uploaded[k], local[k]) for k in local)
    assert any(t.dtype == torch.uint8 for t in uploaded.values())
    for name in TOKENIZER_FILES:
        assert stored[name] == (fp_dir / name).read_bytes()

    reloaded = AutoModel.from_pretrained(repo).eval()
    assert ternary_hf.is_ternary_model(reloaded)
    assert torch.equal(encode(reloaded, fp_dir), expected)
    card = ModelCard.load(repo)
    assert {"ternary", "2-bit", "quantized"} <= set(card.data.tags)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "feature-extraction"
    assert "import ternary_hf" in card.text and f'AutoModel.from_pretrained("{repo}")' in card.text


def test_push_checkpoint_uploads_exact_bytes_through_lfs(hub, ternary_dir):
    repo = "alice/exact-bytes"
    commit = th.push_checkpoint(ternary_dir, repo)

    # The exact sequence of Hub API calls one push makes (documented in the closing note).
    assert routes(hub.calls) == [
        "POST /api/repos/create",
        "GET /api/models/{repo}/revision/{rev}",
        "POST /api/validate-yaml",
        "POST /api/models/{repo}/preupload/{rev}",
        "POST /{repo}.git/info/lfs/objects/batch",
        "PUT /lfs-storage/{repo}/{oid}",
        "POST /lfs-verify/{repo}/{oid}",
        "POST /api/models/{repo}/commit/{rev}",
    ]
    assert all(c.authorized for c in hub.calls if not c.route.startswith("/lfs-storage"))
    stored, local = hub.files(repo), local_files(ternary_dir)
    assert commit.oid == hub.head(repo)
    assert {k: v for k, v in stored.items() if k not in (".gitattributes", "README.md")} == local
    assert hub.file_entry(repo, "model.safetensors").lfs_oid is not None
    assert hub.file_entry(repo, "config.json").lfs_oid is None  # small text files stay regular git blobs
    assert stored["README.md"].decode() == th.render_model_card(ternary_dir, repo_id=repo)

    # Pushing the same folder again sends no file content and creates no empty commit.
    hub.reset_calls()
    again = th.push_checkpoint(ternary_dir, repo)
    assert again.oid == commit.oid == hub.head(repo)
    assert "PUT /lfs-storage/{repo}/{oid}" not in routes(hub.calls)
    assert "POST /api/models/{repo}/commit/{rev}" not in routes(hub.calls)


def test_push_to_branch_and_load_revision(hub, fp_dir, ternary_dir):
    from transformers import AutoModel

    repo = "alice/branches"
    main_commit = th.push_checkpoint(ternary_dir, repo)
    other = load_ternary(fp_dir, granularity="per_tensor", rule="absmean")
    exp_commit = th.push_to_hub(other, repo, revision="experiment")

    assert "POST /api/models/{repo}/branch/{rev}" in routes(hub.calls)
    assert hub.head(repo, "main") == main_commit.oid and hub.head(repo, "experiment") == exp_commit.oid
    on_main = AutoModel.from_pretrained(repo).eval()
    on_branch = AutoModel.from_pretrained(repo, revision="experiment").eval()
    pinned = AutoModel.from_pretrained(repo, revision=main_commit.oid).eval()
    assert on_branch.config.quantization_config.granularity == "per_tensor"
    assert on_main.config.quantization_config.granularity == "per_channel"
    assert torch.equal(encode(on_branch, fp_dir), encode(other, fp_dir))
    assert torch.equal(encode(pinned, fp_dir), encode(on_main, fp_dir))
    assert not torch.equal(encode(on_branch, fp_dir), encode(on_main, fp_dir))


def test_private_repo_push_sends_the_token(hub, ternary_dir, monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError
    from transformers import AutoModel

    monkeypatch.delenv("HF_TOKEN")
    repo = "alice/secret"
    th.push_checkpoint(ternary_dir, repo, private=True, token=ALICE)

    assert hub.repos[repo].private
    writes = [c for c in hub.calls if not c.route.startswith(("/lfs-storage", "/lfs-verify"))]
    assert writes and all(c.authorized for c in writes)
    with pytest.raises((OSError, RepositoryNotFoundError)):
        AutoModel.from_pretrained(repo)  # anonymous: the repo is invisible
    with pytest.raises(th.PushError, match="token was refused"):
        th.push_checkpoint(ternary_dir, repo, token=BOB)  # bob cannot write to alice's repo
    assert ternary_hf.is_ternary_model(AutoModel.from_pretrained(repo, token=ALICE))


def test_missing_token_is_refused_before_any_request(hub, ternary_dir, fp_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match="private repo needs a write token"):
        th.push_checkpoint(ternary_dir, "alice/nope", private=True)
    with pytest.raises(ValueError, match="needs a write token"):
        th.push_to_hub(load_ternary(fp_dir), "alice/nope")
    assert hub.calls == []


@pytest.mark.parametrize("repo_id", ["a/b/c", "alice/bad--name", "alice/with space", "", "alice/x.git"])
def test_invalid_repo_id_is_refused_before_any_request(hub, ternary_dir, repo_id):
    with pytest.raises(ValueError, match="Invalid repo id"):
        th.push_checkpoint(ternary_dir, repo_id)
    assert hub.calls == []


def _corrupt(kind: str, src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    if kind == "truncated safetensors":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) - 64])
    elif kind == "garbage safetensors":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    elif kind == "config not json":
        (dst / "config.json").write_text("{ this is not json")
    elif kind == "no weights":
        weights.unlink()
    elif kind == "unknown quantization field":
        config = json.loads((dst / "config.json").read_text())
        config["quantization_config"]["bits"] = 3
        (dst / "config.json").write_text(json.dumps(config))
    elif kind == "scale shape mismatch":
        config = json.loads((dst / "config.json").read_text())
        config["quantization_config"]["granularity"] = "per_tensor"
        (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("kind,message", [
    ("truncated safetensors", "truncated or corrupt"),
    ("garbage safetensors", "truncated or corrupt"),
    ("config not json", "not valid JSON"),
    ("no weights", "No model.safetensors"),
    ("unknown quantization field", "Unknown TernaryConfig field"),
    ("scale shape mismatch", "weight_scale has shape"),
])
def test_corrupt_checkpoint_is_refused_before_any_request(hub, ternary_dir, tmp_path, kind, message):
    folder = _corrupt(kind, ternary_dir, tmp_path / "ckpt")
    with pytest.raises(th.CheckpointError, match=message):
        th.push_checkpoint(folder, "alice/corrupt")
    assert hub.calls == []


def test_folder_that_is_not_a_ternary_checkpoint_is_refused(hub, fp_dir, tmp_path):
    with pytest.raises(th.CheckpointError, match="not a ternary-hf checkpoint"):
        th.push_checkpoint(fp_dir, "alice/fp32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(th.CheckpointError, match="config.json is missing"):
        th.push_checkpoint(tmp_path / "empty", "alice/empty")
    with pytest.raises(th.CheckpointError, match="not a directory"):
        th.push_checkpoint(tmp_path / "missing", "alice/missing")
    with pytest.raises(th.CheckpointError, match="no ternary layer"):
        from transformers import AutoModel

        th.push_to_hub(AutoModel.from_pretrained(str(fp_dir)), "alice/fp32")
    assert hub.calls == []


# --------------------------------------------------------------------------- failures mid-upload
def test_commit_failure_leaves_repo_unchanged_and_retry_succeeds(hub, fp_dir, ternary_dir, tmp_path):
    repo = "alice/flaky-commit"
    first = th.push_checkpoint(ternary_dir, repo)
    update = tmp_path / "update"
    load_ternary(fp_dir, rule="paper").save_pretrained(update)

    hub.fail("/commit/", status=500)
    with pytest.raises(th.PushError) as err:
        th.push_checkpoint(update, repo)
    message = str(err.value)
    assert "500" in message and "uploading" in message
    assert f"Nothing was committed: main is still at {first.oid[:12]}" in message and "again to retry" in message
    assert hub.head(repo) == first.oid
    assert len(hub.repos[repo].commits) == 2  # initial commit + first push, nothing half-written

    hub.reset_calls()
    retry = th.push_checkpoint(update, repo)
    assert hub.head(repo) == retry.oid != first.oid
    assert "PUT /lfs-storage/{repo}/{oid}" not in routes(hub.calls)  # the LFS object survived the failed commit
    assert json.loads(hub.files(repo)["config.json"])["quantization_config"]["rule"] == "paper"
    assert hub.files(repo)["model.safetensors"] == (update / "model.safetensors").read_bytes()


def test_lfs_upload_failure_leaves_repo_unchanged_and_retry_succeeds(hub, fp_dir, ternary_dir):
    repo = "alice/flaky-lfs"
    first = th.push_checkpoint(ternary_dir, repo)
    update = load_ternary(fp_dir, rule="absmean")

    hub.reset_calls()
    hub.fail("/lfs-storage/", status=507)  # storage refuses the object (not retried by the client)
    with pytest.raises(th.PushError, match="model.safetensors") as err:
        th.push_to_hub(update, repo)
    assert "Nothing was committed" in str(err.value)
    assert hub.head(repo) == first.oid
    assert "POST /api/models/{repo}/commit/{rev}" not in routes(hub.calls)

    hub.reset_calls()
    hub.fail("/lfs-storage/", status=503)  # a transient error is retried by huggingface_hub itself
    retry = th.push_to_hub(update, repo)
    assert hub.head(repo) == retry.oid
    assert [c.status for c in hub.calls if c.route == "/lfs-storage/{repo}/{oid}"] == [503, 200]
    stored = hub.files(repo)["model.safetensors"]
    assert hub.file_entry(repo, "model.safetensors").lfs_oid == hashlib.sha256(stored).hexdigest()


# --------------------------------------------------------------------------- sentence-transformers
@pytest.fixture(scope="module")
def st_model(fp_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(fp_dir), device="cpu",
                               model_kwargs={"quantization_config": ternary_hf.TernaryConfig()})


def test_sentence_transformer_push_and_reload(hub, st_model):
    from sentence_transformers import SentenceTransformer

    repo = "alice/tiny-st"
    expected = st_model.encode(SENTENCES, convert_to_tensor=True)
    url = st_model.push_to_hub(repo)  # sentence-transformers' own push: its save path writes packed weights
    assert hub.head(repo) in url

    stored = hub.files(repo)
    assert {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "model.safetensors",
            "config.json", "1_Pooling/config.json", "README.md", "tokenizer.json"} <= set(stored)
    assert json.loads(stored["config.json"])["quantization_config"]["quant_method"] == "ternary"
    assert hub.file_entry(repo, "model.safetensors").lfs_oid is not None

    reloaded = SentenceTransformer(repo, device="cpu")
    assert ternary_hf.is_ternary_model(reloaded)
    assert torch.equal(reloaded.encode(SENTENCES, convert_to_tensor=True), expected)


def test_sentence_transformer_ternary_card_on_a_branch(hub, st_model):
    from huggingface_hub import EvalResult, ModelCard, hf_hub_download
    from sentence_transformers import SentenceTransformer

    repo = "alice/tiny-st-card"
    card = th.CardInfo(
        base_model="sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0",
        eval_results=[EvalResult(task_type="sentence-similarity", dataset_type="mteb/stsbenchmark-sts",
                                 dataset_name="STS Benchmark", dataset_split="test", metric_type="spearman",
                                 metric_value=0.79)],
        fp32_eval_results=[{"task_type": "sentence-similarity", "dataset_type": "mteb/stsbenchmark-sts",
                            "dataset_name": "STS Benchmark", "dataset_split": "test", "metric_type": "spearman",
                            "metric_value": 0.82}],
        distillation={"teacher": "frozen fp32 copy", "loss": "MSE on last_hidden_state", "steps": 2000},
    )
    model = th.enable_push_to_hub(copy.deepcopy(st_model), card=card)
    model.push_to_hub(repo, revision="v1")

    assert "main" in hub.repos[repo].branches and "README.md" not in hub.files(repo, "main")
    loaded = ModelCard.load(hf_hub_download(repo, "README.md", revision="v1"))
    data = loaded.data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and data.base_model_relation == "quantized"
    assert data.library_name == "sentence-transformers" and data.pipeline_tag == "sentence-similarity"
    assert {"ternary", "2-bit", "quantized", "sentence-transformers"} <= set(data.tags)
    (result,) = data.eval_results
    assert (result.dataset_type, result.metric_type, result.metric_value) == ("mteb/stsbenchmark-sts", "spearman", 0.79)
    assert "96.3%" in loaded.text  # 0.79 / 0.82 retained
    assert "MSE on last_hidden_state" in loaded.text
    assert f'SentenceTransformer("{repo}")' in loaded.text and "pip install" in loaded.text
    fp = ternary_hf.footprint(model)
    assert "ratio to fp32" in loaded.text and "2-bit" in loaded.text and fp.packed_weights > 0

    reloaded = SentenceTransformer(repo, revision="v1", device="cpu")
    assert torch.equal(reloaded.encode(SENTENCES, convert_to_tensor=True),
                       st_model.encode(SENTENCES, convert_to_tensor=True))


def test_readme_policy_replaces_foreign_cards_and_keeps_ternary_ones(hub, st_model, tmp_path):
    from huggingface_hub import ModelCard

    folder = tmp_path / "st"
    st_model.save(str(folder))  # sentence-transformers writes its own README, which knows nothing of ternary
    assert "ternary-hf" not in (ModelCard.load(folder / "README.md").data.tags or [])
    th.push_checkpoint(folder, "alice/policy")
    uploaded = hub.files("alice/policy")["README.md"].decode()
    assert "ternary-hf" in ModelCard(uploaded).data.tags
    assert uploaded == th.render_model_card(folder, repo_id="alice/policy")

    edited = uploaded.replace("## Limitations", "## Notes from the author\n\nHand-written.\n\n## Limitations")
    (folder / "README.md").write_text(edited)
    th.push_checkpoint(folder, "alice/policy")  # auto: an edited ternary card is kept as is
    assert hub.files("alice/policy")["README.md"].decode() == edited
    th.push_checkpoint(folder, "alice/policy", readme="generate")
    assert hub.files("alice/policy")["README.md"].decode() == uploaded


# --------------------------------------------------------------------------- card without pushing, CLI
def test_render_model_card_without_pushing(ternary_dir):
    from huggingface_hub import ModelCard

    text = th.render_model_card(ternary_dir, repo_id="me/tiny", card=th.CardInfo(base_model="org/base"))
    card = ModelCard(text)
    assert card.data.base_model == "org/base" and card.data.library_name == "transformers"
    fp = ternary_hf.footprint(ternary_dir)
    assert f"| **total** | {fp.total:,} |" in text and f"| fp32 checkpoint | {fp.fp32_bytes:,} |" in text
    from safetensors import safe_open

    with safe_open(str(ternary_dir / "model.safetensors"), "pt") as f:
        n_layers = sum(k.endswith(".weight_scale") for k in f.keys())
    assert n_layers == 13 and f"ternarized Linear layers | {n_layers} |" in text  # 2 x 6 per block + pooler
    assert "## Evaluation" not in text and "## Distillation recipe" not in text
    assert 'AutoTokenizer.from_pretrained("me/tiny")' in text


def test_cli_push(hub, ternary_dir, tmp_path, capsys, monkeypatch):
    from ternary_hf import cli

    evals = tmp_path / "evals.json"
    evals.write_text(json.dumps([{"task_type": "feature-extraction", "dataset_type": "x/y", "dataset_name": "Y",
                                  "metric_type": "ndcg_at_10", "metric_value": 0.5}]))
    assert cli.main(["push", str(ternary_dir), "alice/cli", "--dry-run", "--eval-results", str(evals)]) == 0
    assert "ndcg_at_10" in capsys.readouterr().out and hub.calls == []

    monkeypatch.delenv("HF_TOKEN")
    assert cli.main(["push", str(ternary_dir), "alice/cli", "--private", "--revision", "dev", "--token", ALICE,
                      "--base-model", "org/base"]) == 0
    assert "alice/cli@dev" in capsys.readouterr().out
    assert hub.repos["alice/cli"].private and "model.safetensors" in hub.files("alice/cli", "dev")

    assert cli.main(["push", str(tmp_path), "alice/cli"]) == 1
    assert "config.json is missing" in capsys.readouterr().err


def test_enable_push_to_hub_survives_deepcopy(fp_dir):
    model = th.enable_push_to_hub(load_ternary(fp_dir))
    clone = copy.deepcopy(model)
    assert clone.push_to_hub.args[0] is clone and model.push_to_hub.args[0] is model
    assert "ternary" in model.model_tags
