"""From head outputs to detections: decode (traceable, for export) then per-class NMS.

``decode_detections`` is pure tensor code with no data-dependent shapes, so an exporter can
trace it and leave NMS to the runtime; ``select_detections`` thresholds, keeps the top-k per
class, runs ``torchvision.ops.batched_nms`` and caps the detections per image.
"""

from __future__ import annotations

from typing import Literal

import torch
from torchvision.ops import batched_nms, clip_boxes_to_image

from .box_coder import BoxCoder


def decode_detections(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    anchors: torch.Tensor,
    box_coder: BoxCoder,
    image_size: tuple[int, int],
    score_activation: Literal["softmax", "sigmoid"] = "softmax",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes ``N x A x 4`` (xyxy, input pixels, clipped to ``image_size = (h, w)``) and class
    scores ``N x A x C`` (background dropped) from logits ``N x A x (C+1)`` and offsets ``N x A x 4``.
    """
    boxes = clip_boxes_to_image(box_coder.decode(bbox_regression, anchors), image_size)
    if score_activation == "softmax":
        scores = cls_logits.softmax(dim=-1)[..., 1:]
    else:
        scores = cls_logits[..., 1:].sigmoid()
    return boxes, scores


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float = 0.001,
    nms_threshold: float = 0.6,
    topk_per_class: int = 100,
    detections_per_image: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Per image: scores above ``score_threshold``, the ``topk_per_class`` best anchors of each
    class, class-wise NMS at ``nms_threshold``, the ``detections_per_image`` best kept.

    ``boxes`` ``N x A x 4`` xyxy, ``scores`` ``N x A x C``. Returns dicts with ``boxes`` ``K x 4``,
    ``scores`` ``K`` (descending) and ``labels`` ``K`` int64 in ``0..C-1``.
    """
    results = []
    num_anchors, num_classes = scores.shape[1:]
    k = min(topk_per_class, num_anchors)
    for image_boxes, image_scores in zip(boxes, scores):
        top_scores, top_anchors = image_scores.t().topk(k, dim=1)  # C x k, best anchors per class
        labels = torch.arange(num_classes, device=scores.device)[:, None].expand(-1, k)
        top_scores, top_anchors, labels = top_scores.flatten(), top_anchors.flatten(), labels.flatten()
        keep = top_scores > score_threshold
        top_scores, top_anchors, labels = top_scores[keep], top_anchors[keep], labels[keep]
        candidate_boxes = image_boxes[top_anchors]
        keep = batched_nms(candidate_boxes, top_scores, labels, nms_threshold)[:detections_per_image]
        results.append({"boxes": candidate_boxes[keep], "scores": top_scores[keep], "labels": labels[keep]})
    return results


def rescale_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Map ``K x 4`` xyxy boxes from an input of ``from_size = (h, w)`` to an image of ``to_size``."""
    (fh, fw), (th, tw) = from_size, to_size
    scale = boxes.new_tensor([tw / fw, th / fh, tw / fw, th / fh])
    return boxes * scale
