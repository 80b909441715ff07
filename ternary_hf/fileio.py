"""Atomic file and folder writes: the one place that knows how to publish output without half-written states.

Every writer in the package goes through these helpers, so a crash, a full disk or ``kill -9`` leaves either the
previous file/folder or none, never a mix:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json` for small files written in one go;
* :func:`atomic_output_file` for libraries that want a path to write to (``safetensors.torch.save_file``,
  ``faiss.write_index``, ``torch.onnx.export``): they write the temp path, it is renamed on success;
* :func:`staged_directory` for whole model / report folders: the caller fills a temp folder next to the target, which
  replaces the target only when everything has been written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is; some filesystems refuse O_RDONLY dirs (ignored).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path next to ``path``; on a clean exit it is fsynced and renamed onto ``path``.

    On an exception the temp file is removed and ``path`` is untouched. ``suffix`` lets writers that look at the
    extension (e.g. ``.png`` for matplotlib) see the one they expect.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old content or the new one, never a part."""
    with atomic_output_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> None:
    """:func:`atomic_write_bytes` for a JSON document (UTF-8, trailing newline); ``default`` as in `json.dumps`."""
    atomic_write_text(path, json.dumps(payload, indent=indent, ensure_ascii=False, default=default) + "\n")


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _normal_permissions(root: Path) -> None:
    """``mkdtemp``/``mkstemp`` create private entries (0700/0600); give published output the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for entry in [root, *root.rglob("*")]:
        if entry.is_symlink():
            continue
        wanted = (0o777 if entry.is_dir() else 0o666) & ~umask
        if entry.is_file() and entry.stat().st_mode & 0o111:
            wanted |= 0o111 & ~umask
        os.chmod(entry, wanted)


def publish_directory(staging: str | os.PathLike, out: str | os.PathLike, overwrite: bool = True) -> Path:
    """Move the finished folder ``staging`` onto ``out`` (replacing an existing ``out`` only with ``overwrite``).

    The swap is two renames on one filesystem: the old folder is first moved aside, the new one moved in, then the
    old one deleted. If the second rename fails the old folder is moved back, so ``out`` is never left missing.
    """
    staging, out = Path(staging), Path(out)
    _normal_permissions(staging)
    if out.exists() and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; the finished output is kept in {staging}.")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(trash / out.name, out)
            shutil.rmtree(trash, ignore_errors=True)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)
    _fsync_dir(out.parent)
    return out


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temp folder next to ``out``; publish it onto ``out`` on a clean exit, delete it otherwise.

    Use for anything that writes a model or a report as a folder of files: a failure half-way (full disk, a bad
    tensor, Ctrl-C) leaves ``out`` exactly as it was. Writing ``out`` in place (reading from it and replacing it) is
    safe because ``out`` is only touched at the end.
    """
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        publish_directory(staging, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
