"""Atrous spatial pyramid pooling: the DeepLabv3 head, and its reduced "Mobile DeepLabv3" form.

Branches run in parallel on the backbone's deepest features and are concatenated: a 1x1 conv,
one 3x3 atrous conv per rate (regular or depthwise-separable), and image pooling (global
context). A 1x1 projection with BN + ReLU fuses them. With no atrous rates this is the paper's
reduced head (MobileNetV2 §6.3): 1x1 branch + image pooling, 256 channels each.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core.conv import SeparableConvBNReLU, conv_bn_relu


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv + BN + ReLU -> broadcast back to the input's size.

    ``N x C_in x h x w`` -> ``N x C_out x h x w``, every position holding the same image-level
    vector, so every prediction depends on the whole image. BN sees one value per image and
    channel: training needs batches of two or more.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Upsampling a 1x1 map is a broadcast. It is materialised in x's memory format rather
        # than left an expanded view: concatenating a view (no format) with channels-last
        # branches gives an NCHW tensor, and every later layer of the inference fast path
        # would then convert back (the final upsampling alone runs 3x slower in NCHW).
        pooled = self.conv(self.pool(x))
        out = torch.empty(
            (x.shape[0], pooled.shape[1], *x.shape[-2:]), dtype=pooled.dtype, device=pooled.device,
            memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format,
        )
        return out.copy_(pooled.expand_as(out))


class ASPP(nn.Module):
    """``N x in_channels x h x w`` -> ``N x out_channels x h x w`` (ReLU'd features, no logits).

    ``atrous_rates`` gives one 3x3 branch per dilation rate (empty: the reduced head);
    ``separable`` makes those branches depthwise 3x3 + pointwise 1x1. ``dropout`` acts on the
    projection output during training (TF deeplab keeps 0.9).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        atrous_rates: Sequence[int] = (),
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        atrous = [
            SeparableConvBNReLU(in_channels, out_channels, rate)
            if separable
            else conv_bn_relu(in_channels, out_channels, kernel_size=3, dilation=rate)
            for rate in atrous_rates
        ]
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, out_channels), *atrous])
        self.image_pooling = ImagePooling(in_channels, out_channels)
        self.project = conv_bn_relu((len(self.branches) + 1) * out_channels, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [branch(x) for branch in self.branches]
        features.append(self.image_pooling(x))
        return self.dropout(self.project(torch.cat(features, dim=1)))

