"""Segmentation scores from one confusion matrix accumulated over a whole evaluation set.

mIoU is the mean over classes of ``TP / (TP + FP + FN)``, skipping classes absent from both
labels and predictions (the VOC convention; torchmetrics' ``MulticlassJaccardIndex`` agrees).
The matrix is a torchmetrics state summed across processes, so scores are exact under DDP once
padding duplicates are masked out (``engine.distributed.unrepeated_samples``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from core.constants import IGNORE_INDEX



def scores_from_confusion_matrix(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
    """``C x C`` counts (rows: label, columns: prediction) -> ``miou`` (scalar), ``iou``
    (``C``, NaN for classes absent from labels and predictions) and ``pixel_accuracy``."""
    confmat = confmat.double()
    true_positives = confmat.diagonal()
    union = confmat.sum(0) + confmat.sum(1) - true_positives
    iou = torch.where(union > 0, true_positives / union.clamp(min=1), torch.nan)
    return {
        "miou": iou.nanmean(),
        "iou": iou,
        "pixel_accuracy": true_positives.sum() / confmat.sum().clamp(min=1),
    }


class SetCrossEntropy(Metric):
    """The cross-entropy of a whole evaluation set: the mean over all its labelled pixels,
    weighted by class as ``F.cross_entropy(weight=...)``, whatever the batching.

    Its two sums are states added across processes in float. (Lightning's ``sync_dist`` mean of
    batch losses floors its integer image count when processes hold different numbers of
    images, Lightning-AI/pytorch-lightning#21859; torchmetrics' ``MeanMetric`` drops the
    weights when its NaN check is off.) A NaN stays NaN: a diverged model must show.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight_sum", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, log_probabilities: torch.Tensor, masks: torch.Tensor, class_weights: torch.Tensor | None = None) -> None:
        """``N x C x H x W`` log-probabilities and ``N x H x W`` labels (255: ignored)."""
        self.loss_sum += F.nll_loss(
            log_probabilities, masks, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        labelled = masks[masks != IGNORE_INDEX]
        self.weight_sum += labelled.numel() if class_weights is None else class_weights[labelled].sum()

    def compute(self) -> torch.Tensor:
        return self.loss_sum / self.weight_sum


class SegmentationScores(MulticlassConfusionMatrix):
    """``update(predictions, labels)`` with ``N x H x W`` label maps (labels may hold 255);
    ``compute()`` gives ``scores_from_confusion_matrix`` of the whole set."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)

    def compute(self) -> dict[str, torch.Tensor]:
        return scores_from_confusion_matrix(super().compute())
