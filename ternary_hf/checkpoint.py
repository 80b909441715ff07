"""The saved ternary checkpoint: what it holds, whether its bytes are intact, whether a folder is a usable one.

- Index (file headers only): tensor names, dtypes and shapes, the per-layer shapes ternary-hf records in the
  safetensors metadata, and the packed shapes a layer must have. Used by loading (selection, shape checks),
  `footprint` and the pre-push checks.
- Integrity: a content hash of every tensor is recorded at save (`integrity_record`) and verified before
  loading or pushing (`verify_checkpoint`), with the checks that need no hash (2-bit codes, finite scales).
- Folder validation (`inspect_checkpoint`): config, layout, weight files, packed tensors and their integrity,
  all local; what `ternary-hf push` and the model card run before anything is uploaded.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from .config import QUANT_METHOD, TernaryConfig
from .packing import packed_rows
from .ternarize import scale_shape

logger = logging.getLogger(__name__)

# safetensors metadata key holding `{"version": ..., "shapes": {module: [out, in]}, "embeddings": {module: {...}}}`
# of the ternary layers and the quantized embedding tables.
METADATA_KEY = "ternary_hf"
# An empty tensor saved in every packed checkpoint. Loaded without the plugin, transformers lists it in its
# load report (UNEXPECTED) right above the confusing shape-mismatch lines, so the fix is on screen.
HINT_KEY = "TERNARY_HF_CHECKPOINT.pip_install_ternary-hf.then_import_ternary_hf_before_from_pretrained"


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor, read from the file header."""

    dtype: str  # safetensors dtype name, e.g. "F32", "U8"
    shape: tuple[int, ...]
    file: str


@dataclass
class CheckpointIndex:
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    layer_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # ternary layers: [out, in]
    # quantized embedding tables: {module: {"dtype": "int8"|"int4"|"ternary", "shape": [num, dim], ...}}
    embedding_tables: dict[str, dict] = field(default_factory=dict)
    # the TernaryConfig fields that decide the stored format, as saved with the weights (absent before 0.1 hashes)
    storage: dict[str, Any] = field(default_factory=dict)


def read_checkpoint_index(checkpoint_files) -> CheckpointIndex:
    """Read the headers of safetensors (or legacy pickle) checkpoint files.

    Raises `ValueError` naming the file when a header cannot be read (truncated or corrupt file).
    """
    index = CheckpointIndex()
    for path in checkpoint_files:
        path = os.fspath(path)
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(path, framework="pt") as f:
                    meta = f.metadata() or {}
                    if METADATA_KEY in meta:
                        record = json.loads(meta[METADATA_KEY])
                        index.layer_shapes.update({k: tuple(v) for k, v in record.get("shapes", {}).items()})
                        index.embedding_tables.update(record.get("embeddings", {}))
                        index.storage.update(record.get("storage", {}))
                    for key in f.keys():
                        sl = f.get_slice(key)
                        index.tensors[key] = TensorInfo(sl.get_dtype(), tuple(sl.get_shape()), path)
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise ValueError(
                    f"Cannot read checkpoint file {path}: {e}. The file is truncated or corrupt; "
                    "re-download or re-save the model."
                ) from e
        else:  # legacy pickle checkpoint: mmap so only the headers are touched
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            for key, t in state.items():
                dtype = "U8" if t.dtype == torch.uint8 else "F"
                index.tensors[key] = TensorInfo(dtype, tuple(t.shape), path)
    return index


def expected_packed_shapes(
    out_features: int, in_features: int, granularity: str, group_size: int
) -> dict[str, tuple[int, ...]]:
    """The stored shapes of a ternary layer's `weight` (packed codes) and `weight_scale`."""
    return {
        "weight": (packed_rows(out_features), in_features),
        "weight_scale": scale_shape(out_features, in_features, granularity, group_size),
    }


# The TernaryConfig fields that decide how tensors are stored: recorded with the weights, compared with config.json.
STORAGE_FIELDS = ("granularity", "group_size", "embedding_dtype", "embedding_group_size")


def check_config_matches_weights(config: Any, index: CheckpointIndex, files) -> None:
    """config.json's storage fields must be the ones the weights were saved with (an interrupted in-place write
    or a hand edit could pair a new config with old weights). `config` is a TernaryConfig or its dict."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    differ = [f"{key}={get(key)!r} (weights: {index.storage[key]!r})" for key in STORAGE_FIELDS
              if key in index.storage and get(key) != index.storage[key]]
    if differ:
        raise CheckpointIntegrityError(
            f"config.json's quantization_config disagrees with the weights in {', '.join(map(os.fspath, files))}: "
            f"{', '.join(differ)}. The folder mixes two saves (e.g. an interrupted write by an older version); "
            "restore the matching config.json or save the model again."
        )


# --------------------------------------------------------------------------- content integrity
# Saved with every packed checkpoint inside the METADATA_KEY record: {"integrity": {"algorithm": "xxh3_64",
# "tensors": {name: hex digest of the tensor's bytes}, "codes": [names holding 2-bit codes],
# "aliases": {state-dict name: saved name}}}. Names are the ones in the file (after transformers' save-time
# renaming); `aliases` lets a file saved with `save_original_format=False` (model names) verify as well.
HASH_ALGORITHM = "xxh3_64"
_STORED_CODE_3 = 0x5555555555555555  # bit 0 of every 2-bit field: code + 1 == 3 has both bits of a field set
# Bits of the exponent field: all set means inf or NaN, whatever the mantissa.
_EXPONENT_MASK = {"F64": (np.uint64, 0x7FF0000000000000), "F32": (np.uint32, 0x7F800000),
                  "F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80)}
_warned_unverified: set[str] = set()


class CheckpointIntegrityError(ValueError):
    """The bytes of a saved checkpoint are not the ones ternary-hf wrote (or hold values it never writes)."""


def tensor_digest(data: bytes | memoryview) -> str:
    """Content hash of a tensor's raw bytes (xxh3: ~25 GB/s, a few ms for a small encoder)."""
    return xxhash.xxh3_64_hexdigest(data)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes safetensors writes for `tensor` (contiguous, native little-endian)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def integrity_record(saved: dict[str, torch.Tensor], code_names: list[str], aliases: dict[str, str]) -> dict | None:
    """The `integrity` entry of the metadata for the tensors `saved` (named as in the file); None if a tensor is
    not materialized (offloaded to meta), then the checkpoint is saved without content hashes."""
    if any(t.device.type == "meta" for t in saved.values()):
        logger.warning("Some tensors are offloaded (meta device): the checkpoint is saved without content hashes.")
        return None
    return {
        "algorithm": HASH_ALGORITHM,
        "tensors": {name: tensor_digest(_tensor_bytes(t)) for name, t in saved.items()},
        "codes": sorted(code_names),
        **({"aliases": aliases} if aliases else {}),
    }


class _SafetensorsFile:
    """A safetensors file mapped read-only: its header entries and a zero-copy view of each tensor's bytes."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            self.metadata = header.pop("__metadata__", None) or {}
            self.entries = header
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._start = 8 + n

    def data(self, name: str) -> memoryview:
        begin, end = self.entries[name]["data_offsets"]
        return memoryview(self._map)[self._start + begin: self._start + end]

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still referenced (by a traceback being raised): the GC unmaps it
            pass


def _record(files: list[_SafetensorsFile]) -> dict:
    for f in files:
        if METADATA_KEY in f.metadata:
            try:
                record = json.loads(f.metadata[METADATA_KEY])
            except ValueError as exc:
                raise CheckpointIntegrityError(f"{f.path}: the '{METADATA_KEY}' metadata is not valid JSON ({exc}): "
                                               "the file is corrupt; re-download the model or save it again.") from None
            return record if isinstance(record, dict) else {}
    return {}


def _files_text(files: list[_SafetensorsFile]) -> str:
    return ", ".join(f.path for f in files)


def _check_hashes(located: dict[str, _SafetensorsFile], integrity: dict, files: list[_SafetensorsFile]) -> None:
    hashes: dict[str, str] = integrity.get("tensors", {})
    aliases: dict[str, str] = integrity.get("aliases", {})
    seen, unrecorded = set(), []
    for name, f in located.items():
        key = name if name in hashes else aliases.get(name)
        if key is None:
            unrecorded.append(name)
            continue
        seen.add(key)
        if tensor_digest(f.data(name)) != hashes[key]:
            raise CheckpointIntegrityError(
                f"Tensor '{name}' in {f.path} does not match the content hash recorded when the checkpoint was "
                "saved: its bytes changed afterwards (disk or transfer error, partial download, manual edit). "
                "Re-download the model or save it again."
            )
    missing = sorted(set(hashes) - seen)
    if missing:
        renamed = f" It holds instead tensor(s) {', '.join(map(repr, unrecorded[:5]))}: renamed?" if unrecorded else ""
        raise CheckpointIntegrityError(
            f"Checkpoint {_files_text(files)} lacks tensor(s) {', '.join(map(repr, missing[:5]))}"
            f"{' and %d more' % (len(missing) - 5) if len(missing) > 5 else ''}, saved with it (recorded in its "
            f"metadata).{renamed} The checkpoint was edited or is incomplete; re-download the model or save it again."
        )
    if unrecorded:
        raise CheckpointIntegrityError(
            f"Tensor(s) {', '.join(map(repr, unrecorded[:5]))} in {located[unrecorded[0]].path} were not written "
            "with this checkpoint (absent from the content record in its metadata): the file was modified after "
            "saving. Re-download the model or save it again."
        )


def _code_tensors(located: dict[str, _SafetensorsFile], record: dict) -> list[str]:
    """Tensors holding 2-bit codes: recorded at save; for older checkpoints, every uint8 `X.weight` with an
    `X.weight_scale` that is not a 4-bit embedding table (those pack nibbles, not 2-bit codes)."""
    integrity = record.get("integrity")
    if integrity is not None:
        aliases = {saved: name for name, saved in integrity.get("aliases", {}).items()}
        names = [n if n in located else aliases.get(n, n) for n in integrity.get("codes", [])]
        return [n for n in names if n in located]
    int4 = {m for m, e in record.get("embeddings", {}).items() if e.get("dtype") == "int4"}
    return [n for n, f in located.items() if n.endswith(".weight") and f.entries[n]["dtype"] == "U8"
            and n + "_scale" in located and n[: -len(".weight")] not in int4]


def _check_codes(located: dict[str, _SafetensorsFile], names: list[str]) -> None:
    for name in names:
        data = located[name].data(name)
        whole = len(data) // 8 * 8
        words = np.frombuffer(data[:whole], dtype=np.uint64)
        bad = words >> np.uint64(1)
        np.bitwise_and(bad, words, out=bad)
        np.bitwise_and(bad, np.uint64(_STORED_CODE_3), out=bad)
        tail = np.frombuffer(data[whole:], dtype=np.uint8)
        if bad.any() or ((tail >> 1) & tail & 0x55).any():
            raise CheckpointIntegrityError(
                f"Packed ternary tensor '{name}' in {located[name].path} holds the 2-bit value 3, which ternary-hf "
                "never writes (codes are -1, 0, +1 stored as 0, 1, 2): the file is corrupt. Re-download the model "
                "or save it again."
            )


def _check_scales(located: dict[str, _SafetensorsFile]) -> None:
    for name, f in located.items():
        kind = _EXPONENT_MASK.get(f.entries[name]["dtype"])
        if not name.endswith("_scale") or kind is None:
            continue
        dtype, mask = kind
        bits = np.frombuffer(f.data(name), dtype=dtype)
        bad = np.count_nonzero((bits & dtype(mask)) == dtype(mask))
        if bad:
            raise CheckpointIntegrityError(
                f"Scale tensor '{name}' in {f.path} holds {bad} non-finite value(s) (NaN or inf): every output of "
                "the layer would be NaN or undefined. The checkpoint is corrupt or was saved from a diverged "
                "training run; re-download it or save it again from a healthy model."
            )


def verify_checkpoint(checkpoint_files) -> bool:
    """Check the bytes of packed safetensors checkpoint files before any tensor is loaded.

    Verifies each tensor's content hash (recorded at save), that no tensor saved with the checkpoint is missing
    or was added, that packed 2-bit codes hold only the values ternary-hf writes, and that every scale is finite.
    Raises `CheckpointIntegrityError` naming the tensor and the file. Checkpoints saved before content hashes
    existed get the code and scale checks and a one-time warning. Returns True when hashes were verified.
    """
    paths = [os.fspath(p) for p in checkpoint_files if os.fspath(p).endswith(".safetensors")]
    files = [_SafetensorsFile(p) for p in paths]
    try:
        record = _record(files)
        located = {name: f for f in files for name in f.entries}
        integrity = record.get("integrity")
        if integrity is not None:
            if integrity.get("algorithm") != HASH_ALGORITHM:
                raise CheckpointIntegrityError(
                    f"{_files_text(files)}: content hashes use {integrity.get('algorithm')!r}, unknown to this "
                    f"ternary-hf version (expects {HASH_ALGORITHM!r}); upgrade ternary-hf."
                )
            _check_hashes(located, integrity, files)
        elif files and _files_text(files) not in _warned_unverified:
            _warned_unverified.add(_files_text(files))
            warnings.warn(
                f"{_files_text(files)} was saved by an older ternary-hf without content hashes: its packed codes and "
                "scales are checked, but flipped bytes elsewhere cannot be detected. Save it again with this version "
                "(from_pretrained(path).save_pretrained(new_path)) to record them.", UserWarning, stacklevel=2)
        _check_codes(located, _code_tensors(located, record))
        _check_scales(located)
        return integrity is not None
    finally:
        for f in files:
            f.close()


def _module_weight_files(folder: Path) -> list[Path]:
    """safetensors files of the sentence-transformers modules `folder/modules.json` lists in sub-folders (e.g. a
    PCA `2_Dense`); not other sub-folders (a training run's `checkpoint-*/` holds its own formats)."""
    try:
        modules = json.loads((Path(folder) / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    dirs = {Path(folder) / m["path"] for m in modules if isinstance(m, dict) and m.get("path")}
    return sorted(p for d in dirs for p in d.rglob("*.safetensors") if not p.name.startswith("."))


def seal_module_weights(folder: str | os.PathLike) -> list[Path]:
    """Record content hashes in the safetensors files of `folder`'s sub-modules (sentence-transformers writes a
    `Dense` head without them), so that loading and pushing verify those tensors too. Returns the files sealed."""
    from safetensors.torch import load_file, save_file

    from .fileio import atomic_output_file

    sealed = []
    for path in _module_weight_files(Path(folder)):
        header = _SafetensorsFile(str(path))
        metadata = dict(header.metadata)
        header.close()
        if METADATA_KEY in metadata:
            continue
        state = load_file(path)
        metadata[METADATA_KEY] = json.dumps({"integrity": integrity_record(state, [], {})})
        with atomic_output_file(path) as tmp:
            save_file(state, tmp, metadata=metadata)
        sealed.append(path)
    return sealed


def verify_module_weights(folder: str | os.PathLike) -> None:
    """`verify_checkpoint` on each sub-module weight file of `folder` that carries content hashes."""
    for path in _module_weight_files(Path(folder)):
        header = _SafetensorsFile(str(path))
        sealed = "integrity" in header.metadata.get(METADATA_KEY, "")
        header.close()
        if sealed:
            verify_checkpoint([path])


# --------------------------------------------------------------------------- folder validation
class CheckpointError(ValueError):
    """The local folder is not an intact ternary checkpoint; raised before anything is uploaded."""


@dataclass
class CheckpointInfo:
    """What `inspect_checkpoint` found in a saved ternary checkpoint."""

    root: Path  # the folder that is uploaded
    kind: str  # "sentence-transformers" or "transformers"
    model_dir: Path  # folder holding config.json + the ternary safetensors (root, or an ST module folder)
    config: dict  # config.json
    quantization_config: dict  # config.json["quantization_config"]
    weight_files: list[Path]  # safetensors files of the ternary model
    ternary_layers: list[str]  # modules stored packed (weight uint8 + weight_scale)
    st_modules: list[dict] = field(default_factory=list)  # modules.json entries (sentence-transformers)

    @property
    def is_sentence_transformer(self) -> bool:
        return self.kind == "sentence-transformers"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {what}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt, save it again.") from exc


def _transformer_module_dir(root: Path, modules: list[dict]) -> Path:
    for module in modules:
        folder = root / module.get("path", "")
        if not folder.is_dir():
            raise CheckpointError(
                f"{root}/modules.json lists module {module.get('name')!r} in {folder}, which does not exist; "
                "the sentence-transformers checkpoint is incomplete, save it again with model.save(...)."
            )
    for module in modules:
        if module.get("type", "").rsplit(".", 1)[-1] == "Transformer":
            return root / module.get("path", "")
    raise CheckpointError(
        f"{root}/modules.json has no Transformer module; ternary-hf publishes the transformer of a "
        "SentenceTransformer, and found none to check."
    )


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index, "the safetensors shard index").get("weight_map", {})
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) {', '.join(missing)} that are missing from {model_dir}.")
        return files
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    raise CheckpointError(
        f"No model.safetensors (or safetensors shard index) in {model_dir} (found: {', '.join(found) or 'none'}). "
        "ternary-hf checkpoints are saved as packed safetensors by save_pretrained."
    )


def _check_packed_tensors(files: list[Path], qconfig: dict) -> list[str]:
    """Open every safetensors file (which validates its header against the file size) and check that
    every ternary layer is stored as uint8 codes plus a scale of the shape the config implies."""
    try:
        index = read_checkpoint_index(files)
        verify_checkpoint(files)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    tensors = {key: (info.dtype, list(info.shape)) for key, info in index.tensors.items()}
    shapes = index.layer_shapes
    # Quantized embedding tables (embedding_dtype int8/int4/ternary) also have a weight_scale; they are not
    # ternary layers (the metadata names them; int8 tables of older checkpoints are recognised by dtype).
    tables = set(index.embedding_tables)
    layers = sorted(k[: -len(".weight_scale")] for k in tensors
                    if k.endswith(".weight_scale") and tensors.get(k[: -len("_scale")], ("",))[0] != "I8"
                    and k[: -len(".weight_scale")] not in tables)
    if not layers:
        raise CheckpointError(
            f"{', '.join(str(f) for f in files)} hold no packed ternary layer (no '*.weight_scale' tensor) although "
            "config.json declares a ternary quantization_config; the weights are not the packed ones. "
            "Save the ternary model with save_pretrained (it writes packed uint8 weights)."
        )
    for layer in layers:
        weight = tensors.get(f"{layer}.weight")
        if weight is None or weight[0] != "U8":
            got = "missing" if weight is None else f"dtype {weight[0]}"
            raise CheckpointError(f"Ternary layer {layer}: '{layer}.weight' should be packed uint8 codes, got {got}.")
        if layer in shapes:
            out_f, in_f = shapes[layer]
            expected_shapes = expected_packed_shapes(out_f, in_f, qconfig.get("granularity", "per_channel"),
                                                     qconfig.get("group_size", 128))
            expected = list(expected_shapes["weight"])
            if weight[1] != expected:
                raise CheckpointError(
                    f"Ternary layer {layer}: packed weight has shape {weight[1]}, expected {expected} for a "
                    f"[{out_f}, {in_f}] Linear; the checkpoint is corrupt."
                )
            want_scale = list(expected_shapes["weight_scale"])
            got_scale = tensors[f"{layer}.weight_scale"][1]
            if got_scale != want_scale:
                raise CheckpointError(
                    f"Ternary layer {layer}: weight_scale has shape {got_scale}, expected {want_scale} for "
                    f"granularity={qconfig.get('granularity')!r}; the checkpoint does not match its config."
                )
    return layers


def inspect_checkpoint(local_dir: str | os.PathLike) -> CheckpointInfo:
    """Check that `local_dir` is an intact ternary checkpoint and describe it; raise `CheckpointError` if not.

    Reads only local files (config.json, modules.json, safetensors headers): nothing is uploaded.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory; pass the folder written by save_pretrained / model.save.")
    modules: list[dict] = []
    if (root / "modules.json").exists():
        modules = _read_json(root / "modules.json", "the sentence-transformers module list")
        model_dir, kind = _transformer_module_dir(root, modules), "sentence-transformers"
    else:
        model_dir, kind = root, "transformers"
    config = _read_json(model_dir / "config.json", "a ternary checkpoint needs the model's config.json")
    qconfig = config.get("quantization_config")
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != QUANT_METHOD:
        found = "no quantization_config" if qconfig is None else f"quant_method={qconfig.get('quant_method')!r}"
        raise CheckpointError(
            f"{model_dir / 'config.json'} has {found}: this is not a ternary-hf checkpoint. Ternarize it first: "
            "`import ternary_hf; AutoModel.from_pretrained(path, quantization_config=ternary_hf.TernaryConfig())"
            ".save_pretrained(out)`, then push `out`."
        )
    try:
        TernaryConfig.from_dict(dict(qconfig))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{model_dir / 'config.json'}: invalid ternary quantization_config: {exc}") from exc
    files = _weight_files(model_dir)
    layers = _check_packed_tensors(files, qconfig)
    try:
        verify_module_weights(root)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    try:
        check_config_matches_weights(TernaryConfig.from_dict(dict(qconfig)), read_checkpoint_index(files), files)
    except CheckpointIntegrityError as exc:
        raise CheckpointError(str(exc)) from exc
    return CheckpointInfo(root, kind, model_dir, config, qconfig, files, layers, modules)
