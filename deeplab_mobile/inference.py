"""Multi-scale + left-right flip inference ("MF" in the MobileNetV2 paper's Table 7)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .resize import resize_bilinear, resize_logits

# The paper's (and DeepLabv3's) evaluation scales.
PAPER_EVAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def multi_scale_flip_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Class probabilities ``N x C x H x W`` averaged over rescaled (and mirrored) inputs.

    ``model`` maps ``N x 3 x h x w`` images in [0, 1] to logits ``N x C x h x w``. Each scale
    ``s`` resizes the images to ``round(s * H) x round(s * W)``; with ``flip`` the mirrored
    images run in the same batch and their logits are mirrored back. Logits are resized to
    ``H x W`` and turned into probabilities before averaging, as TF deeplab does.
    """
    if not scales:
        raise ValueError("multi-scale inference needs at least one scale")
    height, width = images.shape[-2:]
    n = images.shape[0]
    total = None
    for scale in scales:
        scaled = images if scale == 1.0 else resize_bilinear(images, (round(scale * height), round(scale * width)))
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        probabilities = class_softmax(resize_logits(model(batch), (height, width)))
        if flip:
            probabilities = probabilities[:n] + probabilities[n:].flip(-1)
        total = probabilities if total is None else total + probabilities
    terms = len(scales) * (2 if flip else 1)
    return total if terms == 1 else total / terms


def class_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class dimension of ``N x C x H x W`` logits, in their own layout.

    On channels-last logits (the inference fast path's) ``softmax(dim=1)`` first copies them to
    NCHW, and the class maximum of the NCHW result is slower too; a softmax over the innermost
    dimension of the NHWC view keeps the layout.
    """
    if logits.dim() == 4 and logits.stride(1) == 1 and not logits.is_contiguous():
        return logits.permute(0, 2, 3, 1).softmax(dim=-1).permute(0, 3, 1, 2)
    return logits.softmax(dim=1)
