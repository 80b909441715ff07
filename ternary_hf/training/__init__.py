"""Self-distillation of ternary students from their full-precision teacher (`pip install ternary-hf[train]`)."""

from .arguments import DistillationArguments
from .callbacks import TimeBudgetCallback, TrainingProgress
from .checkpointing import last_complete_checkpoint
from .data import DistillationCollator, load_texts, synthesize_long_documents, tokenize_texts
from .images import ImageDistillationCollator, ImagePooling, is_image_encoder, load_images
from .losses import DistillationLoss, LossWeights
from .teacher import TeacherCache, load_pooling, load_teacher
from .recipe import (
    RecipeArguments,
    build_distillation,
    distill,
    load_distillation_texts,
    recipe_distillation_arguments,
    recipe_training_arguments,
)
from .trainer import TernaryDistillationTrainer

__all__ = [
    "DistillationArguments",
    "DistillationCollator",
    "DistillationLoss",
    "ImageDistillationCollator",
    "ImagePooling",
    "LossWeights",
    "RecipeArguments",
    "TeacherCache",
    "TernaryDistillationTrainer",
    "TimeBudgetCallback",
    "TrainingProgress",
    "build_distillation",
    "distill",
    "is_image_encoder",
    "last_complete_checkpoint",
    "load_distillation_texts",
    "load_images",
    "load_pooling",
    "load_teacher",
    "load_texts",
    "recipe_distillation_arguments",
    "recipe_training_arguments",
    "synthesize_long_documents",
    "tokenize_texts",
]
