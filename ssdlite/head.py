"""The SSDLite prediction head: every regular conv of SSD's predictors made separable.

For each feature map, a classification and a box predictor, each a depthwise 3x3 (+ BN +
ReLU6) followed by a 1x1 conv to ``anchors x outputs`` (the paper's SSDLite, section 6.2).
Outputs of all maps are flattened in the anchor generator's order (row, column, anchor).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core.conv import conv_bn_relu6


def separable_predictor(in_channels: int, out_channels: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + ReLU6, then a 1x1 conv with bias to ``out_channels``."""
    return nn.Sequential(
        conv_bn_relu6(in_channels, in_channels, groups=in_channels),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


def _flatten(outputs: list[torch.Tensor], per_anchor: int) -> torch.Tensor:
    """``[N x (B*K) x H x W]`` per map -> ``N x sum(H*W*B) x K``."""
    n = outputs[0].shape[0]
    return torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1, per_anchor) for o in outputs], dim=1)


class SSDLiteHead(nn.Module):
    """``forward(maps)`` -> ``cls_logits`` ``N x A x (num_classes + 1)`` (column 0: background)
    and ``bbox_regression`` ``N x A x 4`` (box coder offsets)."""

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"{len(in_channels)} feature maps but anchors for {len(num_anchors)}")
        self.num_logits = num_classes + 1
        self.classification = nn.ModuleList(
            separable_predictor(c, a * self.num_logits) for c, a in zip(in_channels, num_anchors)
        )
        self.regression = nn.ModuleList(separable_predictor(c, a * 4) for c, a in zip(in_channels, num_anchors))
        for m in self.modules():  # torchvision's SSDLite initialisation of the prediction layers
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.03)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, maps: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "cls_logits": _flatten([p(x) for p, x in zip(self.classification, maps)], self.num_logits),
            "bbox_regression": _flatten([p(x) for p, x in zip(self.regression, maps)], 4),
        }
