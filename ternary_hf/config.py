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
EMBEDDING_DTYPES = ("float", "int8")

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
        metadata={"help": "`float`: embedding tables stay in the dtype the model is loaded with. `int8`: stored "
                  "as int8 rows x a per-row scale (4x smaller; in small encoders the embedding table is most of "
                  "the checkpoint). Tables tied to an output layer (MLM decoders) always stay float."},
    )
    backend: str = field(
        default="auto",
        metadata={"help": "Inference kernel backend for TernaryLinear; `auto` picks the fastest for the device."},
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
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"TernaryConfig.group_size must be a positive integer, got {self.group_size!r}.")
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
