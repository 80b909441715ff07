"""bf16 training support: the recipe's precision switch and fp32 loss arithmetic under bf16 inputs."""

import torch

from ternary_hf.training import precision
from ternary_hf.training.losses import attention_kl, cosine_distance, masked_mse


def test_bf16_defaults_follow_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.cpu_bf16_training_defaults() == {"bf16": True, "use_cpu": True}
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.cpu_bf16_training_defaults() == {}
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU run picks its own precision
    assert precision.cpu_bf16_training_defaults() == {}


def test_cpu_flag_detection_reads_cpuinfo(tmp_path, monkeypatch):
    import builtins

    fake = tmp_path / "cpuinfo"
    real_open = builtins.open

    def fake_open(path, *a, **k):
        return real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    for flags, expected in (("fpu avx2 avx512f", False), ("fpu avx2 avx512f avx512_bf16", True), ("amx_bf16", True)):
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        precision.cpu_has_native_bf16.cache_clear()
        assert precision.cpu_has_native_bf16() is expected
    precision.cpu_has_native_bf16.cache_clear()


def test_losses_compute_in_fp32_from_bf16_inputs():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 9, 16, generator=g)
    s = t + 1e-3 * torch.randn(4, 9, 16, generator=g)  # residuals far below bf16's resolution of t
    mask = torch.ones(4, 9)
    exact = masked_mse(s, t, mask)
    # the student output rounded to bf16 (what autocast produces) still gives an fp32 loss of the right size,
    # computed without a second rounding of the difference
    got = masked_mse(s.bfloat16(), t, mask)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ((s.bfloat16().float() - t) ** 2).mean(), rtol=1e-5)
    assert exact.dtype == torch.float32
    cos = cosine_distance(s[:, 0].bfloat16(), t[:, 0])
    assert cos.dtype == torch.float32
    p = torch.softmax(torch.randn(2, 3, 5, 5, generator=g), -1)
    assert attention_kl(p.bfloat16(), p, torch.ones(2, 5)).dtype == torch.float32
