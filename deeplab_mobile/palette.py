"""Label maps as palette PNGs in the PASCAL VOC format (``SegmentationClass`` style)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def voc_palette() -> list[int]:
    """The VOC devkit's ``labelcolormap(256)`` flattened to 768 ints (R, G, B per index).

    Bits of the label index are spread over the high bits of the three channels, so
    0 is black, 1 (aeroplane) is (128, 0, 0) and 255 (ignore) is (224, 224, 192).
    """
    palette = []
    for label in range(256):
        rgb, value = [0, 0, 0], label
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette.extend(rgb)
    return palette


def save_palette_png(labels: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write an ``H x W`` label map (values 0..255) as an 8-bit palette PNG; returns the path."""
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 2 or array.min(initial=0) < 0 or array.max(initial=0) > 255:
        raise ValueError(f"{path}: a palette PNG needs an H x W label map in 0..255, got shape {array.shape}")
    image = Image.fromarray(array.astype(np.uint8))
    image.putpalette(voc_palette())  # turns the "L" image into "P" with the VOC colours
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
