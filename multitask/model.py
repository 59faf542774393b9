"""The joint model: one backbone pass feeds the SSDLite head and a DeepLab head.

The backbone runs at output stride 32, as SSDLite needs (its taps and extra layers are the
paper's). The segmentation head reads a tap of that same pass, by default the deepest
stride-16 one (MobileNetV2: ``features.14.conv.0``, the 576-channel expansion SSDLite's first
map is), so segmentation costs the head alone. ``seg_tap`` picks another (``features.17``:
the paper's 320-channel tap, at stride 32 here). Between tap and head sits a depthwise 3 x 3
conv + BN + ReLU6 (``seg_adapter``, as SSDLite's head has before its predictors): the
reduced head is all 1 x 1, and on a backbone frozen below the tap (CPU recipes) nothing else
could move its masks onto the objects. The choices and their measurements: README, "Boxes and
masks in one pass".

Geometry: the input is not padded (SSDLite sees exactly its single-task input). Every
stride-2 conv pads symmetrically, so cell ``i`` of a stride-``s`` map sits on input pixel
``s * i`` at any input size, and the logits are upsampled by that rule
(``deeplab_mobile.resize.upsample_cells``): predictions sit on their pixels.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from backbone.weights import PretrainedSpec
from core.constants import IGNORE_INDEX
from core.conv import conv_bn_relu6
from deeplab_mobile.model import DeepLabHead, HeadName, deeplab_head_parts
from deeplab_mobile.resize import upsample_cells
from ssdlite.loss import ClassificationLoss
from ssdlite.model import SSDLite, build_ssdlite, check_images, check_targets

from .loss_weighting import LossWeighting

Task = Literal["detection", "segmentation"]


class MultiTaskModel(nn.Module):
    """SSDLite + a DeepLab head on one backbone, on float images ``N x 3 x H x W`` in [0, 1], RGB.

    Eval mode: ``model(images)`` -> ``{"detections": N dicts with boxes K x 4 (xyxy, input
    pixels), scores K, labels K (0..num_det_classes-1)], "segmentation": logits N x
    num_seg_classes x H x W}``.

    Train mode: ``model(images, targets)`` -> the weighted losses ``{"bbox_regression",
    "classification", "segmentation"}`` (plus ``"uncertainty"``, the learned weights' term,
    with ``LossWeighting(learned=True)``). ``targets``: one dict per image with ``boxes``
    ``K x 4`` xyxy in input pixels and ``labels`` ``K``; ``mask`` ``H x W`` int64 class
    indices (255 ignore); ``has_boxes`` / ``has_mask`` (bool, default: True when the key
    ``boxes`` / ``mask`` is there). An image without boxes (``has_boxes`` False) adds nothing
    to the detection losses, one without a mask nothing to the segmentation loss, so datasets
    labelled for one task each train together; a batch with neither still runs backward with
    zero gradients.
    """

    def __init__(
        self,
        detector: SSDLite,
        segmenter: DeepLabHead,
        loss_weighting: LossWeighting,
        seg_adapter: nn.Module | None = None,
    ) -> None:
        """``seg_adapter``: applied to the segmenter's ``head_tap`` features before it (None: none)."""
        super().__init__()
        self.detector = detector
        self.segmenter = segmenter
        self.seg_adapter = seg_adapter
        self.loss_weighting = loss_weighting
        self.seg_stride = self.backbone.info(segmenter.taps[0]).stride

    @property
    def backbone(self) -> nn.Module:
        return self.detector.features.backbone

    @property
    def num_det_classes(self) -> int:
        return self.detector.num_classes

    @property
    def num_seg_classes(self) -> int:
        return self.segmenter.num_classes

    def raw_outputs(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One backbone pass: SSDLite's head outputs and anchors (``SSDLite.predict_raw``) and
        the segmentation logits ``N x num_seg_classes x H x W`` at the input size."""
        size = tuple(images.shape[-2:])
        taps = self.backbone(self.backbone.normalize(images))
        outputs, anchors = self.detector.head_outputs(self.detector.features.extend(taps), size)
        if self.seg_adapter is not None:
            tap = self.segmenter.head_tap
            taps = {**taps, tap: self.seg_adapter(taps[tap])}
        logits = upsample_cells(self.segmenter(taps), size, self.seg_stride)
        return outputs, anchors, logits

    def decode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes ``N x A x 4`` (xyxy, input pixels, clipped), scores ``N x A x C_det`` (before
        NMS, as ``SSDLite.decode``) and segmentation logits ``N x C_seg x H x W``: traceable,
        what an exported graph computes."""
        outputs, anchors, logits = self.raw_outputs(images)
        boxes, scores = self.detector.decode_outputs(outputs, anchors, tuple(images.shape[-2:]))
        return boxes, scores, logits

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        check_images(images, type(self).__name__)
        if self.training:
            check_targets(images, targets, type(self).__name__)
            return self.loss_weighting(self.losses(*self.raw_outputs(images), targets))
        boxes, scores, logits = self.decode(images)
        return {"detections": self.detector.select(boxes, scores), "segmentation": logits}

    def losses(
        self,
        outputs: dict[str, torch.Tensor],
        anchors: torch.Tensor,
        logits: torch.Tensor,
        targets: Sequence[dict[str, Any]],
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Unweighted ``{"detection": {"bbox_regression", "classification"}, "segmentation":
        {"segmentation"}}``, each over the images that carry its labels."""
        with_boxes = [i for i, t in enumerate(targets) if _carries(t, "boxes")]
        with_mask = [i for i, t in enumerate(targets) if _carries(t, "mask")]
        if with_boxes:
            detection = self.detector.losses(
                {k: _rows(v, with_boxes) for k, v in outputs.items()}, anchors, [targets[i] for i in with_boxes]
            )
        else:
            zero = sum(v.sum() for v in outputs.values()) * 0.0
            detection = {"bbox_regression": zero, "classification": zero}
        if with_mask:
            masks = torch.stack([targets[i]["mask"] for i in with_mask]).to(logits.device, torch.int64)
            # Mean over the labelled pixels of the images with masks; none labelled: zero, not NaN.
            per_pixel = F.cross_entropy(_rows(logits, with_mask), masks, ignore_index=IGNORE_INDEX, reduction="sum")
            segmentation = per_pixel / (masks != IGNORE_INDEX).sum().clamp(min=1)
        else:
            segmentation = logits.sum() * 0.0
        return {"detection": detection, "segmentation": {"segmentation": segmentation}}


def _rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``x[rows]``, without a copy when that is every row (a batch labelled for the task)."""
    return x if len(rows) == len(x) else x.index_select(0, torch.tensor(rows, device=x.device))


def _carries(target: dict[str, Any], key: str) -> bool:
    flag = target.get(f"has_{key}", key in target)
    return bool(flag) and key in target


def build_multitask(
    num_det_classes: int = 80,
    num_seg_classes: int = 21,
    backbone: str = "mobilenet_v2",
    width_mult: float = 1.0,
    image_size: int = 320,
    pretrained_backbone: PretrainedSpec = False,
    seg_head: HeadName = "reduced",
    seg_tap: str | None = None,
    seg_adapter: bool = True,
    atrous_rates: Sequence[int] | None = None,
    seg_channels: int = 256,
    seg_dropout: float = 0.1,
    classification_loss: ClassificationLoss = "softmax",
    score_threshold: float = 0.001,
    nms_threshold: float = 0.6,
    detections_per_image: int = 100,
    freeze_backbone: bool | str = False,
    grad_checkpointing: int | None = None,
    detection_weight: float = 1.0,
    segmentation_weight: float = 1.0,
    learned_weighting: bool = False,
) -> MultiTaskModel:
    """SSDLite (``build_ssdlite``'s arguments) and a DeepLab head (``seg_head``: ``"reduced"``
    Mobile DeepLabv3, ``"aspp"`` or ``"aspp_decoder"``) sharing one backbone.

    ``num_det_classes`` counts object classes (SSDLite's background is internal);
    ``num_seg_classes`` counts background too (21 for VOC). ``seg_tap``: the backbone tap the
    segmentation head reads (default: the deepest stride-16 one); ``seg_adapter``: a depthwise
    3 x 3 conv + BN + ReLU6 between that tap and the head. ``detection_weight`` /
    ``segmentation_weight`` scale the two tasks' losses; ``learned_weighting`` learns them
    instead (Kendall et al. 2018, ``LossWeighting``), starting from those values.
    """
    detector = build_ssdlite(
        num_det_classes, backbone, width_mult, image_size, pretrained_backbone,
        classification_loss=classification_loss, score_threshold=score_threshold, nms_threshold=nms_threshold,
        detections_per_image=detections_per_image, freeze_backbone=freeze_backbone,
    )  # fmt: skip
    net = detector.features.backbone
    seg_tap = seg_tap or net.deepest_tap(16).name
    parts = deeplab_head_parts(
        net, seg_head, atrous_rates, channels=seg_channels, dropout=seg_dropout, head_tap=seg_tap,
        output_stride=net.info(seg_tap).stride,
    )  # fmt: skip
    segmenter = DeepLabHead(num_classes=num_seg_classes, **parts)
    adapter = None
    if seg_adapter:
        channels = net.info(seg_tap).channels
        adapter = conv_bn_relu6(channels, channels, kernel_size=3, groups=channels)
    net.select_taps(list(dict.fromkeys([*detector.features.taps, *segmenter.taps])))
    if grad_checkpointing is not None:
        net.set_grad_checkpointing(grad_checkpointing)
    weighting = LossWeighting({"detection": detection_weight, "segmentation": segmentation_weight}, learned_weighting)
    return MultiTaskModel(detector, segmenter, weighting, adapter)
