"""`DistillationArguments`: every option of ternary self-distillation that is not a `TrainingArguments` field.

A plain dataclass, so that `HfArgumentParser` turns it into command-line flags (`ternary-hf distill`) and the recipe
(`training/recipe.py`) and user code build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .losses import LossWeights


@dataclass
class DistillationArguments:
    """Options of ternary self-distillation (everything that is not a `TrainingArguments` field)."""

    teacher: str | None = field(
        default=None,
        metadata={"help": "Full-precision teacher (path or Hub id). Default: the student's own source "
                  "checkpoint (`config._name_or_path`)."},
    )
    text_column: str | None = field(
        default=None,
        metadata={"help": "Dataset column with the texts ('a,b' for pairs: each side is a text). Default: "
                  "`text`, `sentence`, ... or a known pair such as sentence1/sentence2."},
    )
    image_column: str | None = field(
        default=None,
        metadata={"help": "Image encoders: dataset column with the images (raw images, preprocessed per batch by "
                  "the image processor) or pixel_values. Default: pixel_values, image, img, ..."},
    )
    max_length: int = field(
        default=256, metadata={"help": "Truncate texts to this many tokens (batches are padded only to their longest)."}
    )
    long_documents: int = field(
        default=0,
        metadata={"help": "Add this many synthetic long documents (random training texts joined to about "
                  "`long_document_tokens` tokens), so the student also matches the teacher on long inputs."},
    )
    long_document_tokens: int = field(default=200, metadata={"help": "Target length of the synthetic long documents."})
    hidden_mse_weight: float = field(
        default=1.0, metadata={"help": "Weight of the MSE between last hidden states, over real tokens."}
    )
    cosine_weight: float = field(
        default=1.0, metadata={"help": "Weight of 1 - cosine between the pooled sentence embeddings."}
    )
    intermediate_mse_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the MSE between intermediate hidden states, layer by layer (0 = off). Cheap: "
                  "the teacher computes these states anyway. Set 0 when the student's depth differs from the "
                  "teacher's."},
    )
    intermediate_layers: list[int] | None = field(
        default=None,
        metadata={"help": "hidden_states indices for the intermediate MSE (0 = embeddings). Default: all but the last."},
    )
    attention_kl_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of KL(teacher || student) between attention maps (TernaryBERT; 0 = off). Needs "
                  "eager attention and makes each step slower; use it when you train by steps rather than by a "
                  "time budget."},
    )
    student_attention: str = field(
        default="auto",
        metadata={"help": "Attention implementation of the student while it trains (restored afterwards): `auto` "
                  "= eager on CPU (the faster backward there for short sequences; same function), the model's own "
                  "elsewhere; or eager / sdpa / any transformers attn_implementation."},
    )
    pooling: str = field(
        default="auto",
        metadata={"help": "Pooling for the cosine term. Text: `auto` (the model's sentence-transformers "
                  "pooling, else mean), or mean / cls / max / mean_sqrt_len_tokens / weightedmean / lasttoken. "
                  "Images: `auto` = cls (the CLS token), or mean (mean of the patch tokens)."},
    )
    relational_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the in-batch relational KL: teacher vs student softmax over each sentence's "
                  "cosine to the other sentences of the batch (neighbour order, what retrieval reads); 0 = off. "
                  "Use it only with batches of related texts: with unrelated in-batch neighbours it pulls the "
                  "student away from the teacher (see benchmarks/README.md)."},
    )
    relational_temperature: float = field(
        default=0.05, metadata={"help": "Temperature of the relational KL's softmax over cosines."}
    )
    quant_warmup_steps: int = field(
        default=0,
        metadata={"help": "Ramp quantization in over this many steps (strength = min(step / N, 1)); 0 = fully "
                  "ternary from the first step."},
    )
    cache_teacher_outputs: bool = field(
        default=False,
        metadata={"help": "Keep each example's teacher outputs in memory after its first use, so later epochs "
                  "skip the teacher forward (memory: about tokens x hidden x 2 bytes)."},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Set the student's dropout to 0: the student should reproduce the teacher's "
                  "(eval-mode) function, not a noisy version of it."},
    )
    learn_scales: bool = field(
        default=True,
        metadata={"help": "Train each ternary layer's scale (per row / group) as a parameter, initialised from "
                  "the rule's scale; the rule still picks the codes. Same checkpoint format."},
    )
    time_budget_minutes: float | None = field(
        default=None,
        metadata={"help": "Train for this much wall time: the learning rate warms up over `warmup_steps` then "
                  "follows a cosine decay over the *time* budget, and training stops when it is spent (set "
                  "max_steps high). Wall time is measured by rank 0 and shared with the other ranks. 0 or unset: "
                  "no budget (the TrainingArguments schedule over max_steps)."},
    )
    calibration_examples: int = field(
        default=0,
        metadata={"help": "Start the student from calibrated ternary codes (GPTQ for ternary, "
                  "`ternary_hf.calibration`) computed on this many training examples instead of the plain rule's "
                  "rounding; 0 = off. Its time is taken out of time_budget_minutes. Useful for very short runs "
                  "(a few hundred steps or fewer): the head start it gives fades as training goes on."},
    )
    freeze_embeddings: bool = field(
        default=False,
        metadata={"help": "Freeze the student's input (word) embeddings; they stay full precision anyway."},
    )

    def loss_weights(self) -> LossWeights:
        return LossWeights(self.hidden_mse_weight, self.cosine_weight, self.intermediate_mse_weight,
                           self.attention_kl_weight, self.relational_weight, self.relational_temperature)

    def __post_init__(self) -> None:
        self.loss_weights()  # validates the weights
        for name in ("max_length", "long_document_tokens"):
            if getattr(self, name) < 2:
                raise ValueError(f"DistillationArguments.{name} must be >= 2, got {getattr(self, name)}.")
        if self.time_budget_minutes is not None:
            if self.time_budget_minutes < 0:
                raise ValueError(
                    f"DistillationArguments.time_budget_minutes must be >= 0, got {self.time_budget_minutes}."
                )
            if self.time_budget_minutes == 0:  # 0 = no budget: the TrainingArguments schedule over max_steps
                self.time_budget_minutes = None
        for name in ("long_documents", "quant_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"DistillationArguments.{name} must be >= 0, got {getattr(self, name)}.")
        if self.cache_teacher_outputs and self.attention_kl_weight > 0:
            raise ValueError(
                "cache_teacher_outputs cannot be combined with attention_kl_weight > 0 (attention maps are "
                "seq x seq per head: too large to cache); disable one of them."
            )
