"""Batching: uint8 samples in, the contract's float batches out.

Samples that a dataset skipped (``None``) are dropped here. Images leave as float32
``N x 3 x H x W`` in [0, 1]; segmentation images of different sizes are padded at the
bottom/right to a common size rounded up to ``size_divisor`` (image: the model's mean colour,
mask: 255), so the padding is ignored by the loss and the metric and normalises to zero.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from core.constants import IGNORE_INDEX, mean_fill


def pad_images(
    images: Sequence[torch.Tensor], size_divisor: int = 1, fill: Sequence[int] = mean_fill()
) -> torch.Tensor:
    """Stack uint8 ``3 x h_i x w_i`` images into float32 ``N x 3 x H x W`` in [0, 1], padding
    bottom/right with the uint8 colour ``fill`` to the largest size rounded up to ``size_divisor``."""
    height, width = _padded_size([img.shape[-2:] for img in images], size_divisor)
    batch = torch.empty((len(images), 3, height, width), dtype=torch.uint8)
    batch[:] = torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1)
    for out, img in zip(batch, images):
        out[:, : img.shape[-2], : img.shape[-1]] = img
    return batch.float().div_(255)


def pad_masks(masks: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Stack ``h_i x w_i`` class-index masks into int64 ``N x H x W``, padding with 255 (ignore)."""
    batch = torch.full((len(masks), *size), IGNORE_INDEX, dtype=torch.int64)
    for out, mask in zip(batch, masks):
        out[: mask.shape[-2], : mask.shape[-1]] = mask
    return batch


def _padded_size(sizes: Sequence[Sequence[int]], size_divisor: int) -> tuple[int, int]:
    height = max(int(s[0]) for s in sizes)
    width = max(int(s[1]) for s in sizes)
    return math.ceil(height / size_divisor) * size_divisor, math.ceil(width / size_divisor) * size_divisor


def detection_collate(batch: Sequence[Any]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``[(uint8 3 x S x S, target)]`` -> ``(float32 N x 3 x S x S in [0, 1], [target])``."""
    samples = [s for s in batch if s is not None]
    if not samples:
        return torch.zeros((0, 3, 0, 0)), []
    images = torch.stack([s[0] for s in samples]).float().div_(255)
    return images, [s[1] for s in samples]


class SegmentationCollate:
    """``[(uint8 3 x h x w, uint8 h x w)]`` -> ``(float32 N x 3 x H x W, int64 N x H x W)``, padded
    with ``fill`` (image) and 255 (mask)."""

    def __init__(self, size_divisor: int = 32, fill: Sequence[int] = mean_fill()) -> None:
        self.size_divisor = size_divisor
        self.fill = tuple(fill)

    def __call__(self, batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [s for s in batch if s is not None]
        if not samples:
            return torch.zeros((0, 3, 0, 0)), torch.zeros((0, 0, 0), dtype=torch.int64)
        images = pad_images([s[0] for s in samples], self.size_divisor, self.fill)
        return images, pad_masks([s[1] for s in samples], tuple(images.shape[-2:]))


class PredictCollate(SegmentationCollate):
    """``[(uint8 3 x h x w, meta)]`` -> ``(float32 N x 3 x H x W, [meta])``, padded with ``fill`` if sizes differ."""

    def __call__(self, batch: Sequence[Any]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        samples = [s for s in batch if s is not None]
        if not samples:
            return torch.zeros((0, 3, 0, 0)), []
        return pad_images([s[0] for s in samples], self.size_divisor, self.fill), [s[1] for s in samples]
