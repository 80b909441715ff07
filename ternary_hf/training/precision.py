"""Which training precision this CPU runs fastest.

Distillation is matmul-bound. On CPUs with native bf16 dot products (AVX-512 BF16, AMX) oneDNN runs bf16
matmuls about twice as fast as fp32, and a distillation step (teacher forward + student forward/backward
under `torch.autocast`) takes about half the time; the loss terms are still computed in fp32. Elsewhere
bf16 is emulated and slower than fp32, so the recipe only turns it on where it is native.
"""

from __future__ import annotations

import functools

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises native bf16 arithmetic (Linux `/proc/cpuinfo` flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)
    except OSError:
        pass
    return False


def cpu_bf16_training_defaults() -> dict[str, bool]:
    """`TrainingArguments` overrides that train in bf16 autocast on a CPU-only machine with native bf16
    (transformers wants `use_cpu=True` to accept `bf16` without an accelerator); empty elsewhere."""
    import torch

    if torch.cuda.is_available() or not cpu_has_native_bf16():
        return {}
    return {"bf16": True, "use_cpu": True}
