"""Publishing ternary checkpoints on the Hugging Face Hub: validate, write a model card, upload.

Three entry points, all ending in the same checked upload:

- `push_checkpoint(local_dir, repo_id)` uploads a saved ternary checkpoint (transformers or
  sentence-transformers layout) — what `ternary-hf push` runs.
- `push_to_hub(model, repo_id)` saves a loaded ternary model (transformers `PreTrainedModel` or
  `SentenceTransformer`) to a temporary directory, then pushes it like `push_checkpoint`.
- `enable_push_to_hub(model)` makes the model's own `model.push_to_hub(...)` go through
  `push_to_hub`, so the library method also uploads the ternary model card.

Everything that can be checked locally is checked before the first request: the repo id, the
token, and that the folder is an intact ternary checkpoint (`checkpoint.inspect_checkpoint`: config
with a `ternary` `quantization_config`, readable safetensors whose content hashes match, packed
`uint8` weights with valid codes and finite scales of matching shapes).
The upload is one commit on top of the branch head seen before uploading (`parent_commit`),
so a failure leaves the repo at its previous commit and re-running the push is the retry.

The model card (`build_model_card` / `render_model_card`, usable without pushing) is rendered
from the package's `templates/ternary_model_card.md` through `huggingface_hub.ModelCard.from_template`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import get_token, validate_repo_id

from .resources import model_card_template
from .checkpoint import CheckpointError, CheckpointInfo, inspect_checkpoint, seal_module_weights  # noqa: F401
from .fileio import staged_directory

logger = logging.getLogger(__name__)

TERNARY_TAGS = ("ternary", "2-bit", "quantized", "ternary-hf")
SENTENCE_TRANSFORMERS_TAGS = ("sentence-transformers", "feature-extraction", "sentence-similarity")
# Files that carry a model's preprocessing, copied next to the weights when a bare transformers
# model is pushed (transformers' own push_to_hub leaves them out).
PREPROCESSING_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
    "preprocessor_config.json", "processor_config.json", "chat_template.jinja",
)
# Local files never uploaded from a checkpoint folder.
_SKIPPED_DIRS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}


class PushError(RuntimeError):
    """The upload failed on the Hub side; says at which step and where the repo was left."""


# --------------------------------------------------------------------------- model card
@dataclass
class CardInfo:
    """What the model card says beyond what the checkpoint itself tells.

    Every field is optional; sections without data are left out of the card.
    """

    base_model: str | None = None  # Hub id of the full-precision model this one was ternarized from
    model_name: str | None = None  # title of the card; defaults to the repo name
    eval_results: Sequence[EvalResult | Mapping] = ()  # ternary model results (huggingface_hub.EvalResult fields)
    fp32_eval_results: Sequence[EvalResult | Mapping] = ()  # same metrics for the fp32 base, shown side by side
    distillation: Mapping[str, Any] | Any | None = None  # recipe (mapping or dataclass): teacher, loss, data, steps...
    license: str | None = None
    language: str | list[str] | None = None
    datasets: list[str] | None = None  # training / distillation data sets (Hub ids)
    pipeline_tag: str | None = None  # overrides the one inferred from the checkpoint
    tags: Sequence[str] = ()  # extra tags, added to the ternary ones
    description: str | None = None  # a paragraph placed under the title


def _as_eval_result(result: EvalResult | Mapping) -> EvalResult:
    if isinstance(result, EvalResult):
        return result
    if isinstance(result, Mapping):
        return EvalResult(**result)
    raise TypeError(f"Evaluation results must be huggingface_hub.EvalResult or dicts of its fields, got {result!r}.")


def _result_key(r: EvalResult) -> tuple:
    return (r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type)


def _pipeline_tag(info: CheckpointInfo) -> str:
    if info.is_sentence_transformer:
        return "sentence-similarity"
    archs = info.config.get("architectures") or []
    if (info.model_dir / "preprocessor_config.json").exists() or info.config.get("model_type") in ("vit", "dinov2"):
        return "image-classification" if any(a.endswith("ForImageClassification") for a in archs) \
            else "image-feature-extraction"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    return "feature-extraction"


def _recipe_rows(recipe: Any) -> list[tuple[str, str]]:
    if recipe is None:
        return []
    if dataclasses.is_dataclass(recipe) and not isinstance(recipe, type):
        recipe = dataclasses.asdict(recipe)
    if not isinstance(recipe, Mapping):
        raise TypeError(f"CardInfo.distillation must be a mapping or a dataclass instance, got {type(recipe).__name__}.")
    return [(str(k), json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v)) for k, v in recipe.items()]


def _eval_rows(results: list[EvalResult], fp32: list[EvalResult]) -> list[dict]:
    base = {_result_key(r): r.metric_value for r in fp32}
    rows = []
    for r in results:
        ref = base.get(_result_key(r))
        retained = None
        if isinstance(ref, (int, float)) and isinstance(r.metric_value, (int, float)) and ref:
            retained = f"{100 * r.metric_value / ref:.1f}%"
        rows.append({
            "task": r.task_name or r.task_type,
            "dataset": r.dataset_name + (f" ({r.dataset_split})" if r.dataset_split else ""),
            "metric": r.metric_name or r.metric_type,
            "fp32": "" if ref is None else _fmt(ref),
            "ternary": _fmt(r.metric_value),
            "retained": retained or "",
        })
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build_model_card(
    local_dir: str | os.PathLike,
    repo_id: str | None = None,
    card: CardInfo | None = None,
) -> ModelCard:
    """Build the model card of the ternary checkpoint in `local_dir` (validated first), without pushing.

    Args:
        local_dir: a saved ternary checkpoint (transformers or sentence-transformers layout).
        repo_id: the Hub id used in the usage snippet; defaults to a placeholder (`your-name/<folder>`).
        card: base model, evaluation results, distillation recipe, license... (see `CardInfo`).

    Returns:
        a `huggingface_hub.ModelCard`; `str(card)` is the README.md text, `card.data` its metadata.
    """
    from .version import __version__
    from .footprint import footprint

    info = inspect_checkpoint(local_dir)
    card = card or CardInfo()
    repo_id = repo_id or f"your-name/{info.root.resolve().name}"
    model_name = card.model_name or repo_id.split("/")[-1]
    results = [_as_eval_result(r) for r in card.eval_results]
    fp32_results = [_as_eval_result(r) for r in card.fp32_eval_results]
    tags = list(TERNARY_TAGS)
    if info.is_sentence_transformer:
        tags += SENTENCE_TRANSFORMERS_TAGS
    tags += [t for t in card.tags if t not in tags]
    extra: dict[str, Any] = {}
    if card.base_model:
        extra["base_model_relation"] = "quantized"
    data = ModelCardData(
        base_model=card.base_model,
        library_name="sentence-transformers" if info.is_sentence_transformer else "transformers",
        pipeline_tag=card.pipeline_tag or _pipeline_tag(info),
        tags=tags,
        license=card.license,
        language=card.language,
        datasets=card.datasets,
        model_name=model_name,
        eval_results=results or None,
        **extra,
    )
    fp = footprint(info.model_dir)
    q = info.quantization_config
    modality = "image" if _pipeline_tag(info).startswith("image") else "text"
    return ModelCard.from_template(
        data,
        template_path=str(model_card_template()),
        repo_id=repo_id,
        model_name=model_name,
        description=card.description,
        is_sentence_transformer=info.is_sentence_transformer,
        modality=modality,
        has_tokenizer=(info.model_dir / "tokenizer_config.json").exists(),
        architecture=", ".join(info.config.get("architectures") or [info.config.get("model_type", "?")]),
        granularity=q.get("granularity"),
        rule=q.get("rule"),
        group_size=q.get("group_size"),
        modules_to_not_convert=q.get("modules_to_not_convert") or [],
        n_ternary_layers=len(info.ternary_layers),
        embedding_dtype=q.get("embedding_dtype", "float"),
        embedding_group_size=q.get("embedding_group_size"),
        vocabulary=(f"pruned to {fp.vocab_size:,} of {fp.original_vocab_size:,} tokens (tokenizer pruned with it)"
                    if fp.original_vocab_size else None),
        output_dim=(f"{fp.output_dim} (reduced from {fp.hidden_size} by a PCA `Dense` module)"
                    if fp.output_dim and fp.hidden_size and fp.output_dim != fp.hidden_size else None),
        footprint_table=fp.to_markdown(),
        file_mib=f"{(fp.file_bytes or 0) / 2**20:.2f}",
        fp32_mib=f"{fp.fp32_bytes / 2**20:.2f}",
        ratio=f"{fp.ratio:.3f}",
        eval_rows=_eval_rows(results, fp32_results),
        recipe_rows=_recipe_rows(card.distillation),
        ternary_hf_version=__version__,
    )


def render_model_card(
    local_dir: str | os.PathLike, repo_id: str | None = None, card: CardInfo | None = None
) -> str:
    """The README.md text of `build_model_card` (metadata header + markdown), without pushing."""
    return str(build_model_card(local_dir, repo_id=repo_id, card=card))


def _card_is_ternary(readme: Path) -> bool:
    """A README written from our template (possibly edited since) carries the `ternary-hf` tag."""
    try:
        tags = ModelCard.load(readme).data.tags or []
    except Exception:  # an unparsable README is not ours: it gets replaced
        return False
    return "ternary-hf" in tags


# --------------------------------------------------------------------------- push
def _resolve_token(token: str | None, private: bool) -> str:
    resolved = token or get_token()
    if not resolved:
        what = "a private repo" if private else "the Hub"
        raise ValueError(
            f"Pushing to {what} needs a write token and none was found: pass token=... (CLI: --token), set the "
            "HF_TOKEN environment variable, or run `hf auth login`. Nothing was uploaded."
        )
    return resolved


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"Invalid repo id {repo_id!r}: expected 'namespace/name'. Nothing was uploaded.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"Invalid repo id {repo_id!r}: {exc} Expected 'namespace/name'. Nothing was uploaded.") \
            from exc


def _operations(info: CheckpointInfo, readme: bytes | None) -> list[CommitOperationAdd]:
    ops = []
    for path in sorted(info.root.rglob("*")):
        rel = path.relative_to(info.root)
        if not path.is_file() or any(part in _SKIPPED_DIRS for part in rel.parts):
            continue
        if readme is not None and rel.as_posix() == "README.md":
            continue
        ops.append(CommitOperationAdd(path_in_repo=rel.as_posix(), path_or_fileobj=str(path)))
    if readme is not None:
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme))
    return ops


def push_checkpoint(
    local_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    *,
    card: CardInfo | None = None,
    readme: str = "auto",
    commit_message: str | None = None,
    commit_description: str | None = None,
    exist_ok: bool = True,
    endpoint: str | None = None,
):
    """Upload a saved ternary checkpoint to the Hub as one commit, with a generated model card.

    Args:
        local_dir: folder written by `save_pretrained` (transformers) or `model.save` (sentence-transformers).
        repo_id: `namespace/name`; the repo is created if missing (`private` only applies then).
        private: create the repo private. A token is required either way.
        revision: branch to commit to; created from `main` if it does not exist.
        token: a write token; defaults to `HF_TOKEN` / the token saved by `hf auth login`.
        card: what the model card says beyond the checkpoint (base model, evaluations, recipe...).
        readme: `"auto"` keeps a local README.md written from the ternary template (tag `ternary-hf`) and
            otherwise generates one (a README copied from the fp32 model would describe the wrong model);
            `"generate"` always generates; `"keep"` uploads the local README.md as is (none if absent).
        commit_message / commit_description: of the commit; a default names the folder and ternary-hf.
        exist_ok: if False, fail when the repo already exists.
        endpoint: Hub URL; defaults to `HF_ENDPOINT` / huggingface.co.

    Returns:
        the `huggingface_hub.CommitInfo` of the commit (`.oid`, `.commit_url`).

    Raises:
        ValueError (`CheckpointError` for the folder): bad repo id, missing token, not a ternary
            checkpoint or a corrupt one — all before any request is sent.
        PushError: the Hub refused or failed; the message says at which step and that the branch was
            left at its previous commit, so running the same push again is the retry.
    """
    if readme not in ("auto", "generate", "keep"):
        raise ValueError(f"readme={readme!r} is invalid; use 'auto', 'generate' or 'keep'.")
    _check_repo_id(repo_id)
    info = inspect_checkpoint(local_dir)
    token = _resolve_token(token, private)
    local_readme = info.root / "README.md"
    if readme == "keep" or (readme == "auto" and local_readme.exists() and _card_is_ternary(local_readme)):
        readme_bytes = None
    else:
        if readme == "auto" and local_readme.exists():
            logger.info("Replacing %s (not a ternary-hf model card) with a generated one.", local_readme)
        readme_bytes = render_model_card(info.root, repo_id=repo_id, card=card).encode("utf-8")
    operations = _operations(info, readme_bytes)

    api = HfApi(endpoint=endpoint, token=token, library_name="ternary-hf")
    branch = revision or "main"
    step, head = "creating the repo", None
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=exist_ok).repo_id
        if revision is not None:
            step = f"creating branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "reading the branch head"
        head = api.repo_info(repo_id, revision=branch).sha
        step = f"uploading {len(operations)} files and committing"
        return api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or f"Upload ternary checkpoint {info.root.resolve().name} (ternary-hf)",
            commit_description=commit_description,
            revision=revision,
            parent_commit=head,
        )
    except (HfHubHTTPError, RuntimeError, OSError, ValueError) as exc:
        raise PushError(_failure_message(api, repo_id, branch, step, head, exc)) from exc


def _failure_message(api: HfApi, repo_id: str, branch: str, step: str, head: str | None, exc: Exception) -> str:
    def first_line(e: BaseException) -> str:
        text = str(e).strip()
        return text.splitlines()[0].rstrip(".") if text else type(e).__name__

    cause = first_line(exc)
    if exc.__cause__ is not None and str(exc.__cause__).strip():  # e.g. "Error while uploading 'x'" <- HTTP 507
        cause += f" ({first_line(exc.__cause__)})"
    msg = f"Push to {repo_id}@{branch} failed while {step}: {cause}."
    if head is not None:
        try:
            now = api.repo_info(repo_id, revision=branch).sha
        except Exception:  # the Hub is unreachable: say what we know
            now = None
        if now == head:
            msg += f" Nothing was committed: {branch} is still at {head[:12]}."
        elif now is not None:
            msg += f" {branch} moved from {head[:12]} to {now[:12]} meanwhile; check the repo."
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return msg + f" The token was refused: use a write token of an account that can write to {repo_id}."
    return msg + " Run the same push again to retry (files already uploaded are not sent twice)."


# --------------------------------------------------------------------------- pushing a loaded model
def _is_sentence_transformer(model: Any) -> bool:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return False
    return isinstance(model, SentenceTransformer)


def _source_dir(model: Any) -> Path | None:
    """The local folder the model was loaded from (a directory or a Hub cache snapshot), if any."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        return None
    if os.path.isdir(name):
        return Path(name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not a Hub id, or not cached: no preprocessing files to copy
        return None


def save_for_push(model: Any, save_dir: str | os.PathLike, processor: Any = None, max_shard_size="50GB") -> Path:
    """Save a loaded ternary model the way `push_to_hub` uploads it.

    transformers models get their tokenizer / image processor next to the weights: `processor` when
    given, else the preprocessing files of the folder the model was loaded from.
    """
    from .integration import is_ternary_model

    if _is_sentence_transformer(model):
        if not is_ternary_model(model):
            raise CheckpointError("This SentenceTransformer has no ternary layer; load it with "
                                  "model_kwargs={'quantization_config': ternary_hf.TernaryConfig()} first.")
        with staged_directory(save_dir) as stage:  # a failure half-way leaves `save_dir` as it was
            model.save(str(stage), create_model_card=False)
            seal_module_weights(stage)
        return Path(save_dir)
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"push_to_hub needs a transformers PreTrainedModel or a SentenceTransformer, got "
                        f"{type(model).__name__}; for a saved folder use push_checkpoint(local_dir, repo_id).")
    if not is_ternary_model(model):
        raise CheckpointError(f"{type(model).__name__} has no ternary layer; load it with "
                              "quantization_config=ternary_hf.TernaryConfig() first.")
    with staged_directory(save_dir) as stage:
        model.save_pretrained(str(stage), max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(str(stage))
            return Path(save_dir)
        source = _source_dir(model)
        copied = []
        for name in PREPROCESSING_FILES if source is not None else ():
            if (source / name).is_file() and not (stage / name).exists():
                shutil.copyfile(source / name, stage / name)
                copied.append(name)
    if not copied:
        logger.warning("No tokenizer / processor files found for %s; pass processor=... to push_to_hub to "
                       "upload them.", type(model).__name__)
    return Path(save_dir)


def push_to_hub(
    model: Any,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    *,
    card: CardInfo | None = None,
    processor: Any = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    exist_ok: bool = True,
    max_shard_size: int | str = "50GB",
    endpoint: str | None = None,
):
    """Push a loaded ternary model (transformers or SentenceTransformer) with its ternary model card.

    The repo id and token are checked first; the model is saved to a temporary folder (packed
    safetensors, config, tokenizer / processor, sentence-transformers modules), validated and
    uploaded by `push_checkpoint` (see there for the arguments and errors).
    """
    _check_repo_id(repo_id)
    _resolve_token(token, private)
    with tempfile.TemporaryDirectory(prefix="ternary-hf-push-") as tmp:
        save_for_push(model, tmp, processor=processor, max_shard_size=max_shard_size)
        return push_checkpoint(
            tmp, repo_id, private=private, revision=revision, token=token, card=card, readme="generate",
            commit_message=commit_message or f"Upload ternary {type(model).__name__} (ternary-hf)",
            commit_description=commit_description, exist_ok=exist_ok, endpoint=endpoint,
        )


def _bound_push_to_hub(model: Any, repo_id: str, *args: Any, card: CardInfo | None = None, **kwargs: Any):
    """`model.push_to_hub(...)` after `enable_push_to_hub`: the library's arguments, routed to `push_to_hub`."""
    if args:
        raise TypeError("push_to_hub(repo_id, ...) of a ternary model takes its other arguments by keyword.")
    if kwargs.pop("create_pr", False):
        raise ValueError("create_pr=True is not supported by ternary-hf's push; push to a branch with "
                         "revision='name' and open the pull request on the Hub.")
    card = card or getattr(model, "_ternary_card_info", None)
    tags = kwargs.pop("tags", None) or []
    if tags:
        base = card or CardInfo()
        card = dataclasses.replace(base, tags=[*base.tags, *([tags] if isinstance(tags, str) else tags)])
    if kwargs.pop("safe_serialization", True) is False:
        raise ValueError("ternary checkpoints are always saved as safetensors (safe_serialization=False refused).")
    local_model_path = kwargs.pop("local_model_path", None)
    for ignored in ("replace_model_card", "train_datasets"):  # sentence-transformers card options: our card wins
        kwargs.pop(ignored, None)
    common = {k: kwargs.pop(k) for k in ("private", "revision", "token", "commit_message", "commit_description",
                                         "exist_ok") if k in kwargs}
    common["private"] = bool(common.get("private"))
    max_shard_size = kwargs.pop("max_shard_size", "50GB")
    if kwargs:
        raise TypeError(f"push_to_hub got unexpected argument(s): {', '.join(sorted(kwargs))}.")
    if local_model_path:
        return push_checkpoint(local_model_path, repo_id, card=card, **common)
    info = push_to_hub(model, repo_id, card=card, max_shard_size=max_shard_size, **common)
    return info.commit_url if _is_sentence_transformer(model) else info


def enable_push_to_hub(model: Any, card: CardInfo | None = None) -> Any:
    """Make `model.push_to_hub(repo_id, ...)` publish through ternary-hf (validation + ternary model card).

    Works on a transformers `PreTrainedModel` (the quantizer calls it after loading) and on a
    `SentenceTransformer`; accepts the library's own keyword arguments (`private`, `token`,
    `revision`, `commit_message`, `tags`, ...). `card` is remembered for later pushes. Returns `model`.
    """
    if card is not None:
        model._ternary_card_info = card
    if hasattr(model, "add_model_tags"):
        model.add_model_tags(list(TERNARY_TAGS))  # also tags cards that transformers' Trainer writes
    push = functools.partial(_bound_push_to_hub, model)
    functools.update_wrapper(push, _bound_push_to_hub)
    # An instance attribute shadows the class method for this model only; it survives deepcopy/pickle
    # because partial pickles the module-level function by reference.
    model.push_to_hub = push
    return model
