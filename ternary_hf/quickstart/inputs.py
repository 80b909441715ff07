"""The quickstart's input checks: the model, the corpus and the output folder, each refused before any work with
what to do instead (:class:`~ternary_hf.quickstart.config.QuickstartError`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .config import MARKER_KIND, QuickstartError


def resolve_model(model: str | None) -> str:
    """The model source to use; raises :class:`QuickstartError` if it cannot be loaded."""
    from transformers import AutoConfig

    from ..defaults import default_model_path

    source = model or default_model_path()
    path = Path(source).expanduser()
    looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source
    if path.exists():
        if not path.is_dir():
            raise QuickstartError(f"--model {source} is a file; pass the model folder (with config.json) or a Hub id.")
        source = str(path)
    elif looks_like_path:
        raise QuickstartError(f"--model {source}: no such folder (and it is not a Hub id 'namespace/name').")
    try:
        AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        offline = " (HF_HUB_OFFLINE is set: only models already in the cache can be used)" \
            if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") and not path.exists() else ""
        raise QuickstartError(f"--model {source}: cannot load its config{offline}: {first}") from exc
    return source


def load_corpus(corpus: str, text_column: str | None = None) -> Any:
    """The user corpus as a `datasets.Dataset` with a `text` column; raises :class:`QuickstartError`."""
    from ..training import load_texts

    path = Path(corpus).expanduser()
    if not path.exists():
        raise QuickstartError(f"--corpus {corpus}: no such file or folder.")
    try:
        if path.is_dir():
            import datasets

            try:
                source = datasets.load_from_disk(str(path))
            except (FileNotFoundError, ValueError) as exc:
                raise QuickstartError(
                    f"--corpus {corpus} is a folder but not a dataset saved with Dataset.save_to_disk ({exc}); "
                    "pass a .txt/.jsonl/.csv file or such a folder.") from exc
        else:
            if not path.read_bytes().strip():
                raise QuickstartError(f"--corpus {corpus} is empty: it needs at least one text.")
            source = path
        return load_texts(source, text_column)
    except QuickstartError:
        raise
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise QuickstartError(f"--corpus {corpus}: {exc}") from exc
    except Exception as exc:  # datasets' builders raise their own error types on malformed files
        raise QuickstartError(f"--corpus {corpus}: cannot read it as a text corpus ({type(exc).__name__}: {exc}).") \
            from exc


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """The resolved output folder; raises if it exists with files and ``overwrite`` is not set."""
    path = Path(out).expanduser()
    if path.exists():
        if not path.is_dir():
            raise QuickstartError(f"--out {path} exists and is a file; choose a folder name.")
        entries = sorted(p.name for p in path.iterdir())
        if entries and not overwrite:
            previous = (path / "results.json").is_file() and _is_quickstart_report(path)
            what = "a previous quickstart report" if previous else f"files ({', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''})"
            raise QuickstartError(
                f"--out {path} already holds {what}; choose another --out, or pass --overwrite to replace it.")
    return path


def _is_quickstart_report(path: Path) -> bool:
    try:
        return json.loads((path / "results.json").read_text(encoding="utf-8")).get("kind") == MARKER_KIND
    except (OSError, ValueError, AttributeError):
        return False
