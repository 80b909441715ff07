"""`TernaryDistillationTrainer`: self-distillation of a ternary (QAT) student from its own
full-precision copy, as a `transformers.Trainer`.

The loss and the training loop live here; the options in `arguments.py`, resumable checkpoints in
`checkpointing.py`, the wall-time budget and the progress display in `callbacks.py`, data preparation in `data.py`
(text) and `images.py`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch import nn
from transformers import ProgressCallback, Trainer

from ..integration import is_ternary_model, ternary_modules
from .arguments import DistillationArguments
from .callbacks import TimeBudgetCallback, TrainingProgress
from .checkpointing import (  # noqa: F401  (CHECKPOINT_MARKER_NAME ... stay importable from here)
    CHECKPOINT_MARKER_NAME,
    LATENT_WEIGHTS_NAME,
    ResumableCheckpoints,
    copy_sentence_transformers_files,
    drop_incomplete_checkpoints,
    is_complete_checkpoint,
    last_complete_checkpoint,
    resolve_resume,
)
from .data import ID_COLUMN, LENGTH_COLUMN, DistillationCollator, prepare_text_dataset
from .images import IMAGE_COLUMNS, ImageDistillationCollator, image_pooling, is_image_encoder, load_images
from .losses import DistillationLoss
from .teacher import TeacherCache, base_model_of, check_teacher_compatible, load_pooling, load_teacher, model_source

logger = logging.getLogger(__name__)


class TernaryDistillationTrainer(ResumableCheckpoints, Trainer):
    """Distil a ternary student (`TernaryConfig(mode="qat")`, or LoRA adapters on a ternary model) from
    its full-precision teacher.

    Args:
        model: the student. Its `TernaryLinear` layers must be in QAT mode, or it must be a PEFT model with
            trainable adapters on a ternary base.
        args: `TrainingArguments` (every flag works; `train_sampling_strategy="group_by_length"` buckets by
            the `length` column this trainer writes).
        train_dataset / eval_dataset: texts: a `datasets.Dataset` with a text column (or pairs), a list of
            strings, or `.txt`/`.jsonl`/`.csv` path(s); or an already tokenised dataset with `input_ids`.
            Images (the student's main input is `pixel_values`, e.g. a `ViTModel`): a `datasets.Dataset` with
            an image or `pixel_values` column, a list of images, or a float tensor `[N, C, H, W]`; see
            `ternary_hf.training.images`. No labels are used either way.
        teacher: the full-precision teacher model or its path; default `distillation_args.teacher`, else the
            student's source checkpoint.
        distillation_args: loss weights and data options (`DistillationArguments`).
        tokenizer / processing_class: the tokenizer, or for images the image processor (default: loaded from
            the student's source; images already given as `pixel_values` need none).
        Other keyword arguments go to `transformers.Trainer`.

    Raises:
        ValueError: before training, on a student that is not ternary/QAT, an incompatible teacher, empty
            data or a missing text column.
    """

    def __init__(
        self,
        model: nn.Module,
        args: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        *,
        teacher: nn.Module | str | None = None,
        distillation_args: DistillationArguments | None = None,
        tokenizer: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        self.distillation_args = dargs = distillation_args or DistillationArguments()
        self._check_student(model)
        source = model_source(model)
        self.is_image_model = is_image_encoder(model)
        processing_class = processing_class or tokenizer
        if processing_class is None and self.is_image_model:
            processing_class = _image_processor_of(source)
        elif processing_class is None:
            if not source:
                raise ValueError("No tokenizer given and the student has no source path: pass tokenizer=.")
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(source)
        self.teacher = load_teacher(model, teacher if teacher is not None else dargs.teacher)
        self.loss_fn = DistillationLoss(dargs.loss_weights(), dargs.intermediate_layers)
        check_teacher_compatible(model, self.teacher,
                                 same_depth=self.loss_fn.needs_hidden_states or self.loss_fn.needs_attentions)
        config = base_model_of(model).config
        if self.is_image_model:
            self.pooling = image_pooling(config, dargs.pooling)
        else:
            self.pooling = load_pooling(source, config.hidden_size, dargs.pooling)
        if self.loss_fn.needs_attentions:
            # sdpa does not return attention probabilities
            for m in (base_model_of(model), self.teacher):
                m.set_attn_implementation("eager")
        if dargs.cache_teacher_outputs and getattr(processing_class, "padding_side", "right") != "right":
            raise ValueError("cache_teacher_outputs needs a right-padding tokenizer (padding_side='right').")
        self.teacher_cache = TeacherCache() if dargs.cache_teacher_outputs else None
        seed = args.seed if args is not None else 42
        if train_dataset is not None:
            train_dataset = self._prepare_dataset(train_dataset, processing_class, "train", dargs.long_documents, seed)
        if eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, "eval", 0, seed)
        if dargs.disable_dropout:
            for m in model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = 0.0
        collator = data_collator or self._default_collator(processing_class)
        calibration_seconds, calibrated_scales = 0.0, {}
        if dargs.calibration_examples and train_dataset is not None:
            start = time.monotonic()
            calibrated_scales = self._calibrate_student(model, train_dataset, collator, dargs.calibration_examples)
            calibration_seconds = time.monotonic() - start
        if dargs.learn_scales:
            for name, layer in ternary_modules(base_model_of(model)):
                if layer.mode == "qat":
                    layer.enable_learned_scale()
                    if name in calibrated_scales:  # the grid the calibration rounded to
                        with torch.no_grad():
                            layer.weight_scale.copy_(calibrated_scales[name].reshape(layer.weight_scale.shape))
        if dargs.freeze_embeddings:
            base_model_of(model).get_input_embeddings().requires_grad_(False)
        self._term_sums: dict[str, float] = {}
        self._term_count = 0
        self._source = source
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=collator,
            **kwargs,
        )
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
        self.teacher.to(self.args.device)
        self.time_budget: TimeBudgetCallback | None = None
        if dargs.time_budget_minutes is not None:
            # the calibration is part of the run: what it took comes out of the budget
            self.time_budget = TimeBudgetCallback(max(dargs.time_budget_minutes * 60.0 - calibration_seconds, 1.0))
            self.add_callback(self.time_budget)
            # the budget, not max_steps, ends the run: the bar counts its seconds
            if self.pop_callback(ProgressCallback) is not None:
                self.add_callback(TrainingProgress(self.time_budget))

    @torch.no_grad()
    def _calibrate_student(self, model: nn.Module, dataset: Any, collator: Any, examples: int) -> dict[str, Any]:
        """Replace the QAT student's latent weights by weights that round to calibrated ternary codes
        (`ternary_hf.calibration`), computed on the teacher (the same float weights) over the first `examples`
        training examples. Returns each layer's calibrated scale."""
        from ..calibration import calibrate_linear_weights, shared_rule
        from ..ternarize import ternarize

        student = base_model_of(model)
        layers = {n: m for n, m in ternary_modules(student) if m.mode == "qat"}
        if not layers:
            return {}
        teacher_modules = dict(self.teacher.named_modules())
        missing = [n for n in layers if not isinstance(teacher_modules.get(n), nn.Linear)]
        if missing:
            raise ValueError(f"calibration: the teacher has no nn.Linear at {missing[:3]}; it must be the student's "
                             "own full-precision architecture (or set calibration_examples=0).")
        n = min(examples, len(dataset))
        batches = []
        for start in range(0, n, 32):
            batch = dict(collator([dataset[i] for i in range(start, min(start + 32, n))]))
            batch.pop(ID_COLUMN, None)
            batch.pop(LENGTH_COLUMN, None)
            batches.append({k: v.to(self.teacher.device) for k, v in batch.items() if torch.is_tensor(v)})
        options = shared_rule(layers)
        scales = {}
        # the latent weight, not the grid point: latent weights sitting on the grid start better (cosine loss
        # 0.24 vs 0.44 at step 10) but then train worse than the plain start (0.128 vs 0.107 at step 300)
        for name, cal in calibrate_linear_weights(self.teacher, layers, batches, **options).items():
            layers[name].weight.copy_(cal.latent.to(layers[name].weight.dtype))
            scales[name] = ternarize(cal.weight, options["rule"], options["granularity"], options["group_size"])[1]
        logger.info("calibrated %d ternary layers on %d examples", len(layers), n)
        return scales

    # ---- validation and data ----

    @staticmethod
    def _check_student(model: nn.Module) -> None:
        if not is_ternary_model(model):
            raise ValueError(
                f"The student {type(model).__name__} has no TernaryLinear layers. Load it ternary for training: "
                "AutoModel.from_pretrained(path, quantization_config=ternary_hf.TernaryConfig(mode='qat'))."
            )
        if any(layer.mode == "qat" for _, layer in ternary_modules(model)):
            return
        is_peft = hasattr(model, "peft_config")
        if not (is_peft and any(p.requires_grad for p in model.parameters())):
            raise ValueError(
                "The student's TernaryLinear layers are packed (inference mode) and frozen: there is nothing "
                "ternary to train. Load it with TernaryConfig(mode='qat'), or attach LoRA adapters "
                "(ternary_hf.peft_integration.ternary_lora_config + peft.get_peft_model)."
            )

    def _default_collator(self, processing_class: Any) -> Any:
        if self.is_image_model:
            return ImageDistillationCollator(processing_class, self.distillation_args.image_column or "image")
        return DistillationCollator(processing_class)

    def _prepare_dataset(self, data: Any, tokenizer: Any, split: str, long_documents: int, seed: int) -> Any:
        dargs = self.distillation_args
        if self.is_image_model:
            if long_documents:
                raise ValueError("DistillationArguments.long_documents applies to text; set it to 0 for images.")
            return load_images(data, dargs.image_column)
        return prepare_text_dataset(data, tokenizer, split, dargs.text_column, dargs.max_length, long_documents,
                                    dargs.long_document_tokens, seed)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = (ID_COLUMN, LENGTH_COLUMN)
        if self.is_image_model:  # raw images reach the collator, which turns them into pixel_values
            extra += tuple(filter(None, (self.distillation_args.image_column,))) + IMAGE_COLUMNS
        for column in extra:
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    # ---- loss ----

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pooling({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]

    @staticmethod
    def _token_mask(inputs: dict[str, torch.Tensor], out: Any) -> torch.Tensor:
        """Which output tokens are real: the attention mask for text; all of them for images (no padding)."""
        mask = inputs.get("attention_mask")
        if mask is not None:
            return mask
        hidden = out.last_hidden_state
        return torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)

    def _collect(self, out: Any, mask: torch.Tensor) -> dict[str, Any]:
        result: dict[str, Any] = {
            "last_hidden_state": out.last_hidden_state,
            "sentence_embedding": self._pool(out.last_hidden_state, mask),
        }
        if self.loss_fn.needs_hidden_states:
            result["hidden_states"] = out.hidden_states
        if self.loss_fn.needs_attentions:
            result["attentions"] = out.attentions
        return result

    def _forward_kwargs(self) -> dict[str, bool]:
        return {
            "output_hidden_states": self.loss_fn.needs_hidden_states,
            "output_attentions": self.loss_fn.needs_attentions,
            "return_dict": True,
        }

    @torch.no_grad()
    def teacher_outputs(self, inputs: dict[str, torch.Tensor], ids: torch.Tensor | None) -> dict[str, Any]:
        """The teacher's outputs for a batch (from the cache when every example is in it)."""
        mask = inputs.get("attention_mask")  # None for images: every token is real
        device = next(v.device for v in inputs.values() if torch.is_tensor(v))
        cache = self.teacher_cache if ids is not None else None
        keys = ("last_hidden_state", "sentence_embedding") + (("hidden_states",) if self.loss_fn.needs_hidden_states else ())
        if cache is not None:
            hit = cache.lookup(ids.tolist(), None if mask is None else mask.cpu(), keys)
            if hit is not None:
                return self._unstack({k: v.to(device) for k, v in hit.items()})
        out = self.teacher(**inputs, **self._forward_kwargs())
        full_mask = self._token_mask(inputs, out)
        result = self._collect(out, full_mask)
        if cache is None:
            return result
        if "hidden_states" in result:
            result["hidden_states"] = torch.stack(result["hidden_states"], dim=1)
        stored = cache.store(ids.tolist(), full_mask.cpu(), {k: v.cpu() for k, v in result.items()})
        return self._unstack({k: v.to(device) for k, v in stored.items()})

    @staticmethod
    def _unstack(outputs: dict[str, Any]) -> dict[str, Any]:
        if "hidden_states" in outputs and torch.is_tensor(outputs["hidden_states"]):
            outputs["hidden_states"] = outputs["hidden_states"].unbind(1)
        return outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Distillation loss of the student against the frozen teacher; each term is logged."""
        inputs = dict(inputs)
        ids = inputs.pop(ID_COLUMN, None)
        inputs.pop(LENGTH_COLUMN, None)
        teacher = self.teacher_outputs(inputs, ids)
        out = model(**inputs, **self._forward_kwargs())
        mask = self._token_mask(inputs, out)
        loss, terms = self.loss_fn(self._collect(out, mask), teacher, mask)
        if model.training:
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach())
            self._term_count += 1
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), _full_strength(model):
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """With a time budget: linear warm-up over `warmup_steps`, then cosine decay over the elapsed fraction
        of the budget. Otherwise the `TrainingArguments` scheduler."""
        if self.time_budget is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        budget = self.time_budget

        def factor(step: int) -> float:
            if step < warmup:
                return step / max(1, warmup)
            return 0.5 * (1.0 + math.cos(math.pi * budget.fraction))

        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # ---- quantization warm-up ----

    def _set_quant_strength(self, strength: float) -> None:
        for _, layer in ternary_modules(self.model):
            layer.quant_strength = strength

    def quant_strength_at(self, step: int) -> float:
        n = self.distillation_args.quant_warmup_steps
        return 1.0 if n <= 0 else min(step / n, 1.0)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.distillation_args.quant_warmup_steps > 0:
            self._set_quant_strength(self.quant_strength_at(self.state.global_step))
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_count:
            for name, total in self._term_sums.items():
                logs[f"loss_{name}"] = round(total / self._term_count, 6)
            if self.distillation_args.quant_warmup_steps > 0:
                logs["quant_strength"] = self.quant_strength_at(self.state.global_step)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)

    # ---- training entry point and saving ----

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` resumes from the newest *complete* checkpoint."""
        resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        if isinstance(resume_from_checkpoint, str) and self.args.should_save:
            drop_incomplete_checkpoints(self.args.output_dir)
        restore_attention = self._set_training_attention()
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            self._set_quant_strength(1.0)  # the trained model is used (and saved) fully ternary
            restore_attention()

    def _set_training_attention(self):
        """Switch the student to `student_attention` for training; returns the function that switches it back."""
        student = base_model_of(self.model)
        current = getattr(student.config, "_attn_implementation", None)
        wanted = self.distillation_args.student_attention
        if wanted == "auto":
            wanted = "eager" if self.args.device.type == "cpu" else current
        if self.loss_fn.needs_attentions or not current or wanted == current:
            return lambda: None  # the attention KL already made it eager (it reads the attention maps)
        student.set_attn_implementation(wanted)
        return lambda: student.set_attn_implementation(current)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Writes the packed ternary model (the quantizer packs QAT layers) and, when the student's source
        is a sentence-transformers model, its module files, so the output loads as a SentenceTransformer."""
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and self._source:
            copy_sentence_transformers_files(self._source, output_dir)


def _image_processor_of(source: str | None) -> Any:
    """The image processor saved with the student's source, or None (data must then be pixel_values)."""
    if not source:
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        return None


class _full_strength:
    """Context manager: evaluate with fully ternary layers (the saved model), whatever the warm-up."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [layer for _, layer in ternary_modules(model)]
        self.saved: list[float] = []

    def __enter__(self) -> None:
        self.saved = [layer.quant_strength for layer in self.layers]
        for layer in self.layers:
            layer.quant_strength = 1.0

    def __exit__(self, *exc: Any) -> None:
        for layer, strength in zip(self.layers, self.saved):
            layer.quant_strength = strength
