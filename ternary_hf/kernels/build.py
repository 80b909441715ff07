"""Compiling the C kernels in `csrc/` and caching the compiled library, validated before every load.

The library is built on first use with the system C compiler (`$CC`, else cc / gcc / clang) and cached under
`$TERNARY_HF_CACHE/kernels` (default `~/.cache/ternary_hf/kernels`) as `tq_cpu_<key>.so`, the key hashing the
sources, the flags, the compiler's version and (for `-march=native`) this CPU's model and feature flags. Next to
it, `tq_cpu_<key>.json` records the library's size and SHA-256, written after the library itself, both through
`fileio`'s atomic writes. A cached library is loaded only when it matches its record: a truncated one (which
`dlopen` would map and then crash the process with SIGBUS on first use), an empty or garbage one (which `dlopen`
would reject, silently turning the fast path off) or one without a record is rebuilt instead.

Switches (environment):
  TERNARY_HF_NATIVE=0      never build or load the library: every backend runs its eager torch path (same
                           numerics as the fused kernels' linears; slower) and no fused forward is installed.
  TERNARY_HF_MARCH=<arch>  compile for `-march=<arch>` instead of `native` (e.g. `x86-64` for the portable
                           C path on any x86-64 CPU, `x86-64-v3` for AVX2 without VNNI).
  TERNARY_HF_CACHE=<dir>   where the compiled library is cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

from ..fileio import atomic_output_file, atomic_write_json

logger = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
ENTRY = "tq_cpu.c"  # the one translation unit; it includes the headers next to it
# No fast-math and no FMA contraction: the quantize / rescale results must equal the torch reference bit for bit.
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
DEFAULT_MARCH = "native"


def native_enabled() -> bool:
    """False when `TERNARY_HF_NATIVE=0` turns the compiled kernels (and every fused forward) off."""
    return os.environ.get("TERNARY_HF_NATIVE", "1").strip() != "0"


def configured_march() -> str:
    """The `-march` the library is built for: `TERNARY_HF_MARCH`, else this CPU's own (`native`)."""
    return os.environ.get("TERNARY_HF_MARCH", "").strip() or DEFAULT_MARCH


def cache_dir() -> Path:
    root = os.environ.get("TERNARY_HF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ternary_hf"
    )
    return Path(root) / "kernels"


def source_files() -> list[Path]:
    """The C sources and headers, in a fixed order (all of them go into the cache key)."""
    files = sorted(p for p in CSRC.iterdir() if p.suffix in (".c", ".h"))
    if not any(p.name == ENTRY for p in files):
        raise RuntimeError(f"the ternary-hf C sources are missing: {CSRC / ENTRY} does not exist (broken install?)")
    return files


def _cpu_signature() -> str:
    """What `-march=native` compiles for: the CPU model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return cc
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _flags(march: str) -> list[str]:
    return [*CFLAGS, f"-march={march}", f"-I{CSRC}"]


def library_path(cc: str, march: str) -> Path:
    """Where the library for these sources, compiler and target is cached."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    h = hashlib.sha256()
    for part in (" ".join(_flags(march)).replace(str(CSRC), "csrc"), version,
                 _cpu_signature() if march == "native" else ""):
        h.update(part.encode() + b"\0")
    for f in source_files():
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return cache_dir() / f"tq_cpu_{h.hexdigest()[:16]}.so"


def record_path(lib: Path) -> Path:
    """The size + SHA-256 record of a cached library."""
    return lib.with_suffix(".json")


def _digest(path: Path) -> tuple[int, str]:
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def cached_library_problem(lib: Path) -> str | None:
    """Why the cached `lib` must not be loaded (None when it matches the record written when it was built)."""
    rec = record_path(lib)
    if not lib.exists():
        return "not built yet"
    try:
        record = json.loads(rec.read_text())
        size, sha = int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"no valid build record {rec.name}"
    actual_size, actual_sha = _digest(lib)
    if actual_size != size:
        return f"{lib.name} is {actual_size} bytes, {size} when built (truncated or overwritten)"
    if actual_sha != sha:
        return f"{lib.name} does not match the SHA-256 recorded when it was built (corrupt)"
    return None


def build_library(cc: str, march: str, lib: Path) -> Path:
    """Compile the sources into `lib` (atomically: readers see the old file or the complete new one), then
    write its size + SHA-256 record. Raises RuntimeError with the compiler's message when compilation fails."""
    with atomic_output_file(lib, suffix=".so") as tmp:
        proc = subprocess.run([cc, *_flags(march), str(CSRC / ENTRY), "-o", str(tmp)], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed to compile the ternary-hf CPU kernels ({CSRC / ENTRY}, "
                               f"-march={march}):\n{proc.stderr[-2000:]}")
    size, sha = _digest(lib)
    atomic_write_json(record_path(lib), {"size": size, "sha256": sha, "march": march, "compiler": cc})
    return lib


def ensure_library(march: str | None = None, rebuild: bool = False) -> Path:
    """The path of a valid compiled library for `-march=march` (default: `configured_march()`), building it when
    it is missing, stale, truncated or corrupt (or when `rebuild`). Raises RuntimeError without a C compiler."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc/clang)")
    march = march or configured_march()
    lib = library_path(cc, march)
    problem = "rebuild requested" if rebuild else cached_library_problem(lib)
    if problem is None:
        return lib
    if lib.exists():  # (a first build is not worth a message)
        logger.warning("ternary-hf: rebuilding the CPU kernels: %s", problem)
    return build_library(cc, march, lib)
