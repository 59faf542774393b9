"""Backbone registry: ``build_backbone(name, ...)`` and ``list_backbones()``.

Register your own backbone (any ``Backbone`` subclass) in two lines::

    @register_backbone("my_net")
    def my_net(*, pretrained=False, output_stride=32, width_mult=1.0, **kwargs) -> Backbone: ...
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torchvision import models

from .base import Backbone, FeatureInfo, check_output_stride, dilate_blocks, nominal_to_actual_strides
from .mobilenet_v2 import MobileNetV2Backbone
from .weights import PretrainedSpec, load_checked, resolve_state_dict

BackboneFactory = Callable[..., Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}
TIMM_PREFIX = "timm:"


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding a factory ``fn(*, pretrained, output_stride, width_mult, **kw) -> Backbone``."""

    def add(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return add


def list_backbones() -> list[str]:
    """Registered names, plus ``timm:<model>`` standing for any timm ``features_only`` model."""
    return sorted(_REGISTRY) + [f"{TIMM_PREFIX}<model name>"]


def build_backbone(
    name: str,
    *,
    pretrained: PretrainedSpec = False,
    output_stride: int = 32,
    width_mult: float = 1.0,
    taps: Sequence[str] | None = None,
    **kwargs,
) -> Backbone:
    """Build backbone ``name``; ``taps`` limits what ``forward`` returns (default: every tap)."""
    if name.startswith(TIMM_PREFIX):
        backbone = TimmBackbone(name[len(TIMM_PREFIX) :], pretrained, output_stride, width_mult, **kwargs)
    elif name in _REGISTRY:
        backbone = _REGISTRY[name](pretrained=pretrained, output_stride=output_stride, width_mult=width_mult, **kwargs)
    else:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
    if taps is not None:
        backbone.select_taps(taps)
    return backbone


def backbone_mean(name: str) -> tuple[float, float, float]:
    """The per-channel mean (images in [0, 1]) that backbone ``name``'s weights are normalised
    with, known without its weights: the colour datamodules pad its inputs with."""
    return tuple(build_backbone(name).mean)  # type: ignore[return-value]


def _require_width_one(name: str, width_mult: float) -> None:
    if width_mult != 1.0:
        raise ValueError(f"backbone {name!r} has no width multiplier (got width_mult={width_mult}); use mobilenet_v2")


@register_backbone("mobilenet_v2")
def mobilenet_v2(
    *, pretrained: PretrainedSpec = False, output_stride: int = 32, width_mult: float = 1.0
) -> MobileNetV2Backbone:
    """The paper's MobileNetV2; loads torchvision's ``MobileNet_V2_Weights`` or a local file."""
    check_output_stride("mobilenet_v2", output_stride, (8, 16, 32))
    backbone = MobileNetV2Backbone(width_mult=width_mult, output_stride=output_stride)
    resolved = resolve_state_dict(pretrained, models.MobileNet_V2_Weights)
    if resolved is not None:
        load_checked(backbone, *resolved, ignore_prefixes=("classifier.",))
    return backbone


class SequentialBlocksBackbone(Backbone):
    """A torchvision network whose ``features`` is a sequence of blocks (MobileNetV3).

    Taps are ``features.<i>`` at the last block of each stride and the last layer.
    """

    def __init__(self, features: nn.Sequential, output_stride: int) -> None:
        super().__init__()
        self.features = features
        nominal, stride = [], 1
        for block in features:
            stride *= max((m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d)), default=1)
            nominal.append(stride)
        tap_indices = [i for i in range(len(features) - 1) if nominal[i + 1] != nominal[i] and nominal[i] > 1]
        tap_indices.append(len(features) - 1)
        dilate_blocks(list(features), output_stride)
        strides = nominal_to_actual_strides([nominal[i] for i in tap_indices], output_stride)
        self._index = {f"features.{i}": i for i in tap_indices}
        self.feature_info = [
            FeatureInfo(f"features.{i}", _out_channels(features[i]), s) for i, s in zip(tap_indices, strides)
        ]
        self.seg_tap = self.feature_info[-1].name
        self.select_taps([i.name for i in self.feature_info])

    def select_taps(self, taps: Sequence[str]) -> None:
        super().select_taps(taps)
        self.features = self.features[: max(self._index[n] for n in self.taps) + 1]
        self._wanted = {self._index[n]: n for n in self.taps}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out, x = {}, images
        for idx, block in enumerate(self.features):
            x = block(x)
            if idx in self._wanted:
                out[self._wanted[idx]] = x
        return {name: out[name] for name in self.taps}


def _out_channels(block: nn.Module) -> int:
    if hasattr(block, "out_channels"):
        return block.out_channels
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _torchvision_mobilenet_v3(name: str, weights_enum, pretrained, output_stride, width_mult) -> Backbone:
    _require_width_one(name, width_mult)
    check_output_stride(name, output_stride, (8, 16, 32))
    net = getattr(models, name)(weights=None)
    resolved = resolve_state_dict(pretrained, weights_enum)
    if resolved is not None:
        load_checked(net, *resolved)
    return SequentialBlocksBackbone(net.features, output_stride)


@register_backbone("mobilenet_v3_large")
def mobilenet_v3_large(*, pretrained: PretrainedSpec = False, output_stride: int = 32, width_mult: float = 1.0):
    return _torchvision_mobilenet_v3(
        "mobilenet_v3_large", models.MobileNet_V3_Large_Weights, pretrained, output_stride, width_mult
    )


@register_backbone("mobilenet_v3_small")
def mobilenet_v3_small(*, pretrained: PretrainedSpec = False, output_stride: int = 32, width_mult: float = 1.0):
    return _torchvision_mobilenet_v3(
        "mobilenet_v3_small", models.MobileNet_V3_Small_Weights, pretrained, output_stride, width_mult
    )


class ResNetBackbone(Backbone):
    """torchvision ResNet trunk (``conv1`` ... ``layer4``, keys as torchvision); taps ``layer1..4``."""

    def __init__(self, net: models.ResNet, output_stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        layers = [self.layer1, self.layer2, self.layer3, self.layer4]
        dilate_blocks([block for layer in layers for block in layer], output_stride, input_stride=4)
        strides = nominal_to_actual_strides([4, 8, 16, 32], output_stride)
        self.feature_info = [
            FeatureInfo(f"layer{i + 1}", _out_channels(layer[-1]), s) for i, (layer, s) in enumerate(zip(layers, strides))
        ]
        self.seg_tap = "layer4"
        self.select_taps([i.name for i in self.feature_info])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        out = {}
        deepest = max(int(n[-1]) for n in self.taps)
        for i in range(1, deepest + 1):
            x = getattr(self, f"layer{i}")(x)
            out[f"layer{i}"] = x
        return {name: out[name] for name in self.taps}


def _torchvision_resnet(name: str, weights_enum, pretrained, output_stride, width_mult) -> Backbone:
    _require_width_one(name, width_mult)
    check_output_stride(name, output_stride, (8, 16, 32))
    net = getattr(models, name)(weights=None)
    resolved = resolve_state_dict(pretrained, weights_enum)
    if resolved is not None:
        load_checked(net, *resolved)
    return ResNetBackbone(net, output_stride)


@register_backbone("resnet18")
def resnet18(*, pretrained: PretrainedSpec = False, output_stride: int = 32, width_mult: float = 1.0):
    return _torchvision_resnet("resnet18", models.ResNet18_Weights, pretrained, output_stride, width_mult)


@register_backbone("resnet50")
def resnet50(*, pretrained: PretrainedSpec = False, output_stride: int = 32, width_mult: float = 1.0):
    return _torchvision_resnet("resnet50", models.ResNet50_Weights, pretrained, output_stride, width_mult)


class TimmBackbone(Backbone):
    """Any timm model that supports ``features_only`` (install the ``timm`` extra)."""

    def __init__(
        self, model_name: str, pretrained: PretrainedSpec, output_stride: int, width_mult: float, **kwargs
    ) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise ImportError(
                f"backbone 'timm:{model_name}' needs timm: pip install 'mobiledet[timm]'"
            ) from err
        _require_width_one(f"timm:{model_name}", width_mult)
        check_output_stride(f"timm:{model_name}", output_stride, (8, 16, 32))
        options = dict(features_only=True, output_stride=output_stride, **kwargs)
        if isinstance(pretrained, (str, bytes)) or hasattr(pretrained, "__fspath__"):
            options.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
        else:
            options["pretrained"] = bool(pretrained)
        try:
            self.model = timm.create_model(model_name, **options)
        except RuntimeError as err:
            raise ValueError(f"timm model {model_name!r} cannot be built with {options}: {err}") from err
        info = self.model.feature_info
        strides = nominal_to_actual_strides(info.reduction(), output_stride)
        self.feature_info = [FeatureInfo(n, c, s) for n, c, s in zip(info.module_name(), info.channels(), strides)]
        self.seg_tap = self.feature_info[-1].name
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", self.mean))
        self.std = tuple(cfg.get("std", self.std))
        self.select_taps([i.name for i in self.feature_info])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = dict(zip((i.name for i in self.feature_info), self.model(images)))
        return {name: features[name] for name in self.taps}
