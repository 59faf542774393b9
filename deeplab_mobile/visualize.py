"""Segmentations drawn for people: each class's mask blended over the original image."""

from __future__ import annotations

import torch
from torchvision.utils import draw_segmentation_masks

from core.constants import voc_palette


def draw_label_map(image: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float = 0.5) -> torch.Tensor:
    """``image`` uint8 ``3 x H x W`` with the ``H x W`` label map blended over it.

    Classes ``1..num_classes-1`` get their VOC palette colour (the colours of the palette PNGs
    written next to the picture); background (0) and ignore (255) stay unpainted.
    """
    if labels.shape != image.shape[-2:]:
        raise ValueError(f"label map {tuple(labels.shape)} does not fit image {tuple(image.shape[-2:])}")
    classes = torch.arange(1, num_classes, device=labels.device)
    masks = labels[None] == classes[:, None, None]  # (C - 1) x H x W, one bool mask per class
    palette = voc_palette()
    colours = [tuple(palette[3 * k : 3 * k + 3]) for k in classes.tolist()]
    return draw_segmentation_masks(image, masks.cpu(), alpha=alpha, colors=colours)
