"""From head outputs to detections: decode (traceable, for export) then per-class NMS.

``decode_detections`` is pure tensor code with no data-dependent shapes, so an exporter can
trace it and leave NMS to the runtime; ``select_detections`` thresholds, keeps the top-k per
class, runs class-wise greedy NMS and caps the detections per image.
"""

from __future__ import annotations

from typing import Literal

import torch
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

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


# Up to this many candidates, ``torchvision.ops.batched_nms`` is one ``nms`` kernel call on CPU
# (it offsets each class's boxes apart; above 4,000 coordinates it loops over the classes).
ONE_CALL_CANDIDATES = 1000
# Best candidates of an image settled first by ``select_detections``: COCO's 100 detections an
# image are usually among them (random weights: 100 kept of the best 256).
NMS_PREFIX = 256
# IoU entries per chunk when every class is settled: 1 MB of floats, inside the CPU's L2 and
# under the CLI's mmap threshold (``engine.host_memory``), so faster than one large chunk.
NMS_CHUNK_ELEMENTS = 1 << 18


def greedy_keep(suppresses: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Greedy NMS from its suppression graph: ``... x k`` bool, which candidates are kept.

    ``candidates`` ``... x k`` bool (by descending score along the last axis; the others are
    never kept and suppress nothing); ``suppresses`` ``... x k x k`` bool, ``[j, i]`` true when
    ``j`` ranks before ``i``, shares its class and overlaps it above the IoU threshold. Greedy
    NMS keeps ``i`` iff no kept ``j`` suppresses it. Iterating that rule from "every candidate
    kept" fixes one more leading position per round and its only fixed point is the greedy
    answer: exact, after as many rounds as the longest chain of suppressions (a few).
    """
    # "Any kept j suppresses i" as a product of 0/1 floats: exact, and 4x faster than bool any.
    suppresses = suppresses.float()
    keep = candidates
    while True:
        suppressed = (keep.unsqueeze(-2).float() @ suppresses).squeeze(-2) > 0
        next_keep = candidates & ~suppressed
        if torch.equal(next_keep, keep):
            return keep
        keep = next_keep


def rowwise_box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """``torchvision.ops.box_iou`` of each row with itself, ``B x k x 4`` xyxy -> ``B x k x k``.

    The same arithmetic as ``box_iou`` (bit-identical, tested), on unbound coordinates and in
    place: ``torch.vmap(box_iou)`` takes 2-4x as long on the strided ``[..., :2]`` slices.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    width = torch.minimum(x2[..., :, None], x2[..., None, :]).sub_(torch.maximum(x1[..., :, None], x1[..., None, :]))
    height = torch.minimum(y2[..., :, None], y2[..., None, :]).sub_(torch.maximum(y1[..., :, None], y1[..., None, :]))
    inter = width.clamp_(min=0).mul_(height.clamp_(min=0))
    return inter.div_((area[..., :, None] + area[..., None, :]).sub_(inter))


def class_rows_nms(boxes: torch.Tensor, candidates: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS inside every row (one class's candidates) at once: ``C x k`` bool, kept.

    ``boxes`` ``C x k x 4`` xyxy, each row by descending score; ``candidates`` ``C x k`` bool.
    Rows go in chunks of ``NMS_CHUNK_ELEMENTS`` IoU entries, so thousands of classes stay small.
    """
    num_rows, k = candidates.shape
    earlier = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu(1)
    chunk = max(1, NMS_CHUNK_ELEMENTS // max(1, k * k))
    keep = [
        greedy_keep(
            (rowwise_box_iou(boxes[i : i + chunk]) > iou_threshold) & earlier,
            candidates[i : i + chunk],
        )
        for i in range(0, num_rows, chunk)
    ]
    return torch.cat(keep) if keep else candidates


def prefix_nms(
    boxes: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-wise greedy NMS on candidates sorted by descending score, all classes at once:
    ``K`` bool, kept. ``boxes`` ``K x 4`` xyxy, ``labels`` ``K``, ``candidates`` ``K`` bool."""
    suppresses = (
        (box_iou(boxes, boxes) > iou_threshold)
        & (labels[:, None] == labels[None, :])
        & torch.ones(len(boxes), len(boxes), dtype=torch.bool, device=boxes.device).triu(1)
    )
    return greedy_keep(suppresses, candidates)


def image_nms(
    boxes: torch.Tensor, scores: torch.Tensor, candidates: torch.Tensor, iou_threshold: float, max_kept: int
) -> torch.Tensor:
    """Indices of the ``max_kept`` best candidates class-wise NMS keeps in one image, by
    descending score: what ``torchvision.ops.batched_nms`` gives (tested equal), faster.

    ``boxes`` ``C x k x 4`` xyxy and ``scores`` ``C x k``: each class's ``k`` best anchors, by
    descending score; ``candidates`` ``C x k`` bool, those above the score threshold. Indices
    point into the flattened ``C * k`` candidates (label = index // k).

    Up to ``ONE_CALL_CANDIDATES`` candidates this is ``batched_nms`` itself. Above, on CPU, it
    runs ``nms`` once per class in a Python loop (80 calls for COCO). There, the ``NMS_PREFIX``
    best candidates are settled first, all classes at once: a candidate's fate depends only on
    better ones of its class, all inside that prefix, so when it keeps ``max_kept`` they are the
    answer. Otherwise (strong suppression, few objects) every class's row is settled at once
    (``class_rows_nms``).
    """
    num_classes, k = scores.shape
    boxes, scores, candidates = boxes.reshape(-1, 4), scores.flatten(), candidates.flatten()
    labels = torch.arange(num_classes, device=scores.device).repeat_interleave(k)
    count = int(candidates.sum())
    if count <= ONE_CALL_CANDIDATES:
        index = candidates.nonzero().flatten()
        return index[batched_nms(boxes[index], scores[index], labels[index], iou_threshold)][:max_kept]
    prefix = scores.masked_fill(~candidates, -1).topk(min(NMS_PREFIX, len(scores))).indices
    keep = prefix[prefix_nms(boxes[prefix], labels[prefix], candidates[prefix], iou_threshold)]
    if len(keep) >= max_kept or count <= len(prefix):
        return keep[:max_kept]
    kept = class_rows_nms(boxes.view(num_classes, k, 4), candidates.view(num_classes, k), iou_threshold).flatten()
    return scores.masked_fill(~kept, -1).topk(min(max_kept, int(kept.sum()))).indices


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float = 0.001,
    nms_threshold: float = 0.6,
    topk_per_class: int = 100,
    detections_per_image: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Per image: the ``topk_per_class`` best anchors of each class, those above
    ``score_threshold``, class-wise NMS at ``nms_threshold`` (``image_nms``: the detections of
    ``torchvision.ops.batched_nms``, faster), the ``detections_per_image`` best kept.

    ``boxes`` ``N x A x 4`` xyxy, ``scores`` ``N x A x C``. Returns dicts with ``boxes`` ``K x 4``,
    ``scores`` ``K`` (descending) and ``labels`` ``K`` int64 in ``0..C-1``.
    """
    k = min(topk_per_class, scores.shape[1])
    top_scores, top_anchors = scores.transpose(1, 2).topk(k, dim=2)  # N x C x k, best anchors per class
    candidate_boxes = boxes.gather(1, top_anchors.flatten(1)[..., None].expand(-1, -1, 4))  # N x Ck x 4
    results = []
    for image_boxes, image_scores in zip(candidate_boxes.unflatten(1, top_scores.shape[1:]), top_scores):
        keep = image_nms(image_boxes, image_scores, image_scores > score_threshold, nms_threshold, detections_per_image)
        boxes_kept, scores_kept = image_boxes.reshape(-1, 4)[keep], image_scores.flatten()[keep]
        results.append({"boxes": boxes_kept, "scores": scores_kept, "labels": keep // k})
    return results


def rescale_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Map ``K x 4`` xyxy boxes from an input of ``from_size = (h, w)`` to an image of ``to_size``."""
    (fh, fw), (th, tw) = from_size, to_size
    scale = boxes.new_tensor([tw / fw, th / fh, tw / fw, th / fh])
    return boxes * scale
