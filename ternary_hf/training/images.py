"""Distillation on images: what differs from text is only how examples become model inputs (a collator
that stacks `pixel_values` or runs an image processor) and how token outputs become one embedding
(CLS token or mean of the patch tokens). Everything else in the trainer is shared with text.

Image data can be a `datasets.Dataset` with an image column (PIL images / arrays, turned into
`pixel_values` per batch by the image processor) or a `pixel_values` column, or a float tensor / array
`[N, C, H, W]` of already preprocessed images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import ID_COLUMN

PIXEL_COLUMN = "pixel_values"
# Column names tried, in order, when none is given.
IMAGE_COLUMNS = (PIXEL_COLUMN, "image", "img", "images", "pixels")
IMAGE_POOLING_MODES = ("cls", "mean")


def is_image_encoder(model: nn.Module) -> bool:
    """Whether the model's main input is `pixel_values` (ViT, DeiT, DINOv2, ...) rather than token ids."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    return getattr(base, "main_input_name", "input_ids") == PIXEL_COLUMN


class TensorImageDataset(torch.utils.data.Dataset):
    """Preprocessed images `[N, C, H, W]` as a dataset of `{"pixel_values", "example_id"}` examples."""

    def __init__(self, pixel_values: torch.Tensor) -> None:
        self.pixel_values = pixel_values

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {PIXEL_COLUMN: self.pixel_values[index], ID_COLUMN: index}


def _resolve_image_column(column_names: list[str], image_column: str | None) -> str:
    if image_column is not None:
        if image_column not in column_names:
            raise ValueError(
                f"image column {image_column!r} not in the dataset; its columns are {column_names}. "
                "Set image_column to one of them."
            )
        return image_column
    for name in IMAGE_COLUMNS:
        if name in column_names:
            return name
    raise ValueError(
        f"no image column found in the dataset (columns: {column_names}); expected one of {list(IMAGE_COLUMNS)}. "
        "Set image_column=<name>."
    )


def load_images(source: Any, image_column: str | None = None) -> Any:
    """Distillation images as a dataset whose examples hold one image column (or `pixel_values`) and
    `example_id` (the row index, for the teacher-output cache).

    Args:
        source: a float tensor or numpy array `[N, C, H, W]` of preprocessed images; a `datasets.Dataset` /
            `DatasetDict` (its `train` split) with an image or `pixel_values` column; or a list of images
            (PIL images or `[H, W(, C)]` arrays), which the image processor preprocesses per batch.
        image_column: the column holding the images. Default: the first of `pixel_values`, `image`, `img`, ...

    Raises:
        ValueError: empty data, no image column, or a tensor that is not `[N, C, H, W]`.
    """
    import datasets
    import numpy as np

    if isinstance(source, np.ndarray):
        source = torch.from_numpy(source)
    if torch.is_tensor(source):
        if source.dim() != 4 or not source.is_floating_point():
            raise ValueError(
                f"image tensor must be float [N, C, H, W] (preprocessed pixel_values); got {source.dtype} "
                f"{list(source.shape)}. Normalise it, or pass raw images with an image processor."
            )
        if source.shape[0] == 0:
            raise ValueError("the image tensor is empty: there is nothing to distil on.")
        return TensorImageDataset(source)
    if isinstance(source, datasets.DatasetDict):
        if "train" not in source:
            raise ValueError(f"DatasetDict has no 'train' split (splits: {list(source)}); pass the split to use.")
        source = source["train"]
    if isinstance(source, (list, tuple)):
        source = datasets.Dataset.from_dict({"image": list(source)})
    if not isinstance(source, datasets.Dataset):
        raise TypeError(
            f"unsupported image data {type(source).__name__}: pass a datasets.Dataset with an image column, a list "
            "of images, or a float tensor [N, C, H, W]."
        )
    if len(source) == 0:
        raise ValueError("the image dataset is empty: there is nothing to distil on.")
    column = _resolve_image_column(source.column_names, image_column)
    source = source.select_columns([column])
    return source.add_column(ID_COLUMN, list(range(len(source))))


@dataclass
class ImageDistillationCollator:
    """Batches image examples: stacks `pixel_values`, or runs `image_processor` on the raw images of
    `image_column`; keeps `example_id`."""

    image_processor: Any = None
    image_column: str = "image"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        first = features[0]
        if PIXEL_COLUMN in first:
            pixels = torch.stack([torch.as_tensor(f[PIXEL_COLUMN], dtype=torch.float32) for f in features])
        else:
            column = self.image_column if self.image_column in first else next(
                (c for c in IMAGE_COLUMNS if c in first), None)
            if column is None:
                raise ValueError(f"image example has no image column: keys {sorted(first)}; set image_column.")
            if self.image_processor is None or not callable(self.image_processor):
                raise ValueError(
                    f"the images in column {column!r} need an image processor to become pixel_values: pass "
                    "processing_class=AutoImageProcessor.from_pretrained(...), or preprocessed pixel_values."
                )
            pixels = self.image_processor([f[column] for f in features], return_tensors="pt")[PIXEL_COLUMN]
        batch = {PIXEL_COLUMN: pixels}
        if ID_COLUMN in first:
            batch[ID_COLUMN] = torch.tensor([int(f[ID_COLUMN]) for f in features], dtype=torch.long)
        return batch


def num_prefix_tokens(config: Any) -> int:
    """Tokens before the patch tokens in a vision encoder's output: CLS, DeiT's distillation token,
    DINOv2's register tokens."""
    n = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    return n + 1 if getattr(config, "model_type", "") == "deit" else n


class ImagePooling(nn.Module):
    """One embedding per image from the encoder's tokens: `cls` (the first token, as ViT classifiers and
    the source paper's linear probes use it) or `mean` (mean of the patch tokens, prefix tokens excluded).
    Same call convention as sentence-transformers' `Pooling`: `{"token_embeddings"} -> {"sentence_embedding"}`.
    """

    def __init__(self, mode: str = "cls", prefix_tokens: int = 1) -> None:
        super().__init__()
        if mode not in IMAGE_POOLING_MODES:
            raise ValueError(f"image pooling must be one of {list(IMAGE_POOLING_MODES)} (or 'auto' = cls), got {mode!r}.")
        self.mode = mode
        self.prefix_tokens = prefix_tokens

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = features["token_embeddings"]
        pooled = tokens[:, 0] if self.mode == "cls" else tokens[:, self.prefix_tokens:].mean(dim=1)
        return {**features, "sentence_embedding": pooled}


def image_pooling(config: Any, mode: str = "auto") -> ImagePooling:
    """The pooling for a vision encoder: `auto` = `cls`."""
    return ImagePooling("cls" if mode == "auto" else mode, num_prefix_tokens(config))
