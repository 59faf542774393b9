"""DeepLab segmenters on any registry backbone: ``build_deeplab(...)``.

``head="reduced"`` is the MobileNetV2 paper's Mobile DeepLabv3 (Table 7, 2.11M parameters
with MobileNetV2 at OS16): 1x1 + image-pooling branches on the backbone's ``seg_tap`` (the
320-channel last bottleneck, "MNet V2*"). ``"aspp"`` adds the three 3x3 atrous branches of
DeepLabv3 (4.52M with regular convs); ``"aspp_decoder"`` adds the DeepLabv3+ decoder on the
stride-4 features.

Geometry (TF deeplab's): an input of ``os * k + 1`` pixels a side (513 at OS16) gives feature
maps of ``k + 1`` cells whose cell ``i`` sits on input pixel ``os * i`` (every stride-2 conv of
the backbone keeps the corner pixels on its grid), and logits are upsampled with
``align_corners=True``, which puts them back on exactly those pixels. An input of any other
size is padded at the bottom / right to the next such size with the backbone's mean colour
(zero once normalised) and the logits are cropped back, so predictions sit on their pixels at
every input size: training crops, evaluation images, multi-scale inference, exported graphs.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from backbone import Backbone, build_backbone
from backbone.weights import PretrainedSpec

from .aspp import ASPP
from .decoder import DeepLabV3PlusDecoder
from .resize import resize_logits

HeadName = Literal["reduced", "aspp", "aspp_decoder"]
HEADS: tuple[str, ...] = ("reduced", "aspp", "aspp_decoder")
# DeepLabv3's ASPP rates at output stride 16; they scale inversely with the output stride.
ASPP_RATES_AT_OS16 = (6, 12, 18)


def aligned_size(size: int, output_stride: int) -> int:
    """The smallest ``output_stride * k + 1`` at least ``size``: the input sizes whose corner
    pixels every feature map's corner cells sit on."""
    return output_stride * math.ceil((size - 1) / output_stride) + 1


def default_atrous_rates(output_stride: int) -> tuple[int, ...]:
    """(6, 12, 18) at OS16, doubled at OS8 (12, 24, 36), halved at OS32 (3, 6, 9)."""
    return tuple(rate * 16 // output_stride for rate in ASPP_RATES_AT_OS16)


class DeepLabHead(nn.Module):
    """ASPP (reduced or full) -> [DeepLabv3+ decoder] -> 1x1 classifier, on backbone features.

    ``forward(features)``: ``{tap: N x C x h x w}`` (at least ``head_tap``, and
    ``low_level_tap`` with a decoder) -> logits ``N x num_classes x h' x w'`` on the grid of
    ``head_tap`` (with a decoder: of ``low_level_tap``), not yet resized to the input. The
    head of ``DeepLab`` and of the joint model (``multitask``).
    """

    def __init__(
        self,
        aspp: ASPP,
        num_classes: int,
        head_tap: str,
        decoder: DeepLabV3PlusDecoder | None = None,
        low_level_tap: str | None = None,
    ) -> None:
        super().__init__()
        if (decoder is None) != (low_level_tap is None):
            raise ValueError("a decoder needs a low_level_tap and a low_level_tap needs a decoder")
        self.head_tap = head_tap
        self.low_level_tap = low_level_tap
        self.aspp = aspp
        self.decoder = decoder
        features = decoder.out_channels if decoder is not None else aspp.out_channels
        self.classifier = nn.Conv2d(features, num_classes, kernel_size=1)
        self.num_classes = num_classes

    @property
    def taps(self) -> list[str]:
        """The backbone taps the head reads."""
        return [tap for tap in (self.low_level_tap, self.head_tap) if tap is not None]

    def logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits on the grid of the head's finest tap (see the class docstring)."""
        x = self.aspp(features[self.head_tap])
        if self.decoder is not None:
            x = self.decoder(x, features[self.low_level_tap])
        return self.classifier(x)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(features)


class DeepLab(DeepLabHead):
    """Backbone -> ``DeepLabHead`` -> resize to the input.

    ``forward(images)``: float ``N x 3 x H x W`` RGB in [0, 1] (normalised inside with the
    backbone's mean/std) -> logits ``N x num_classes x H x W`` at the input size, any ``H x W``
    (padded to ``aligned_size`` inside, see the module docstring). A subclass of its head, so
    the head's parameters keep their names (``aspp.*``, ``decoder.*``, ``classifier.*``) in
    checkpoints.
    """

    def __init__(
        self,
        backbone: Backbone,
        aspp: ASPP,
        num_classes: int,
        decoder: DeepLabV3PlusDecoder | None = None,
        head_tap: str | None = None,
        low_level_tap: str | None = None,
    ) -> None:
        super().__init__(aspp, num_classes, head_tap or backbone.seg_tap, decoder, low_level_tap)
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        stride = self.backbone.output_stride
        padded = (aligned_size(height, stride), aligned_size(width, stride))
        x = self.backbone.normalize(images)
        if padded != (height, width):  # zeros after normalising: the backbone's mean colour
            x = F.pad(x, (0, padded[1] - width, 0, padded[0] - height))
        logits = self.logits(self.backbone(x))
        return resize_logits(logits, padded, align_corners=True)[..., :height, :width]


def build_deeplab(
    num_classes: int = 21,
    backbone: str = "mobilenet_v2",
    output_stride: int = 16,
    head: HeadName = "reduced",
    pretrained_backbone: PretrainedSpec = False,
    width_mult: float = 1.0,
    atrous_rates: Sequence[int] | None = None,
    separable: bool = False,
    channels: int = 256,
    dropout: float = 0.1,
    head_tap: str | None = None,
    low_level_tap: str | None = None,
    grad_checkpointing: int | None = None,
    freeze_backbone: bool | str = False,
) -> DeepLab:
    """Build a DeepLab segmenter.

    Args:
        num_classes: output classes, background included (21 for VOC).
        backbone: a registry name (``backbone.list_backbones()``), e.g. ``"timm:resnet18"``.
        output_stride: 8, 16 or 32; strides past it become dilation in the backbone.
        head: ``"reduced"`` (paper), ``"aspp"`` or ``"aspp_decoder"`` (DeepLabv3+).
        pretrained_backbone: ``True`` for ImageNet weights, or a state-dict path.
        width_mult: backbone width (MobileNetV2 only).
        atrous_rates: ASPP dilation rates; default ``default_atrous_rates(output_stride)``.
        separable: depthwise-separable atrous convs instead of regular 3x3.
        channels: width of every head branch and of the projection (256).
        dropout: dropout on the ASPP output while training.
        head_tap / low_level_tap: taps to read; default the backbone's ``seg_tap`` and its
            deepest stride-4 tap (decoder only).
        grad_checkpointing: recompute the backbone's first blocks in the backward pass instead
            of keeping their activations (``Backbone.set_grad_checkpointing``); ``None`` keeps
            the backbone's default (MobileNetV2: 3 blocks), 0 turns it off.
        freeze_backbone: keep the (pretrained) backbone's layers before a parameter-name prefix
            fixed, weights and BN statistics (``Backbone.freeze``; ``True``: all of it). A cheap
            fine-tune on a CPU, where the first layers' backward pass at full resolution is
            much of a step. The paper's recipe trains everything (``False``).
    """
    net = build_backbone(backbone, pretrained=pretrained_backbone, output_stride=output_stride, width_mult=width_mult)
    net.freeze(freeze_backbone)
    parts = deeplab_head_parts(
        net, head, atrous_rates, separable, channels, dropout, head_tap, low_level_tap, output_stride
    )
    net.select_taps([tap for tap in (parts["low_level_tap"], parts["head_tap"]) if tap is not None])
    if grad_checkpointing is not None:
        net.set_grad_checkpointing(grad_checkpointing)
    return DeepLab(net, num_classes=num_classes, **parts)


def deeplab_head_parts(
    net: Backbone,
    head: HeadName = "reduced",
    atrous_rates: Sequence[int] | None = None,
    separable: bool = False,
    channels: int = 256,
    dropout: float = 0.1,
    head_tap: str | None = None,
    low_level_tap: str | None = None,
    output_stride: int = 16,
) -> dict:
    """The arguments of ``DeepLabHead`` but ``num_classes`` (``aspp``, ``decoder``, ``head_tap``,
    ``low_level_tap``) for a head on ``net``'s taps; see ``build_deeplab`` for the arguments.
    ``output_stride`` sets the default ASPP rates."""
    if head not in HEADS:
        raise ValueError(f"unknown DeepLab head {head!r}; choose one of {HEADS}")
    if head == "reduced" and atrous_rates:
        raise ValueError(f"the reduced head has no atrous branches; got atrous_rates={list(atrous_rates)}")
    if head != "aspp_decoder" and low_level_tap is not None:
        raise ValueError(f"low_level_tap={low_level_tap!r} is only read by head='aspp_decoder', not {head!r}")
    head_tap = head_tap or net.seg_tap
    if head == "aspp_decoder":
        low_level_tap = low_level_tap or net.deepest_tap(4).name
    rates = () if head == "reduced" else tuple(atrous_rates or default_atrous_rates(output_stride))
    aspp = ASPP(net.info(head_tap).channels, channels, rates, separable=separable, dropout=dropout)
    decoder = None
    if head == "aspp_decoder":
        scale = net.info(head_tap).stride // net.info(low_level_tap).stride
        decoder = DeepLabV3PlusDecoder(net.info(low_level_tap).channels, channels, out_channels=channels, scale=scale)
    return {"aspp": aspp, "decoder": decoder, "head_tap": head_tap, "low_level_tap": low_level_tap}
