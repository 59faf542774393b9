"""Segmentations drawn for people: each class's mask blended over the original image."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import write_jpeg
from torchvision.utils import draw_segmentation_masks

from .palette import voc_palette


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


def save_segmentation_picture(
    path: str | Path, labels: torch.Tensor, out: str | Path, num_classes: int, alpha: float = 0.5
) -> Path:
    """Read the image at ``path`` (upright RGB, see ``datamodules.io``), blend the ``H x W`` label
    map (its original size) over it as ``draw_label_map`` does, and write a JPEG at ``out``."""
    from datamodules.io import read_image

    image = torch.from_numpy(read_image(path)).permute(2, 0, 1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(draw_label_map(image, labels.cpu(), num_classes, alpha), str(out), quality=90)
    return out
