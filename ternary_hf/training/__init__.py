"""Self-distillation of ternary students from their full-precision teacher (`pip install ternary-hf[train]`)."""

from .data import DistillationCollator, load_texts, synthesize_long_documents, tokenize_texts
from .images import ImageDistillationCollator, ImagePooling, is_image_encoder, load_images
from .losses import DistillationLoss, LossWeights
from .teacher import TeacherCache, load_pooling, load_teacher
from .trainer import DistillationArguments, TernaryDistillationTrainer, last_complete_checkpoint

__all__ = [
    "DistillationArguments",
    "DistillationCollator",
    "DistillationLoss",
    "ImageDistillationCollator",
    "ImagePooling",
    "LossWeights",
    "TeacherCache",
    "TernaryDistillationTrainer",
    "is_image_encoder",
    "last_complete_checkpoint",
    "load_images",
    "load_pooling",
    "load_teacher",
    "load_texts",
    "synthesize_long_documents",
    "tokenize_texts",
]
