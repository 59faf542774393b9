"""Conventions every package shares: the label that means "ignore", the ImageNet statistics
pretrained weights expect, and the PASCAL VOC colour map of label images."""

from __future__ import annotations

# Label of pixels that count for no class (VOC's object borders, padding): loss and metrics skip it.
IGNORE_INDEX = 255
# Per-channel statistics of ImageNet images scaled to [0, 1] (torchvision's and timm's defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mean_fill(mean: tuple[float, float, float] = IMAGENET_MEAN) -> tuple[int, int, int]:
    """``mean`` (of images in [0, 1]) as a uint8 colour: what padding and zoom-out canvases are
    filled with, so a padded pixel normalises to (about) zero inside the model."""
    return tuple(round(255 * m) for m in mean)  # type: ignore[return-value]


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
