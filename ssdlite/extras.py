"""The feature maps SSDLite predicts on: two backbone taps, then extra stride-2 layers.

The paper (section 6.2) attaches the first prediction layer to the expansion of the first
stride-32 block (output stride 16) and the second to the last backbone layer (stride 32).
Four extra layers follow, as in TF's ``ssd_mobilenet_v2`` feature extractor with
``use_depthwise``: a 1x1 conv to half the depth, then a stride-2 depthwise-separable 3x3 to the
depth, BN + ReLU6 after every conv.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from backbone import Backbone
from core.conv import conv_bn_relu6

EXTRA_DEPTHS: tuple[int, ...] = (512, 256, 256, 128)


def extra_layer(in_channels: int, depth: int) -> nn.Sequential:
    """1x1 to ``depth // 2``, depthwise 3x3 stride 2, 1x1 to ``depth`` (each + BN + ReLU6)."""
    mid = depth // 2
    return nn.Sequential(
        conv_bn_relu6(in_channels, mid, kernel_size=1),
        conv_bn_relu6(mid, mid, stride=2, groups=mid),
        conv_bn_relu6(mid, depth, kernel_size=1),
    )


def default_taps(backbone: Backbone) -> list[str]:
    """The deepest stride-16 and stride-32 taps (MobileNetV2: ``features.14.conv.0``, ``features.18``)."""
    return [backbone.deepest_tap(16).name, backbone.deepest_tap(32).name]


class SSDLiteFeatures(nn.Module):
    """Backbone taps followed by extra layers on the last tap.

    ``forward`` takes normalised images ``N x 3 x H x W`` and returns the maps, shallow to deep
    (at 320 x 320 with MobileNetV2: 20, 10, 5, 3, 2, 1 pixels on a side).
    """

    def __init__(
        self, backbone: Backbone, taps: Sequence[str] | None = None, extra_depths: Sequence[int] = EXTRA_DEPTHS
    ) -> None:
        super().__init__()
        taps = list(taps) if taps is not None else default_taps(backbone)
        backbone.select_taps(taps)
        self.backbone = backbone
        self.taps = taps
        channels = [backbone.info(name).channels for name in taps]
        self.extras = nn.ModuleList()
        for depth in extra_depths:
            self.extras.append(extra_layer(channels[-1], depth))
            channels.append(depth)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.extend(self.backbone(images))

    def extend(self, taps: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The maps from backbone taps already computed (``{tap: N x C x h x w}``, at least
        ``self.taps``): the taps, then the extra layers on the last one."""
        maps = [taps[name] for name in self.taps]
        x = maps[-1]
        for layer in self.extras:
            x = layer(x)
            maps.append(x)
        return maps
