"""The joint model's part in quantization-aware fine-tuning (``engine.qat``): SSDLite's head
outputs and the segmentation logits of one backbone pass are fake-quantized and trained with the
model's own weighted loss (both tasks, each on the images that carry its labels); the exported
graph decodes the int8 head's outputs as ``JointOutputs`` does."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from engine.qat import QATPlan
from ssdlite.qat import DecodedHeadOutputs

from .model import MultiTaskModel


class JointRawOutputs(nn.Module):
    """``images`` ``N x 3 x H x W`` in [0, 1] -> ``cls_logits`` ``N x A x (C_det+1)``,
    ``bbox_regression`` ``N x A x 4`` and segmentation ``logits`` ``N x C_seg x H x W``:
    ``MultiTaskModel.raw_outputs``' tensors (submodules at ``model.*``, the names of the export graph)."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs, _, logits = self.model.raw_outputs(images)
        return outputs["cls_logits"], outputs["bbox_regression"], logits


class SegmentationLabels(nn.Module):
    """``graph``'s (boxes, scores, logits ``N x C_seg x H x W``) -> (boxes, scores, labels int64 ``N x H x W``)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, logits = self.graph(images)
        return boxes, scores, logits.argmax(dim=1)


def qat_plan(model: MultiTaskModel, image_size: tuple[int, int], labels: bool = False) -> QATPlan:
    """Fake-quantize ``JointRawOutputs(model)``; the loss is the model's training loss (its task
    weighting applied, summed) against a training batch's targets; the export graph decodes the
    int8 head (and gives the segmentation's argmax with ``labels``)."""
    with torch.no_grad():
        _, anchors, _ = model.eval().raw_outputs(torch.zeros(1, 3, *image_size))

    def loss(outputs: Sequence[torch.Tensor], batch: Any) -> torch.Tensor:
        cls_logits, bbox_regression, logits = outputs
        _, targets = batch
        head = {"cls_logits": cls_logits, "bbox_regression": bbox_regression}
        return sum(model.loss_weighting(model.losses(head, anchors, logits, targets)).values())

    def finish(converted: nn.Module) -> nn.Module:
        decoded = DecodedHeadOutputs(converted, model.detector, anchors, image_size)
        return SegmentationLabels(decoded) if labels else decoded

    return QATPlan(JointRawOutputs(model), loss, finish)
