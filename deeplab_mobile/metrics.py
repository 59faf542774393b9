"""Segmentation scores from one confusion matrix accumulated over a whole evaluation set.

mIoU is the mean over classes of ``TP / (TP + FP + FN)``, skipping classes absent from both
labels and predictions (the VOC convention; torchmetrics' ``MulticlassJaccardIndex`` agrees).
The matrix is a torchmetrics state summed across processes, so scores are exact under DDP once
padding duplicates are masked out (``unrepeated_samples``).
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler, Sampler
from torchmetrics.classification import MulticlassConfusionMatrix

IGNORE_INDEX = 255


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


class SegmentationScores(MulticlassConfusionMatrix):
    """``update(predictions, labels)`` with ``N x H x W`` label maps (labels may hold 255);
    ``compute()`` gives ``scores_from_confusion_matrix`` of the whole set."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)

    def compute(self) -> dict[str, torch.Tensor]:
        return scores_from_confusion_matrix(super().compute())


def unrepeated_samples(sampler: Sampler | None, first: int, count: int) -> torch.Tensor:
    """Which of this process's samples ``first .. first + count - 1`` are not padding.

    A ``DistributedSampler`` that does not drop the tail (what Lightning injects for
    validation and test) repeats samples so every process gets the same number; counting
    them would weigh those images twice. Process ``rank`` takes global positions
    ``rank, rank + R, ...``; a position past the dataset length is a repeat. Any other
    sampler repeats nothing. Returns a bool tensor of length ``count``.
    """
    local = torch.arange(first, first + count)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return torch.ones(count, dtype=torch.bool)
    return sampler.rank + sampler.num_replicas * local < len(sampler.dataset)
