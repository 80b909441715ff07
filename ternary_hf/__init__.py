"""ternary-hf: ternary-weight embedding models for the Hugging Face stack.

`import ternary_hf` registers the `ternary` quantization method with transformers, so that
`from_pretrained(..., quantization_config=TernaryConfig())` ternarizes a model on load and
`from_pretrained(packed_dir)` reloads a saved ternary checkpoint.
"""

from .version import __version__  # noqa: E402,F401

from .config import TernaryConfig  # noqa: E402
from .layer import TernaryLinear  # noqa: E402
from .embedding import Int8Embedding, QuantizedEmbedding  # noqa: E402
from .integration import dequantize_modules, freeze_to_inference, is_ternary_model  # noqa: E402
from .quantizer import TernaryHfQuantizer, register  # noqa: E402
from .footprint import Footprint, footprint  # noqa: E402
from .hub import CardInfo, build_model_card, enable_push_to_hub, push_checkpoint, push_to_hub, render_model_card  # noqa: E402

register()

__all__ = [
    "CardInfo",
    "Footprint",
    "Int8Embedding",
    "QuantizedEmbedding",
    "TernaryConfig",
    "TernaryHfQuantizer",
    "TernaryLinear",
    "build_model_card",
    "dequantize_modules",
    "enable_push_to_hub",
    "footprint",
    "freeze_to_inference",
    "is_ternary_model",
    "push_checkpoint",
    "push_to_hub",
    "register",
    "render_model_card",
]

# Heavier parts (training needs datasets/peft, ONNX export needs onnx) load on first use.
_LAZY = {
    "TernaryDistillationTrainer": "ternary_hf.training",
    "DistillationArguments": "ternary_hf.training",
    "export_onnx": "ternary_hf.onnx_export",
    "compress": "ternary_hf.compress",
    "prune_vocabulary": "ternary_hf.vocab",
    "check_tokenizer": "ternary_hf.vocab",
    "VocabularyMismatchError": "ternary_hf.vocab",
    "reduce_output_dimension": "ternary_hf.dimension",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ternary_hf' has no attribute {name!r}")
