"""The DeepLabv3+ decoder (Chen et al. 2018): sharpen the head's output with stride-4 features."""

from __future__ import annotations

import torch
from torch import nn

from core.conv import SeparableConvBNReLU, conv_bn_relu

from .resize import upsample_cells


class DeepLabV3PlusDecoder(nn.Module):
    """Fuse ``head`` features (``N x head_channels x H/os x W/os``) with ``low_level`` ones
    (``N x low_level_channels x H/4 x W/4``) into ``N x out_channels x H/4 x W/4``.

    The low-level features are projected to ``low_level_projection`` (48) channels so they do
    not outweigh the head's; the head output is upsampled to their size, concatenated, and
    refined by two 3x3 depthwise-separable convs (TF deeplab's decoder). ``scale``: the head's
    stride over the low-level features' (4 at OS16), whose cell ``i`` sits on low-level cell
    ``scale * i`` (``upsample_cells``).
    """

    def __init__(
        self,
        low_level_channels: int,
        head_channels: int,
        low_level_projection: int = 48,
        out_channels: int = 256,
        scale: int = 4,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.project_low_level = conv_bn_relu(low_level_channels, low_level_projection)
        self.refine = nn.Sequential(
            SeparableConvBNReLU(head_channels + low_level_projection, out_channels),
            SeparableConvBNReLU(out_channels, out_channels),
        )
        self.out_channels = out_channels

    def forward(self, head: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.project_low_level(low_level)
        head = upsample_cells(head, low_level.shape[-2:], self.scale)
        return self.refine(torch.cat([head, low_level], dim=1))
