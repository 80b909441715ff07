"""Self-distillation of ternary students from their full-precision teacher (`pip install ternary-hf[train]`)."""

from .data import DistillationCollator, load_texts, synthesize_long_documents, tokenize_texts
from .losses import DistillationLoss, LossWeights
from .teacher import TeacherCache, load_pooling, load_teacher
from .trainer import DistillationArguments, TernaryDistillationTrainer, last_complete_checkpoint

__all__ = [
    "DistillationArguments",
    "DistillationCollator",
    "DistillationLoss",
    "LossWeights",
    "TeacherCache",
    "TernaryDistillationTrainer",
    "last_complete_checkpoint",
    "load_pooling",
    "load_teacher",
    "load_texts",
    "synthesize_long_documents",
    "tokenize_texts",
]
