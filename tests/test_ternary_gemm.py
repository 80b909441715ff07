"""The 2-bit ternary GEMM of the native kernels (`native.gemm`, the product inside `tq_encoder_layer`) against
exact integer matmul, in every variant the C source has: AVX-512 VNNI, AVX2 (x86-64-v3) and portable C."""

from __future__ import annotations

import platform

import pytest
import torch

from ternary_hf.kernels import native

pytestmark = pytest.mark.skipif(native.native_lib() is None, reason="no C compiler for the CPU kernels")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def _variants() -> list[str]:
    """-march values this CPU can run: this CPU's own, AVX2 (when it has AVX2) and the portable baseline."""
    marches = ["native"]
    if platform.machine() in ("x86_64", "AMD64"):
        if {"avx2", "fma", "bmi2"} <= _cpu_flags():
            marches.append("x86-64-v3")
        marches.append("x86-64")
    return marches


@pytest.mark.parametrize("march", _variants())
@pytest.mark.parametrize("m,k,n", [(32, 384, 1152), (5, 7, 3), (37, 130, 200), (1, 4, 64), (70, 1536, 65), (4, 9, 17)])
def test_gemm_is_the_exact_integer_product(march, m, k, n):
    lib = native.load_library(march)
    g = torch.Generator().manual_seed(m * 1000 + k + n)
    q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    codes = torch.randint(-1, 2, (k, n), generator=g, dtype=torch.int8)
    out = native.gemm(q, native.pack_gemm_weights(codes), n, lib)
    assert torch.equal(out, q.int() @ codes.int()), native.gemm_isa(lib)


def test_gemm_extremes_do_not_saturate():
    """All activations -127 / +127 against all-(+1) / all-(-1) codes: AVX2's 16-bit pair sums stay in range."""
    for march in _variants():
        lib = native.load_library(march)
        for a in (-127, 127):
            for c in (-1, 1):
                q = torch.full((8, 1536), a, dtype=torch.int8)
                codes = torch.full((1536, 64), c, dtype=torch.int8)
                out = native.gemm(q, native.pack_gemm_weights(codes), 64, lib)
                assert torch.equal(out, torch.full((8, 64), a * c * 1536, dtype=torch.int32)), (march, a, c)


def test_isa_names():
    names = {native.gemm_isa(native.load_library(m)) for m in _variants()}
    assert names <= {"avx512-vnni", "avx-vnni", "avx2", "portable"}
    if "x86-64" in _variants():
        assert "portable" in names


def test_packed_layout_is_two_bits_per_weight():
    codes = torch.randint(-1, 2, (384, 1152), dtype=torch.int8)
    panels = native.pack_gemm_weights(codes)
    assert panels.dtype == torch.uint8 and panels.numel() == 384 * 1152 // 4
    # decode by the documented rule: bits 2j of byte [(p, g), c * 4 + r] = code[4g + r, 64p + 16j + c] + 1
    p, g, j, c, r = 3, 17, 2, 5, 1
    byte = int(panels[p, g, c * 4 + r])
    assert ((byte >> (2 * j)) & 3) - 1 == int(codes[4 * g + r, 64 * p + 16 * j + c])
