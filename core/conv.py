"""Conv + BN + activation units and the initialisation every network here starts from.

MobileNetV2, the SSDLite head and extras use ReLU6 (the paper's activation, ``core.relu6``);
the DeepLab head uses ReLU, as TF deeplab does. Each unit is torchvision's
``Conv2dNormActivation`` (conv without bias, 'same' padding, BN, activation) in an
``nn.Sequential``, the shape ``core.fuse`` folds for inference.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from .relu6 import ReLU6


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> Conv2dNormActivation:
    """``kernel_size`` x ``kernel_size`` conv + BN + ReLU6 (depthwise when ``groups`` = channels)."""
    return Conv2dNormActivation(
        in_channels, out_channels, kernel_size=kernel_size, stride=stride, groups=groups, activation_layer=ReLU6
    )


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


def init_weights(module: nn.Module) -> None:
    """torchvision's initialisation, so random-init models match it in distribution."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
