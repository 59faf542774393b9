"""Anchor-to-ground-truth matching for a whole batch at once.

Ground truths of a batch are padded to a common count (``pad_targets``) so that matching is
one set of tensor operations over ``N x G x A`` IoUs, with no loop over images. An anchor is
positive when its best IoU with a ground truth reaches the threshold (TF's argmax matcher at
0.5); every ground truth is also forced onto its best anchor, so none is left without one.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import box_iou

BACKGROUND = -1


def pad_targets(targets: Sequence[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack per-image targets into padded tensors.

    Returns ``boxes`` ``N x G x 4`` (xyxy, pixels), ``labels`` ``N x G`` int64 and ``valid``
    ``N x G`` bool, with ``G = max(1, most boxes in an image)`` so empty batches still have shape.
    """
    count = max([1] + [len(t["boxes"]) for t in targets])
    device = targets[0]["boxes"].device
    boxes = torch.zeros(len(targets), count, 4, device=device)
    labels = torch.zeros(len(targets), count, dtype=torch.int64, device=device)
    valid = torch.zeros(len(targets), count, dtype=torch.bool, device=device)
    for i, target in enumerate(targets):  # a copy per image, not matching: cheap
        k = len(target["boxes"])
        boxes[i, :k] = target["boxes"]
        labels[i, :k] = target["labels"]
        valid[i, :k] = True
    return boxes, labels, valid


def match_anchors(
    anchors: torch.Tensor, gt_boxes: torch.Tensor, gt_valid: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """Index of the ground truth each anchor is matched to, ``BACKGROUND`` (-1) for none.

    ``anchors``: ``A x 4`` xyxy; ``gt_boxes``: ``N x G x 4`` xyxy; ``gt_valid``: ``N x G``.
    Returns ``N x A`` int64 indices into ``G``.
    """
    n, g, _ = gt_boxes.shape
    num_anchors = anchors.shape[0]
    iou = box_iou(gt_boxes.reshape(n * g, 4), anchors).reshape(n, g, num_anchors)
    iou = iou.masked_fill(~gt_valid[..., None], -1.0)
    best_iou, matched = iou.max(dim=1)  # N x A
    matched = torch.where(best_iou >= iou_threshold, matched, torch.full_like(matched, BACKGROUND))
    # Force each valid ground truth onto its best anchor. Padding scatters into an extra,
    # discarded column so that the whole batch is one scatter.
    best_anchor = iou.argmax(dim=2)  # N x G
    best_anchor = torch.where(gt_valid, best_anchor, torch.full_like(best_anchor, num_anchors))
    gt_index = torch.arange(g, device=gt_boxes.device).expand(n, g)
    extended = torch.cat([matched, matched.new_full((n, 1), BACKGROUND)], dim=1)
    extended.scatter_(1, best_anchor, gt_index)
    return extended[:, :num_anchors]
