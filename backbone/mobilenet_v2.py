"""MobileNetV2 (Sandler et al., CVPR 2018), paper-exact and key-for-key torchvision compatible.

Inverted residual with linear bottleneck: 1x1 expansion (factor t) + BN + ReLU6, 3x3 depthwise
(stride s) + BN + ReLU6, 1x1 linear projection + BN; residual add when stride 1 and in == out.
Module names follow torchvision's ``mobilenet_v2`` (``features.0..18``, ``classifier.1``) so its
``MobileNet_V2_Weights`` load unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core.conv import conv_bn_relu6, init_weights
from core.grad_checkpoint import checkpointed

from .base import Backbone, FeatureInfo, dilate_blocks, nominal_to_actual_strides

# (expansion t, output channels c, repeats n, first stride s): the paper's Table 2.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """``x -> [1x1 expand] -> 3x3 depthwise -> 1x1 linear project (+ x)``; names as torchvision."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.has_expansion = expand_ratio != 1
        layers: list[nn.Module] = []
        if self.has_expansion:
            layers.append(conv_bn_relu6(in_channels, hidden, kernel_size=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res_connect else y

    def forward_with_expansion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block output and its expansion output (``conv.0``), computed once."""
        expanded = self.conv[0](x)
        y = self.conv[1:](expanded)
        return (x + y if self.use_res_connect else y), expanded


def build_features(width_mult: float = 1.0) -> nn.Sequential:
    """The ``features`` trunk: stem, 17 inverted residual blocks, last 1x1 conv (19 modules)."""
    in_channels = make_divisible(32 * width_mult)
    last_channels = make_divisible(1280 * max(1.0, width_mult))
    layers: list[nn.Module] = [conv_bn_relu6(3, in_channels, stride=2)]
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        out_channels = make_divisible(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
            in_channels = out_channels
    layers.append(conv_bn_relu6(in_channels, last_channels, kernel_size=1))
    return nn.Sequential(*layers)


class MobileNetV2(nn.Module):
    """The ImageNet classification network (``features`` + ``classifier``), as in the paper."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = build_features(width_mult)
        last_channels = self.features[-1].out_channels
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


# Taps by torchvision module name: (feature index, is expansion output, nominal stride).
_TAPS: dict[str, tuple[int, bool, int]] = {
    "features.1": (1, False, 2),
    "features.3": (3, False, 4),  # low-level features of DeepLabv3+
    "features.6": (6, False, 8),
    "features.13": (13, False, 16),
    "features.14.conv.0": (14, True, 16),  # 576-ch expansion of the first stride-32 block: SSDLite's first map
    "features.17": (17, False, 32),  # 320-ch last bottleneck: the paper's "MNet V2*" DeepLab tap
    "features.18": (18, False, 32),  # 1280-ch last layer
}


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 ``features`` as a backbone with named taps and an output stride of 8, 16 or 32.

    ``forward(images)`` takes normalised ``N x 3 x H x W`` images and returns the selected taps.
    Layers after the deepest selected tap are dropped (so e.g. DeepLab's head on
    ``features.17`` neither computes nor counts the 1280-channel layer).
    """

    seg_tap = "features.17"
    stem = ("features.0", "features.1")  # the stride-2 conv and the first (stride-2) block
    DEFAULT_GRAD_CHECKPOINTING = 3  # the 160 x 160 layers at 320 px (``set_grad_checkpointing``)

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32, taps: Sequence[str] | None = None) -> None:
        super().__init__()
        self.features = build_features(width_mult)
        init_weights(self)
        dilate_blocks(list(self.features), output_stride)
        strides = nominal_to_actual_strides([s for _, _, s in _TAPS.values()], output_stride)
        self.feature_info = []
        for (name, (idx, is_expansion, _)), stride in zip(_TAPS.items(), strides):
            layer = self.features[idx]
            channels = layer.conv[0].out_channels if is_expansion else layer.out_channels
            self.feature_info.append(FeatureInfo(name, channels, stride))
        self.select_taps(taps if taps is not None else list(_TAPS))
        self.grad_checkpointing = self.DEFAULT_GRAD_CHECKPOINTING

    def select_taps(self, taps: Sequence[str]) -> None:
        super().select_taps(taps)
        last = max(_TAPS[name][0] for name in self.taps)
        if last + 1 < len(self.features):
            self.features = self.features[: last + 1]
        self._expansion_taps = {_TAPS[n][0]: n for n in self.taps if _TAPS[n][1]}
        self._output_taps = {_TAPS[n][0]: n for n in self.taps if not _TAPS[n][1]}

    def set_grad_checkpointing(self, blocks: int) -> None:
        """Recompute ``features.0`` .. ``features.<blocks - 1>`` in the backward pass; 0 keeps
        every activation.

        On by default for ``features.0-2`` (stride 2: the 160 x 160 layers at 320 px): they keep
        a large share of a training step's activations for a small share of the forward
        multiply-adds; the weights after training are the same to the bit. Memory and time of
        each setting: the README and ``benchmarks/memory.py``.
        """
        first_expansion_tap = min(self._expansion_taps, default=len(self.features))
        if not 0 <= blocks <= first_expansion_tap:
            raise ValueError(f"grad_checkpointing must be 0..{first_expansion_tap} blocks, got {blocks}")
        self.grad_checkpointing = blocks

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = images
        for idx, layer in enumerate(self.features):
            if idx in self._expansion_taps:
                x, out[self._expansion_taps[idx]] = layer.forward_with_expansion(x)
            elif idx < self.grad_checkpointing:
                x = checkpointed(layer, x)
            else:
                x = layer(x)
            if idx in self._output_taps:
                out[self._output_taps[idx]] = x
        return {name: out[name] for name in self.taps}
