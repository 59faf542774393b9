"""SSDLite's part in quantization-aware fine-tuning (``engine.qat``): the head outputs are
fake-quantized and trained with the detector's own loss (anchor matching, hard negatives) in
eager code around them; the exported graph decodes the int8 head's outputs as
``DecodedDetections`` does."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from engine.qat import QATPlan

from .model import SSDLite
from .postprocess import decode_detections


class HeadOutputs(nn.Module):
    """``images`` ``N x 3 x H x W`` in [0, 1] -> ``cls_logits`` ``N x A x (C+1)`` and
    ``bbox_regression`` ``N x A x 4``: ``SSDLite.predict_raw``'s tensors (submodules at
    ``model.*``, the names of the export graph)."""

    def __init__(self, model: SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, _ = self.model.predict_raw(images)
        return outputs["cls_logits"], outputs["bbox_regression"]


class DecodedHeadOutputs(nn.Module):
    """``images`` ``N x 3 x H x W`` in [0, 1] -> ``SSDLite.decode``'s boxes ``N x A x 4`` (xyxy,
    input pixels, clipped) and scores ``N x A x C``, from ``head_outputs`` (a graph giving
    ``HeadOutputs``' tensors, then any others, passed on after the two) and the ``A x 4``
    ``anchors`` of the ``image_size = (H, W)`` input."""

    def __init__(self, head_outputs: nn.Module, model: SSDLite, anchors: torch.Tensor, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.head_outputs = head_outputs
        self.register_buffer("anchors", anchors)
        self.box_coder, self.score_activation, self.image_size = model.box_coder, model.score_activation, image_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cls_logits, bbox_regression, *others = self.head_outputs(images)
        boxes, scores = decode_detections(
            cls_logits, bbox_regression, self.anchors, self.box_coder, self.image_size, self.score_activation
        )
        return boxes, scores, *others


def qat_plan(model: SSDLite, image_size: tuple[int, int]) -> QATPlan:
    """Fake-quantize ``HeadOutputs(model)``; the loss is ``SSDLite.losses`` (summed, as in
    training) against a training batch's targets; the export graph decodes the int8 head."""
    with torch.no_grad():
        _, anchors = model.eval().predict_raw(torch.zeros(1, 3, *image_size))

    def loss(outputs: Sequence[torch.Tensor], batch: Any) -> torch.Tensor:
        cls_logits, bbox_regression = outputs
        _, targets = batch
        losses = model.losses({"cls_logits": cls_logits, "bbox_regression": bbox_regression}, anchors, targets)
        return sum(losses.values())

    return QATPlan(HeadOutputs(model), loss, lambda converted: DecodedHeadOutputs(converted, model, anchors, image_size))
