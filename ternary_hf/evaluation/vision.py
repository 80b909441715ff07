"""Image encoders: pooled embeddings of images, and the two standard ways to score frozen features
(a linear probe, as the source paper scores its ternary ViT on CIFAR, and k-nearest-neighbour accuracy).
The scoring functions take plain feature arrays, so they serve text embeddings just as well."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def encode_images(
    model: nn.Module,
    images: torch.Tensor | Sequence[Any],
    pooling: str = "cls",
    batch_size: int = 256,
    image_processor: Any = None,
) -> np.ndarray:
    """Pooled embeddings `[N, hidden]` (float32) of `images` under a vision encoder that returns
    `last_hidden_state` (e.g. `ViTModel`, fp32 or ternary), computed in eval mode.

    Args:
        model: the encoder.
        images: preprocessed `pixel_values` `[N, C, H, W]`, or a list of raw images (with `image_processor`).
        pooling: `cls` (first token) or `mean` (mean of the patch tokens); `auto` = `cls`.
        batch_size: images per forward pass.
        image_processor: turns raw images into `pixel_values` (e.g. `AutoImageProcessor.from_pretrained`).
    """
    from ..training.images import PIXEL_COLUMN, ImageDistillationCollator, image_pooling

    pool = image_pooling(model.config, pooling)
    collate = ImageDistillationCollator(image_processor)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels = chunk if torch.is_tensor(chunk) else collate([{"image": im} for im in chunk])[PIXEL_COLUMN]
            hidden = model(pixel_values=pixels.to(device)).last_hidden_state
            out.append(pool({"token_embeddings": hidden})["sentence_embedding"].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def _check(train_x: np.ndarray, train_y: Any, test_x: np.ndarray, test_y: Any) -> tuple[np.ndarray, ...]:
    train_x, test_x = np.asarray(train_x, dtype=np.float32), np.asarray(test_x, dtype=np.float32)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be [n, dim] with the same dim; got train {train_x.shape}, test {test_x.shape}.")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"{len(train_x)} train / {len(test_x)} test features but {len(train_y)} / {len(test_y)} labels.")
    return train_x, train_y, test_x, test_y


def linear_probe_accuracy(
    train_x: np.ndarray, train_y: Any, test_x: np.ndarray, test_y: Any, c: float = 1.0, max_iter: int = 1000
) -> float:
    """Test accuracy of a logistic regression trained on frozen `train_x` features (standardised with the
    training set's mean and std, so that one `c` suits fp32 and ternary features alike)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y, test_x, test_y = _check(train_x, train_y, test_x, test_y)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def knn_accuracy(train_x: np.ndarray, train_y: Any, test_x: np.ndarray, test_y: Any, k: int = 10) -> float:
    """Test accuracy of a cosine k-nearest-neighbour vote (distance-weighted) over the `train_x` features."""
    from sklearn.neighbors import KNeighborsClassifier

    train_x, train_y, test_x, test_y = _check(train_x, train_y, test_x, test_y)
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance", algorithm="brute")
    knn.fit(train_x, train_y)
    return float(knn.score(test_x, test_y))
