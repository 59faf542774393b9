"""SSDLite: MobileNetV2 features + SSDLite head + SSD anchors, losses and post-processing."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from backbone import build_backbone
from core.conv import init_weights
from backbone.weights import PretrainedSpec

from .anchors import SSDAnchorGenerator
from .box_coder import BoxCoder
from .extras import EXTRA_DEPTHS, SSDLiteFeatures
from .head import SSDLiteHead
from .loss import ClassificationLoss, MultiBoxLoss
from .matcher import pad_targets
from .postprocess import decode_detections, select_detections


class SSDLite(nn.Module):
    """Single-shot detector on float images ``N x 3 x H x W`` in [0, 1], RGB.

    Train mode: ``model(images, targets)`` -> ``{"bbox_regression", "classification"}`` losses;
    ``targets`` is a list of N dicts with ``boxes`` ``K x 4`` xyxy in input pixels and
    ``labels`` ``K`` in ``0..num_classes-1``. Eval mode: ``model(images)`` -> N dicts with
    ``boxes`` ``K x 4`` xyxy in input pixels, ``scores`` ``K`` and ``labels`` ``K``.
    """

    def __init__(
        self,
        features: SSDLiteFeatures,
        head: SSDLiteHead,
        anchor_generator: SSDAnchorGenerator,
        loss: MultiBoxLoss,
        num_classes: int,
        score_threshold: float = 0.001,
        nms_threshold: float = 0.6,
        topk_per_class: int = 100,
        detections_per_image: int = 100,
        freeze_backbone: bool | str = False,
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.anchor_generator = anchor_generator
        self.loss = loss
        self.box_coder = loss.box_coder
        self.num_classes = num_classes
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.topk_per_class = topk_per_class
        self.detections_per_image = detections_per_image
        features.backbone.freeze(freeze_backbone)

    @property
    def score_activation(self) -> Literal["softmax", "sigmoid"]:
        return "sigmoid" if self.loss.classification_loss == "focal" else "softmax"

    def predict_raw(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Head outputs (``cls_logits`` ``N x A x (C+1)``, ``bbox_regression`` ``N x A x 4``)
        and the ``A x 4`` xyxy anchors for this input size."""
        maps = self.features(self.features.backbone.normalize(images))
        return self.head_outputs(maps, tuple(images.shape[-2:]))

    def head_outputs(
        self, maps: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``predict_raw`` from the feature maps (``SSDLiteFeatures``' output) of an
        ``image_size`` (h, w) input."""
        outputs = self.head(maps)
        anchors = self.anchor_generator(
            image_size, [tuple(m.shape[-2:]) for m in maps], maps[0].device, outputs["bbox_regression"].dtype
        )
        return outputs, anchors

    def decode_outputs(
        self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode`` from ``predict_raw``'s results for an ``image_size`` (h, w) input."""
        return decode_detections(
            outputs["cls_logits"], outputs["bbox_regression"], anchors, self.box_coder, image_size, self.score_activation
        )

    def decode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``N x A x 4`` (xyxy, input pixels, clipped) and scores ``N x A x C``, before NMS.

        Traceable end to end (the part an ONNX export keeps).
        """
        return self.decode_outputs(*self.predict_raw(images), tuple(images.shape[-2:]))

    def losses(
        self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``{"bbox_regression", "classification"}`` of ``predict_raw``'s results against
        ``targets`` (one per image, see the class docstring)."""
        boxes, labels, valid = pad_targets(targets)
        return self.loss(outputs["cls_logits"], outputs["bbox_regression"], anchors, boxes, labels, valid)

    def select(self, boxes: torch.Tensor, scores: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image, the detections kept from ``decode``'s boxes and scores (score threshold, NMS, top-k)."""
        return select_detections(
            boxes, scores, self.score_threshold, self.nms_threshold, self.topk_per_class, self.detections_per_image
        )

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        check_images(images, type(self).__name__)
        if self.training:
            check_targets(images, targets, type(self).__name__)
            return self.losses(*self.predict_raw(images), targets)
        return self.select(*self.decode(images))


def check_images(images: torch.Tensor, model_name: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{model_name} expects images N x 3 x H x W, got shape {tuple(images.shape)}")


def check_targets(images: torch.Tensor, targets: Sequence[dict] | None, model_name: str) -> None:
    if targets is None:
        raise ValueError(f"{model_name} in train mode needs targets; call model.eval() to predict")
    if len(targets) != images.shape[0]:
        raise ValueError(f"got {len(targets)} targets for {images.shape[0]} images")


def build_ssdlite(
    num_classes: int = 80,
    backbone: str = "mobilenet_v2",
    width_mult: float = 1.0,
    image_size: int = 320,
    pretrained_backbone: PretrainedSpec = False,
    taps: Sequence[str] | None = None,
    extra_depths: Sequence[int] = EXTRA_DEPTHS,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
    iou_threshold: float = 0.5,
    neg_pos_ratio: float = 3.0,
    classification_loss: ClassificationLoss = "softmax",
    score_threshold: float = 0.001,
    nms_threshold: float = 0.6,
    topk_per_class: int = 100,
    detections_per_image: int = 100,
    freeze_backbone: bool | str = False,
    grad_checkpointing: int | None = None,
) -> SSDLite:
    """The paper's MobileNetV2 + SSDLite (Table 6) or the same head on any registry backbone.

    ``num_classes`` counts object classes (background is internal). ``taps`` default to the
    backbone's deepest stride-16 and stride-32 taps. ``image_size`` is checked to give every
    map at least one pixel; anchors adapt to whatever size the model is run at.
    ``freeze_backbone`` keeps the (pretrained) backbone fixed, weights and BN statistics
    (``True``), or its layers before a parameter-name prefix (see ``Backbone.freeze``):
    a cheap fine-tune for small data or a CPU, where the backbone's backward pass is most of a
    training step. The paper's recipe trains everything (``False``).
    ``grad_checkpointing`` recomputes the backbone's first blocks in the backward pass
    instead of keeping their activations (``Backbone.set_grad_checkpointing``); ``None`` keeps
    the backbone's default (MobileNetV2: 3 blocks, its 160x160 layers); 0 turns it off.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (the backbone's stride), got {image_size}")
    net = build_backbone(backbone, pretrained=pretrained_backbone, output_stride=32, width_mult=width_mult)
    features = SSDLiteFeatures(net, taps, extra_depths)
    if grad_checkpointing is not None:
        net.set_grad_checkpointing(grad_checkpointing)
    init_weights(features.extras)
    anchor_generator = SSDAnchorGenerator(
        num_layers=len(features.out_channels), min_scale=min_scale, max_scale=max_scale, aspect_ratios=aspect_ratios
    )
    head = SSDLiteHead(features.out_channels, anchor_generator.num_anchors_per_location, num_classes)
    loss = MultiBoxLoss(
        BoxCoder(box_coder_weights), iou_threshold, neg_pos_ratio, classification_loss=classification_loss
    )
    return SSDLite(
        features, head, anchor_generator, loss, num_classes, score_threshold, nms_threshold, topk_per_class,
        detections_per_image, freeze_backbone,
    )
