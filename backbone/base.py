"""The uniform feature interface every backbone gives the heads.

A backbone maps a normalised image batch ``N x 3 x H x W`` to a dict of named feature maps
(taps). ``feature_info`` publishes, per tap and in network order, its channel count and its
stride (the input-to-feature reduction at the backbone's output stride), so heads read their
input sizes from here and never hard-code channel numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from core.constants import IMAGENET_MEAN, IMAGENET_STD



@dataclass(frozen=True)
class FeatureInfo:
    """One tap: its name, channel count and stride (input pixels per feature pixel)."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class of all backbones.

    Subclasses set ``feature_info`` (every tap the network can give, in network order),
    ``seg_tap`` (the tap a segmentation head reads by default) and implement ``forward``
    returning ``{tap name: N x C x H/stride x W/stride}`` for the taps in ``self.taps``.
    ``mean`` / ``std`` are the per-channel normalisation the (pretrained) weights expect, for
    images scaled to [0, 1]; ``stem`` names the layers at stride 2 and below, which int8 exports
    keep float.
    """

    feature_info: list[FeatureInfo]
    seg_tap: str
    stem: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self) -> None:
        super().__init__()
        self.taps: tuple[str, ...] = ()
        self.frozen_modules: list[nn.Module] = []

    def freeze(self, until: bool | str) -> None:
        """Stop training the whole backbone (``True``) or its layers before the first parameter
        whose name starts with ``until`` (e.g. ``"features.14"``: MobileNetV2 up to stride 16;
        ``"layer4"``: ResNet); ``False`` freezes nothing. Frozen layers keep their weights and
        their BN statistics: they stay in eval mode through ``train()``. Parameters register in
        network order."""
        if until is False:
            return
        names = [name for name, _ in self.named_parameters()]
        if until is True:
            frozen = set(names)
        else:
            first = next((i for i, name in enumerate(names) if name.startswith(until)), None)
            if first is None:
                raise ValueError(f"freeze_backbone={until!r} starts no parameter name of the backbone ({names[0]} ...)")
            frozen = set(names[:first])
        for prefix, module in self.named_modules():
            own = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
            if own and all(name in frozen for name in own):
                module.requires_grad_(False)
                self.frozen_modules.append(module)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        """As ``nn.Module.train``; frozen layers (``freeze``) stay in eval mode."""
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    # --- tap look-ups the heads use -------------------------------------------------------
    def info(self, name: str) -> FeatureInfo:
        """The ``FeatureInfo`` of tap ``name``; a clear error lists the known taps."""
        for info in self.feature_info:
            if info.name == name:
                return info
        raise KeyError(f"{type(self).__name__} has no tap {name!r}; taps: {[i.name for i in self.feature_info]}")

    def deepest_tap(self, stride: int) -> FeatureInfo:
        """The deepest tap whose stride is ``stride`` (e.g. the low-level stride-4 features)."""
        found = [i for i in self.feature_info if i.stride == stride]
        if not found:
            raise ValueError(
                f"{type(self).__name__} has no tap at stride {stride}; strides: "
                f"{sorted({i.stride for i in self.feature_info})}"
            )
        return found[-1]

    @property
    def output_stride(self) -> int:
        return max(i.stride for i in self.feature_info)

    def select_taps(self, taps: Sequence[str]) -> None:
        """Return only ``taps`` from ``forward``; subclasses may drop layers past the deepest."""
        for name in taps:
            self.info(name)
        self.taps = tuple(taps)

    def set_grad_checkpointing(self, blocks: int) -> None:
        """Recompute the first ``blocks`` blocks in the backward pass instead of keeping their
        activations (``core.grad_checkpoint``); 0 turns it off."""
        if blocks:
            raise NotImplementedError(f"{type(self).__name__} has no gradient checkpointing; use mobilenet_v2")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` images in [0, 1] -> the normalisation the weights expect."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


def nominal_to_actual_strides(nominal: Sequence[int], output_stride: int) -> list[int]:
    """Strides of taps once every downsampling past ``output_stride`` became dilation."""
    return [min(s, output_stride) for s in nominal]


def check_output_stride(name: str, output_stride: int, allowed: Sequence[int]) -> None:
    if output_stride not in allowed:
        raise ValueError(f"backbone {name!r} cannot give output_stride={output_stride}; it supports {sorted(allowed)}")


def dilate_blocks(blocks: Sequence[nn.Module], output_stride: int, input_stride: int = 1) -> None:
    """Turn strides into dilation once ``output_stride`` is reached (the DeepLab convention).

    ``blocks`` run in order; a block that downsamples is one holding a stride-2 conv. The first
    block that would go past ``output_stride`` keeps the current dilation with stride 1, and
    every later spatial conv dilates by the stride that was removed (as TF deeplab and
    torchvision's ``replace_stride_with_dilation`` do), so pretrained kernels still apply.
    ``input_stride`` is the stride already reached before the first block.
    """
    current_stride, rate = input_stride, 1
    for block in blocks:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        block_stride = max((c.stride[0] for c in convs), default=1)
        if block_stride > 1 and current_stride * block_stride > output_stride:
            _set_stride_and_dilation(convs, rate)
            rate *= block_stride
            continue
        current_stride *= block_stride
        if rate > 1:
            _set_stride_and_dilation(convs, rate)


def _set_stride_and_dilation(convs: Sequence[nn.Conv2d], rate: int) -> None:
    for conv in convs:
        conv.stride = (1, 1)
        kernel = conv.kernel_size[0]
        if kernel > 1:
            conv.dilation = (rate, rate)
            conv.padding = (rate * (kernel - 1) // 2,) * 2
