"""Conv + BN + ReLU units and the bilinear resize shared by the ASPP, the decoder and the model."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import Conv2dNormActivation


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> Conv2dNormActivation:
    """``kernel_size`` x ``kernel_size`` conv (no bias, 'same' padding) + BN + ReLU."""
    return Conv2dNormActivation(
        in_channels, out_channels, kernel_size=kernel_size, dilation=dilation, activation_layer=nn.ReLU
    )


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise 3x3 (dilated) + BN + ReLU, then pointwise 1x1 + BN + ReLU.

    TF deeplab's ``split_separable_conv2d``: the separable form of a regular 3x3 conv used by
    the ASPP (``separable=True``) and the DeepLabv3+ decoder.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            Conv2dNormActivation(
                in_channels, in_channels, kernel_size=3, dilation=dilation, groups=in_channels, activation_layer=nn.ReLU
            ),
            conv_bn_relu(in_channels, out_channels, kernel_size=1),
        )


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``N x C x h x w`` -> ``N x C x size[0] x size[1]``, bilinear with ``align_corners=False``;
    ``x`` itself when it has that size already (the interpolation would copy it unchanged)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
