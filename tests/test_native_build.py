"""Building, caching and switching off the compiled CPU kernels (`kernels/build.py`, sources in `kernels/csrc/`).

Each case runs a fresh Python process (what a user's next process does after the cache was damaged), with its own
cache directory seeded from one build made here, so the cases do not recompile from scratch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ternary_hf.kernels import build, native

pytestmark = pytest.mark.skipif(native.native_lib() is None, reason="no C compiler for the CPU kernels")

REPO = Path(__file__).resolve().parents[1]

# A tiny ternary BERT run on the fused whole-model path and on the `reference` backend; prints the GEMM variant,
# whether the native library is loaded and the lowest per-token cosine between the two.
PROBE = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    sys.path.insert(0, {tests!r})
    from conftest import padded_ternary_bert
    from ternary_hf.kernels import fused_model, native, use_backend
    model, inputs = padded_ternary_bert({model_dir!r})
    calls = []
    real = fused_model.run_model
    fused_model.run_model = lambda *a, **k: calls.append(1) or real(*a, **k)
    with torch.inference_mode():
        fast = model(**inputs).last_hidden_state
        with use_backend("reference"):
            ref = model(**inputs).last_hidden_state
    keep = inputs["attention_mask"].bool()
    cos = F.cosine_similarity(fast[keep], ref[keep], dim=-1).min().item()
    lib = native.native_lib()
    print("isa", native.gemm_isa() if lib is not None else "none")
    print("fused_calls", len(calls))
    print("min_cos", cos)
    print("reason", native.native_unavailable_reason())
""")


def _run_probe(tmp: Path, cache: Path, **env: str) -> dict[str, str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), "TERNARY_HF_CACHE": str(cache), "HF_HUB_OFFLINE": "1", **env}
    code = PROBE.format(tests=str(REPO / "tests"), model_dir=str(tmp / "model"))
    proc = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    out["stderr"] = proc.stderr
    return out


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A cache directory holding a valid build for this CPU (`-march=native`)."""
    cache = tmp_path_factory.mktemp("kernel_cache")
    old = os.environ.get("TERNARY_HF_CACHE")
    os.environ["TERNARY_HF_CACHE"] = str(cache)
    try:
        build.ensure_library("native")
    finally:
        if old is None:
            del os.environ["TERNARY_HF_CACHE"]
        else:
            os.environ["TERNARY_HF_CACHE"] = old
    return cache


def test_sources_are_package_files():
    names = {p.name for p in build.source_files()}
    assert {"tq_cpu.c", "tq_platform.h", "tq_gemm_isa.h"} <= names
    assert "#include" not in (REPO / "ternary_hf/kernels/native.py").read_text()  # no C inside Python any more
    assert '"kernels/csrc/*"' in (REPO / "pyproject.toml").read_text()
    # ISA intrinsics only behind feature guards: the unguarded translation unit uses none
    assert "_mm" not in (build.CSRC / "tq_cpu.c").read_text()


def _damage(lib: Path, how: str) -> None:
    data = lib.read_bytes()
    if how == "truncated":
        lib.write_bytes(data[: len(data) // 2])  # what `dlopen` maps, then SIGBUS on first touch of the tail
    elif how == "empty":
        lib.write_bytes(b"")
    elif how == "garbage":
        lib.write_bytes(os.urandom(len(data)))  # right size, wrong content
    elif how == "no_record":
        build.record_path(lib).unlink()
    else:
        raise AssertionError(how)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "no_record"])
def test_damaged_cached_library_is_rebuilt(how, built_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    (lib,) = (cache / "kernels").glob("tq_cpu_*.so")
    good = lib.read_bytes()
    _damage(lib, how)
    out = _run_probe(tmp_path, cache)
    assert out["isa"] != "none" and out["reason"] == "None", out
    assert int(out["fused_calls"]) >= 1  # the fast path ran
    assert float(out["min_cos"]) > 0.999
    assert "rebuilding the CPU kernels" in out["stderr"]
    assert build.cached_library_problem(lib) is None and len(lib.read_bytes()) == len(good)


def test_valid_cached_library_is_loaded_as_is(built_cache, tmp_path):
    (lib,) = (built_cache / "kernels").glob("tq_cpu_*.so")
    assert build.cached_library_problem(lib) is None
    before = lib.stat().st_mtime_ns
    out = _run_probe(tmp_path, built_cache)
    assert out["isa"] != "none" and "rebuilding" not in out["stderr"]
    assert lib.stat().st_mtime_ns == before


def test_record_detects_every_damage(built_cache, tmp_path):
    cache = tmp_path / "c"
    shutil.copytree(built_cache, cache)
    (lib,) = (cache / "kernels").glob("tq_cpu_*.so")
    good = lib.read_bytes()
    for how in ("truncated", "empty", "garbage"):
        _damage(lib, how)
        assert build.cached_library_problem(lib) is not None, how
        lib.write_bytes(good)
    assert build.cached_library_problem(lib) is None
    build.record_path(lib).write_text("{not json")
    assert "record" in build.cached_library_problem(lib)


@pytest.mark.slow
def test_switch_off_builds_nothing_and_keeps_the_numerics(tmp_path):
    """TERNARY_HF_NATIVE=0: no library is built or loaded, no fused forward runs, the eager int8 path agrees
    with the reference backend."""
    cache = tmp_path / "cache"
    out = _run_probe(tmp_path, cache, TERNARY_HF_NATIVE="0")
    assert out["isa"] == "none" and "TERNARY_HF_NATIVE=0" in out["reason"]
    assert out["fused_calls"] == "0"
    assert float(out["min_cos"]) > 0.9999
    assert not cache.exists() or not any(cache.rglob("*.so"))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86-64 only")
def test_portable_build_runs_the_fused_model_like_the_reference(tmp_path):
    """`-march=x86-64` (no AVX: the portable C GEMM, SSE2 vectors) built from the same sources runs the whole
    fused forward and matches the reference backend."""
    out = _run_probe(tmp_path, tmp_path / "cache", TERNARY_HF_MARCH="x86-64")
    assert out["isa"] == "portable"
    assert int(out["fused_calls"]) >= 1
    assert float(out["min_cos"]) > 0.999
