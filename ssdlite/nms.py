"""Class-wise greedy NMS for a whole batch at once, on each class's top-k candidates.

``torchvision.ops.batched_nms`` on CPU loops over classes in Python once it has more than
1,000 boxes (80 classes x 100 candidates is 8,000), and its single-call alternative (offset
boxes per class) compares every pair of the 8,000. Here every (image, class) keeps its own
``k x k`` IoU matrix, so the greedy pass is ``k`` tensor steps over all images and classes,
with the same result as ``torchvision.ops.nms`` per class (suppress IoU > threshold, highest
score first).
"""

from __future__ import annotations

import torch


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """``... x k x 4`` xyxy boxes -> ``... x k x k`` IoU of every pair within the same ``...``."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    top_left = torch.maximum(boxes[..., :, None, :2], boxes[..., None, :, :2])
    bottom_right = torch.minimum(boxes[..., :, None, 2:], boxes[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[..., :, None] + area[..., None, :] - inter)


def sorted_greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Which candidates greedy NMS keeps, for candidates already sorted by descending score.

    ``boxes`` ``... x k x 4`` xyxy, ``valid`` ``... x k`` bool (invalid ones neither survive nor
    suppress). Returns ``... x k`` bool. Candidate ``i`` is final once ranks ``< i`` are
    done, so one vectorised step per rank removes what it overlaps beyond ``iou_threshold``.
    """
    k = boxes.shape[-2]
    later = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu(diagonal=1)
    suppresses = (pairwise_iou(boxes) > iou_threshold) & later  # ... x k x k: row i removes column j
    keep = valid.clone()
    for i in range(k - 1):
        keep &= ~(suppresses[..., i, :] & keep[..., i : i + 1])
    return keep
