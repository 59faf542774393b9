"""SSD multibox loss: smooth L1 on positive anchors plus classification with hard negatives.

Classification is softmax cross-entropy over ``num_classes + 1`` logits (column 0 is the
background) where, per image, only the ``neg_pos_ratio`` highest-loss negatives per positive
count (hard negative mining, 3:1 as in SSD and TF's ``ssdlite_mobilenet_v2_coco``; at least
``min_negatives_per_image`` so images without objects still teach background). Optionally,
sigmoid focal loss over every anchor (the background column is then unused). Both terms are
normalised by the number of positive anchors in the batch. Everything is batched.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from .box_coder import BoxCoder
from .matcher import BACKGROUND, match_anchors

ClassificationLoss = Literal["softmax", "focal"]


def hard_negative_mask(
    negative_loss: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: float, min_negatives: int = 0
) -> torch.Tensor:
    """``N x A`` bool: per image, the ``max(ratio * positives, min_negatives)`` hardest negatives.

    ``negative_loss``: ``N x A`` per-anchor background loss; ``positive``: ``N x A`` bool.
    """
    loss = negative_loss.detach().masked_fill(positive, -float("inf"))
    order = loss.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)
    num_negatives = (positive.sum(dim=1, keepdim=True) * neg_pos_ratio).clamp(min=min_negatives)
    num_negatives = torch.minimum(num_negatives, (~positive).sum(dim=1, keepdim=True))
    return rank < num_negatives


class MultiBoxLoss(torch.nn.Module):
    """Matches anchors to padded ground truths and returns ``{"bbox_regression", "classification"}``."""

    def __init__(
        self,
        box_coder: BoxCoder,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        min_negatives_per_image: int = 3,
        classification_loss: ClassificationLoss = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if classification_loss not in ("softmax", "focal"):
            raise ValueError(f"classification_loss must be 'softmax' or 'focal', got {classification_loss!r}")
        self.box_coder = box_coder
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives_per_image = min_negatives_per_image
        self.classification_loss = classification_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(
        self,
        cls_logits: torch.Tensor,
        bbox_regression: torch.Tensor,
        anchors: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_valid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``cls_logits`` ``N x A x (C+1)``, ``bbox_regression`` ``N x A x 4``, ``anchors``
        ``A x 4`` xyxy; ground truths padded as by ``matcher.pad_targets`` (labels 0..C-1)."""
        matched = match_anchors(anchors, gt_boxes, gt_valid, self.iou_threshold)  # N x A
        positive = matched != BACKGROUND
        index = matched.clamp(min=0)
        num_positive = positive.sum().clamp(min=1).to(cls_logits.dtype)

        matched_boxes = gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))
        box_targets = self.box_coder.encode(matched_boxes[positive], anchors.expand_as(matched_boxes)[positive])
        box_loss = F.smooth_l1_loss(bbox_regression[positive], box_targets, reduction="sum")

        # class 0 is background: object labels shift by one
        target_classes = torch.where(positive, gt_labels.gather(1, index) + 1, torch.zeros_like(index))
        if self.classification_loss == "focal":
            one_hot = F.one_hot(target_classes, cls_logits.shape[-1])[..., 1:].to(cls_logits.dtype)
            cls_loss = sigmoid_focal_loss(
                cls_logits[..., 1:], one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
            )
        else:
            ce = F.cross_entropy(cls_logits.transpose(1, 2), target_classes, reduction="none")  # N x A
            negative = hard_negative_mask(ce, positive, self.neg_pos_ratio, self.min_negatives_per_image)
            cls_loss = ce[positive | negative].sum()
        return {"bbox_regression": box_loss / num_positive, "classification": cls_loss / num_positive}
