"""Bilinear resizing of feature maps and class logits (the decoder, the model and inference)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F


def resize_bilinear(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """``N x C x h x w`` -> ``N x C x size[0] x size[1]``, bilinear; ``x`` itself when it has that
    size already (the interpolation would copy it unchanged).

    ``align_corners=False`` (pixel areas, half-pixel centres) resizes images and maps made of
    pixels; ``align_corners=True`` upsamples a feature grid whose corner cells sit on the
    corner pixels (``DeepLab``'s ``os * k + 1`` geometry)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def upsample_cells(x: torch.Tensor, size: Sequence[int], stride: int) -> torch.Tensor:
    """Upsample a grid ``N x C x h x w`` whose cell ``i`` sits on output pixel ``stride * i`` to
    ``size`` (``H x W``, at most ``stride * h`` by ``stride * w``), bilinear.

    That is the grid of a network of symmetric-padded stride-2 convs at any input size (and of
    a coarse feature map against a finer one). One replicated cell past the bottom / right edge
    puts every output pixel inside the grid; ``align_corners=True`` onto ``stride * h + 1`` pixels
    places each cell on its pixel; the result is cropped to ``size``. On ``DeepLab``'s aligned
    sizes (``stride * (h - 1) + 1`` pixels) it is ``resize_bilinear(x, size, align_corners=True)``.
    """
    height, width = int(size[0]), int(size[1])
    if height > stride * x.shape[-2] or width > stride * x.shape[-1]:
        raise ValueError(f"a {tuple(x.shape[-2:])} grid at stride {stride} covers at most "
                         f"{(stride * x.shape[-2], stride * x.shape[-1])} pixels, not {(height, width)}")
    padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
    grid = (stride * x.shape[-2] + 1, stride * x.shape[-1] + 1)
    return resize_bilinear(padded, grid, align_corners=True)[..., :height, :width]


# ATen's channels-last bilinear upsampling on CPU is vectorised over channels, so a channel
# count off a multiple of 8 runs a slow scalar tail; from 32 channels on every layout is slow
# alike, so padding stops at 24.
CHANNELS_LAST_RESIZE_MAX_CHANNELS = 24
CHANNELS_LAST_RESIZE_VECTOR = 8


def resize_logits(logits: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """``resize_bilinear`` for class logits ``N x C x h x w``, in the fastest layout for inference.

    Channels-last logits without autograd (the inference fast path's) are resized with their
    channels zero-padded to a multiple of 8 and returned as a ``N x C x H x W`` view of that
    (still channels-last, strides of the padded count) when ``C`` is at most 24 (padded); other
    logits take ``resize_bilinear`` as they are. Values are ``resize_bilinear``'s up to float
    rounding (the kernel's vector and scalar paths round differently: 2e-7 apart for logits of
    unit scale).
    """
    size = (int(size[0]), int(size[1]))
    channels_last = logits.dim() == 4 and logits.is_contiguous(memory_format=torch.channels_last)
    # An exported graph keeps the plain resize: the padding would become a ScatterND and
    # transposes in it, and other runtimes have their own kernels.
    plain = logits.requires_grad or torch.compiler.is_exporting() or torch.compiler.is_compiling()
    if plain or not channels_last or logits.is_contiguous() or tuple(logits.shape[-2:]) == size:
        return resize_bilinear(logits, size, align_corners)
    n, channels, height, width = logits.shape
    padded = -(-channels // CHANNELS_LAST_RESIZE_VECTOR) * CHANNELS_LAST_RESIZE_VECTOR
    if padded == channels or padded > CHANNELS_LAST_RESIZE_MAX_CHANNELS:
        return resize_bilinear(logits, size, align_corners)
    padded_logits = torch.zeros((n, height, width, padded), dtype=logits.dtype, device=logits.device)
    padded_logits = padded_logits.permute(0, 3, 1, 2)  # channels-last
    padded_logits[:, :channels] = logits
    return resize_bilinear(padded_logits, size, align_corners)[:, :channels]
