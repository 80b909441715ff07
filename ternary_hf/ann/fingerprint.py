"""A model's fingerprint: SHA-256 of the files that decide what its embeddings are.

An index is only meaningful with queries encoded by the model that encoded its corpus. Model paths and Hub ids are
names, and the files behind a name change (a re-run of ``distill``, a new Hub revision, a copied folder): the
fingerprint is what an index, an embedding shard manifest or a vector-store table records, and what is compared
before queries are encoded.

What is hashed: every weight file (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``), configuration
(``*config*.json``, ``modules.json``, shard indexes) and tokenizer file (``tokenizer.json``, ``vocab.*``,
``merges.txt``, ``special_tokens_map.json``, ``added_tokens.json``, sentencepiece ``*.model``, chat templates) of
the model folder and its module sub-folders (``1_Pooling/``, ``2_Dense/`` ...). Left out, so that rewriting a
model card or a report does not invalidate indexes: ``README.md`` and other documents, ``*_report.json`` /
``results.json``, ``checkpoint-*`` / ``runs`` / ``onnx`` / ``openvino`` folders and hidden files.

Cost: one streaming read of those files (1 MiB blocks; memory stays flat) at SHA-256 speed, about 1-2 GB/s on a
current x86 core: ~0.1 s for all-MiniLM-L6-v2 (91 MB fp32, 23 MB packed ternary), ~0.3 s for all-mpnet-base-v2
(438 MB). Digests are cached per process by (path, size, mtime), so checking the same model again is free.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",
})
CONFIG_FILES = frozenset({"modules.json"})
SKIPPED_DIRS = frozenset({"onnx", "openvino", "runs", "__pycache__"})
REPORT_FILES = frozenset({"results.json", "trainer_state.json"})
_BLOCK = 1 << 20
_cache: dict[tuple[str, int, int, int], str] = {}


class ModelMismatchError(ValueError):
    """Queries would be encoded by another model than the one that built the index or the embeddings."""


def _is_model_file(rel: Path) -> bool:
    if any(part.startswith(".") or part in SKIPPED_DIRS or part.startswith("checkpoint-") for part in rel.parts[:-1]):
        return False
    name = rel.name
    if name.startswith(".") or name in REPORT_FILES or name.endswith("_report.json"):
        return False
    if name.endswith(WEIGHT_SUFFIXES) or name in TOKENIZER_FILES or name in CONFIG_FILES:
        return True
    if name.endswith(".json") and ("config" in name or name.endswith(".index.json")):
        return True
    return name.endswith(".model")  # sentencepiece: spiece.model, sentencepiece.bpe.model, tokenizer.model


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks (cached per process by path, size and mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _cache.get(key)
    if digest is None:
        h = hashlib.sha256()
        buf = bytearray(_BLOCK)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buf):
                h.update(view[:n])
        digest = _cache[key] = h.hexdigest()
    return digest


@dataclass(frozen=True)
class ModelFingerprint:
    """Digest of a model folder's weight, config and tokenizer files.

    Attributes:
        digest: SHA-256 over the sorted ``(relative path, file digest)`` list, plus ``variant``.
        files: per-file SHA-256, so a mismatch can say which file changed.
        variant: how the files are turned into a model on load (``"ternary-ptq"`` when ternarized on load),
            since the same files give different embeddings then.
    """

    digest: str
    files: Mapping[str, str] = field(default_factory=dict)
    variant: str | None = None

    @property
    def short(self) -> str:
        return self.digest[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": "sha256", "digest": self.digest, "variant": self.variant, "files": dict(self.files)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ModelFingerprint | None":
        if not data:
            return None
        return cls(str(data["digest"]), dict(data.get("files") or {}), data.get("variant"))

    def differences(self, other: "ModelFingerprint") -> str:
        """Which files differ between two fingerprints, in words."""
        parts = []
        changed = sorted(f for f in self.files.keys() & other.files.keys() if self.files[f] != other.files[f])
        if changed:
            parts.append("changed: " + ", ".join(changed))
        if removed := sorted(self.files.keys() - other.files.keys()):
            parts.append("only in the recorded model: " + ", ".join(removed))
        if added := sorted(other.files.keys() - self.files.keys()):
            parts.append("only in the given model: " + ", ".join(added))
        if self.variant != other.variant:
            parts.append(f"loaded as {other.variant or 'stored'} instead of {self.variant or 'stored'}")
        return "; ".join(parts) or "different files"


def resolve_model_dir(source: str | os.PathLike) -> Path:
    """The local folder holding a model: ``source`` itself, or the Hub cache snapshot of a Hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any failure means: no local copy to fingerprint
        raise FileNotFoundError(
            f"cannot fingerprint model {source!s}: it is not a local folder and not in the Hugging Face cache "
            f"({type(exc).__name__}); load it once (or download it) first"
        ) from exc


def model_fingerprint(source: str | os.PathLike, variant: str | None = None) -> ModelFingerprint:
    """Fingerprint the model at ``source`` (a folder or a cached Hub id); see the module doc for what is hashed."""
    root = resolve_model_dir(source)
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root)
            if _is_model_file(rel) and full.is_file():
                files[rel.as_posix()] = file_sha256(full)
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in files):
        raise FileNotFoundError(f"no model weights (*.safetensors, *.bin, *.pt) found in {root}: not a model folder")
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode("utf-8"))
    h.update(f"variant\0{variant or ''}\n".encode("utf-8"))
    return ModelFingerprint(h.hexdigest(), files, variant)


def check_fingerprint(
    recorded: ModelFingerprint | None,
    actual: ModelFingerprint | None,
    *,
    what: str,
    model: str,
    allow_mismatch: bool = False,
) -> None:
    """Raise :class:`ModelMismatchError` (or warn, with ``allow_mismatch``) when two fingerprints differ.

    ``what`` names the thing that recorded a fingerprint (an index file, a shard manifest), ``model`` the model
    about to be used; nothing is checked when either side has no fingerprint.
    """
    if recorded is None or actual is None or recorded.digest == actual.digest:
        return
    message = (
        f"{what} was built by model {recorded.short} but {model} is model {actual.short} "
        f"({recorded.differences(actual)}). Queries encoded by another model do not match the stored vectors: "
        "use the model that built it, rebuild with this model, or override with --allow-model-mismatch "
        "(allow_model_mismatch=True) if the change is known not to alter the embeddings."
    )
    if not allow_mismatch:
        raise ModelMismatchError(message)
    import warnings

    warnings.warn(message.split(" Queries")[0] + " (allowed by allow_model_mismatch)", stacklevel=3)


def fingerprint_of_model(model: Any, variant: str | None = None) -> ModelFingerprint | None:
    """Fingerprint of the folder a loaded SentenceTransformer / transformers model came from (``name_or_path``),
    or ``None`` when it has no local source (built in memory, or not in the Hub cache)."""
    network = model
    try:
        network = model[0].auto_model  # SentenceTransformer: its first module holds the transformers network
    except (TypeError, IndexError, KeyError, AttributeError):
        pass
    source = getattr(network, "name_or_path", None) or getattr(getattr(network, "config", None), "_name_or_path", None)
    if not source:
        return None
    try:
        return model_fingerprint(source, variant=variant)
    except FileNotFoundError:
        return None
