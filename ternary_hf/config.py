"""`TernaryConfig`: the one place where ternary quantization options are declared and validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

QUANT_METHOD = "ternary"

GRANULARITIES = ("per_tensor", "per_channel", "per_group")
RULES = ("twn", "absmean", "paper")
MODES = ("inference", "qat")
BACKENDS = ("auto", "reference")
EMBEDDING_DTYPES = ("float", "int8", "int4", "ternary")
BACKENDS = ("auto", "reference", "dense", "cpu_int8", "cuda")
# How activations entering a TernaryLinear are quantized (the math: `ternary_hf/kernels/actquant.py`).
ACTIVATION_QUANTS = ("per_token_int8", "none")
MAX_ACTIVATION_OUTLIERS = 8

# Written into every saved config so that someone who opens config.json without the plugin
# installed learns what to do (transformers itself only says "Unknown quantization type").
LOADER_HINT = (
    "This checkpoint stores packed 2-bit ternary weights. Install the plugin (pip install ternary-hf) "
    "and run `import ternary_hf` before `from_pretrained`; without it transformers builds a plain "
    "model and fails on the packed shapes (or, with ignore_mismatched_sizes=True, returns random weights)."
)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"TernaryConfig.{name}={value!r} is invalid; allowed values: {', '.join(allowed)}.")


@dataclass
class TernaryConfig(QuantizationConfigMixin):
    """Configuration of ternary (`{-1, 0, +1} x scale`) weight quantization.

    Pass it as `quantization_config=` to `from_pretrained` (or inside a SentenceTransformer's
    `model_kwargs`) to ternarize every `nn.Linear` whose weight is in the checkpoint. The default
    (`per_channel` + `twn`) kept the most quality without training on all-MiniLM-L6-v2 of all
    rule/granularity pairs we measured (see `benchmarks/ptq_rules.py`).
    """

    granularity: str = field(
        default="per_channel",
        metadata={"help": "Scale granularity: `per_tensor` (one scale per matrix), `per_channel` (one per "
                  "output row) or `per_group` (one per `group_size` consecutive inputs of a row)."},
    )
    group_size: int = field(
        default=128, metadata={"help": "Inputs sharing one scale when granularity='per_group'; must divide in_features."}
    )
    rule: str = field(
        default="twn",
        metadata={"help": "Ternarization rule: `twn` (threshold 0.7*mean|W|, scale = mean of kept |W|), "
                  "`absmean` (BitNet b1.58: scale = mean|W|, codes = clamp(round(W/scale), -1, 1)), "
                  "`paper` (arXiv 2411.15438: scale = 2*mean|W|, codes = clamp(round(W/scale), -1, 1))."},
    )
    mode: str = field(
        default="inference",
        metadata={"help": "`inference`: packed 2-bit buffers, frozen. `qat`: latent full-precision weights "
                  "ternarized in the forward with a straight-through estimator, for training. A saved "
                  "checkpoint is always packed and reloads in `inference` mode."},
    )
    modules_to_not_convert: list[str] | None = field(
        default=None,
        metadata={"help": "Module names (prefix, regex or suffix, as in transformers) kept in full precision."},
    )
    embedding_dtype: str = field(
        default="float",
        metadata={"help": "`float`: embedding tables stay in the dtype the model is loaded with. `int8`: int8 rows x a "
                  "per-row scale (4x smaller; in small encoders the embedding table is most of the checkpoint). "
                  "`int4`: 4-bit codes, two per byte, one scale per `embedding_group_size` values of a row (~7x "
                  "smaller). `ternary`: 2-bit packed {-1,0,+1} rows x a per-row scale from `rule` (~15x smaller, "
                  "lossier). Rows are dequantized on lookup, never the whole table (`ternary_hf/embedding.py`). "
                  "Tables tied to an output layer (MLM decoders) stay float, with a warning naming them."},
    )
    embedding_group_size: int = field(
        default=64,
        metadata={"help": "Values of a row sharing one scale when embedding_dtype='int4'; must be even and divide "
                  "the embedding dimension."},
    )
    backend: str = field(
        default="auto",
        metadata={"help": "Inference kernel backend for TernaryLinear: `auto` (the fastest for the input's device: "
                  "`cpu_int8` on CPU, `cuda` on CUDA), `reference` (unpack -> float matmul, the plain "
                  "computation every other backend is tested against), `dense` (dequantized weight cached once, "
                  "float matmul), `cpu_int8` (int8 x ternary-code GEMM with `torch._int_mm`; needs "
                  "activation_quant='per_token_int8'), `cuda`. Override at run time with "
                  "`ternary_hf.kernels.use_backend(name)`."},
    )
    activation_quant: str = field(
        default="per_token_int8",
        metadata={"help": "Activation quantization of every TernaryLinear input, part of the model's numerics in "
                  "all backends and simulated (straight-through) in `qat` mode so training sees what is served: "
                  "`per_token_int8` (symmetric, one absmax/127 scale per token; what makes the CPU int8 kernel "
                  "possible) or `none` (float activations)."},
    )
    activation_outliers: int = field(
        default=1,
        metadata={"help": "With per_token_int8: how many largest-magnitude entries of each token stay in float "
                  f"(0-{MAX_ACTIVATION_OUTLIERS}), multiplied by their weight columns in float, so that one "
                  "outlier channel does not set the int8 scale of the whole token."},
    )
    quant_method: str = field(default=QUANT_METHOD, metadata={"help": "Always 'ternary' (the registered name)."})

    def __post_init__(self) -> None:
        self.post_init()

    def post_init(self) -> None:
        """Validate every field; raise `ValueError` naming the field and its allowed values."""
        if self.quant_method != QUANT_METHOD:
            raise ValueError(f"TernaryConfig.quant_method must be {QUANT_METHOD!r}, got {self.quant_method!r}.")
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("rule", self.rule, RULES)
        _choice("mode", self.mode, MODES)
        _choice("backend", self.backend, BACKENDS)
        _choice("embedding_dtype", self.embedding_dtype, EMBEDDING_DTYPES)
        _choice("activation_quant", self.activation_quant, ACTIVATION_QUANTS)
        if (isinstance(self.activation_outliers, bool) or not isinstance(self.activation_outliers, int)
                or not 0 <= self.activation_outliers <= MAX_ACTIVATION_OUTLIERS):
            raise ValueError(
                f"TernaryConfig.activation_outliers must be an integer from 0 to {MAX_ACTIVATION_OUTLIERS}, "
                f"got {self.activation_outliers!r}."
            )
        if self.backend == "cpu_int8" and self.activation_quant != "per_token_int8":
            raise ValueError(
                "TernaryConfig.backend='cpu_int8' multiplies int8 activations, so it needs "
                f"activation_quant='per_token_int8' (got {self.activation_quant!r}); use backend='auto' or 'dense'."
            )
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"TernaryConfig.group_size must be a positive integer, got {self.group_size!r}.")
        if (isinstance(self.embedding_group_size, bool) or not isinstance(self.embedding_group_size, int)
                or self.embedding_group_size < 2 or self.embedding_group_size % 2):
            raise ValueError(
                f"TernaryConfig.embedding_group_size must be an even integer >= 2, got {self.embedding_group_size!r}."
            )
        if self.modules_to_not_convert is not None:
            if isinstance(self.modules_to_not_convert, str) or not all(
                isinstance(m, str) for m in self.modules_to_not_convert
            ):
                raise ValueError(
                    "TernaryConfig.modules_to_not_convert must be a list of module-name strings, "
                    f"got {self.modules_to_not_convert!r}."
                )
            self.modules_to_not_convert = list(self.modules_to_not_convert)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        """Build from a `config.json` entry; unknown fields are an error (they signal a mismatched checkpoint)."""
        config_dict = {k: v for k, v in config_dict.items() if k != "loader_hint"}
        unknown = sorted(set(config_dict) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"Unknown TernaryConfig field(s) in quantization_config: {', '.join(unknown)}. "
                f"Known fields: {', '.join(cls.field_names())}. Was this checkpoint written by a newer ternary-hf?"
            )
        config = cls(**config_dict)
        unused = {}
        for key, value in kwargs.items():
            if key in cls.field_names():
                setattr(config, key, value)
            else:
                unused[key] = value
        config.post_init()
        return (config, unused) if return_unused_kwargs else config

    def to_dict(self) -> dict[str, Any]:
        """The serialized form describes a *saved checkpoint*, which is always packed: `mode` is written as
        `inference` even for a QAT config, so the checkpoint reloads as the packed model it holds."""
        out = dataclasses.asdict(self)
        out["mode"] = "inference"
        out["loader_hint"] = LOADER_HINT
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __repr__(self) -> str:  # the mixin's repr goes through to_dict, which rewrites `mode`
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"TernaryConfig({fields})"
