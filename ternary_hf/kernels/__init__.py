"""Inference kernels for packed `TernaryLinear` layers.

Backends (select with `TernaryConfig(backend=...)`, or at run time with `use_backend(name)`):
  auto       per device: `cpu_int8` on CPU, `cuda` on CUDA, `dense` elsewhere or with float activations
  reference  unpack -> dequantize -> float matmul; the definition the others are tested against
  dense      dequantized weight cached once, float matmul
  cpu_int8   per-token int8 activations x int8 codes, `torch._int_mm` (oneDNN), exact int32 accumulation
  cuda       int8 `torch._int_mm` (cuBLASLt) or a cached dense weight in the input dtype
On CPU, BERT-family encoder layers whose linears all run `cpu_int8` also get a fused layer forward
(`fused_layer.py`: the whole layer in one native call, over a 2-bit ternary GEMM), and a `BertModel` made of
them a whole-model forward (`fused_model.py`: embeddings, layers and pooler in two native calls); layers of the
other families described in `families/` (MPNet, ModernBERT, ViT, Qwen3) get the general fused forward
(`generic_layer.py`: merged projections, native GEMMs with fused norm / activation / quantize epilogues, native
attention). All are installed at load (`install.py`); `fused_layers(False)` turns them off for a block of code,
`fused_model.whole_model(False)` the whole-model one. The C sources are `csrc/` (compiled and cached by
`build.py`; `TERNARY_HF_NATIVE=0` turns every native path off, see docs/fast-cpu.md).
All backends compute the layer's numerics: `actquant(x) @ (codes * scale)^T + bias`, where `actquant`
is the layer's `activation_quant` (see `actquant.py`; QAT simulates the same).
"""

from .actquant import TokenQuant, fake_quantize_activations, fake_quantize_per_token, quantize_per_token
from .registry import (
    Backend,
    auto_backend_name,
    available_backends,
    check_backend_name,
    clear_kernel_cache,
    get_backend,
    register_backend,
    resolve_backend,
    ternary_linear,
    use_backend,
)
from . import reference, dense, cpu_int8, cuda  # noqa: E402,F401  (register the backends)
from .fused_layer import fused_layer_count, fused_layers  # noqa: E402
from .generic_layer import generic_layer_count  # noqa: E402
from .install import install_fused_layers, prepare, uninstall_fused_layers  # noqa: E402

__all__ = [
    "Backend",
    "auto_backend_name",
    "available_backends",
    "check_backend_name",
    "clear_kernel_cache",
    "fake_quantize_activations",
    "fake_quantize_per_token",
    "fused_layer_count",
    "fused_layers",
    "generic_layer_count",
    "get_backend",
    "install_fused_layers",
    "TokenQuant",
    "prepare",
    "quantize_per_token",
    "register_backend",
    "resolve_backend",
    "ternary_linear",
    "uninstall_fused_layers",
    "use_backend",
]
