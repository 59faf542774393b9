"""Detection metrics through torchmetrics' ``MeanAveragePrecision`` (faster-coco-eval backend).

``coco`` is the COCO protocol (AP over IoU 0.5:0.95, 101 recall points, 100 detections).
``voc07`` is PASCAL VOC 2007 AP at IoU 0.5 with 11-point interpolation: the same evaluator with
IoU 0.5 only and recall points 0, 0.1, ..., 1 (COCO's interpolated precision at a recall point is
the maximum precision at any recall >= it, which is VOC07's definition); VOC "difficult" boxes
arrive as ``iscrowd`` and are ignored, as VOC does. Known differences from the VOC devkit: no
"+1" pixel in areas, and detections on a difficult box use COCO's crowd IoU (over the detection's
area).

Under DDP the per-image states are gathered by ``ImageOrderedMeanAveragePrecision``, which
works when processes hold different numbers of images (torchmetrics' own gather does not).
"""

from __future__ import annotations

from itertools import chain, zip_longest
from typing import Any, Literal, Sequence

import numpy as np
import torch
from lightning_utilities import apply_to_collection
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

MetricName = Literal["coco", "voc07"]
# COCOeval's own float64 thresholds. torchmetrics' defaults come from float32 ``torch.linspace``
# (0.55 -> 0.550000011920929), which moves recalls that fall exactly on a threshold and changed
# mAP by 5e-4 on a test set; passing these makes the result equal to pycocotools'.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()
VOC07_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 11).tolist()
COCO_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")
_NO_IMAGE = object()


def interleave_ranks(per_rank: Sequence[Sequence[Any]]) -> list[Any]:
    """Rank ``r``'s ``i``-th item at position ``r + R * i``: the dataset's order when rank ``r``
    of ``R`` evaluated images ``r, r + R, r + 2R, ...`` (ranks may hold one image fewer)."""
    rounds = zip_longest(*per_rank, fillvalue=_NO_IMAGE)
    return [item for item in chain.from_iterable(rounds) if item is not _NO_IMAGE]


class ImageOrderedMeanAveragePrecision(MeanAveragePrecision):
    """``MeanAveragePrecision`` whose per-image states survive processes that hold different
    numbers of images, gathered back into the dataset's order.

    torchmetrics gathers a list state one tensor per collective call, so a process with one
    image more than another makes one call more: gloo aborts on the size mismatch, NCCL hangs.
    Here each process's lists travel as one object (``all_gather_object``, tensors on CPU), and
    ``interleave_ranks`` restores the order of ``datamodules.UnpaddedDistributedSampler``'s
    strided shards, so that COCOeval breaks score ties between images as in one process and the
    result equals a single-process evaluation exactly.
    """

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        group = process_group or self.process_group
        local = {attr: apply_to_collection(getattr(self, attr), Tensor, Tensor.cpu) for attr in self._reductions}
        gathered: list[dict[str, list]] = [{} for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather_object(gathered, local, group=group)
        for attr in self._reductions:
            images = interleave_ranks([states[attr] for states in gathered])
            setattr(self, attr, apply_to_collection(images, Tensor, Tensor.to, self.device))


def detection_metric(name: MetricName = "coco") -> MeanAveragePrecision:
    """A fresh metric; feed it xyxy boxes with ``scores``/``labels`` and targets with ``iscrowd``."""
    if name == "coco":
        return ImageOrderedMeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            iou_thresholds=COCO_IOU_THRESHOLDS,
            rec_thresholds=COCO_RECALL_THRESHOLDS,
            backend="faster_coco_eval",
        )
    if name == "voc07":
        return ImageOrderedMeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            iou_thresholds=[0.5],
            rec_thresholds=VOC07_RECALL_THRESHOLDS,
            backend="faster_coco_eval",
        )
    raise ValueError(f"unknown detection metric {name!r}; use 'coco' or 'voc07'")


def summarize(name: MetricName, result: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The scalars to log: COCO's AP family, or ``ap50_voc07`` for VOC."""
    if name == "voc07":
        return {"ap50_voc07": result["map"]}
    return {key: result[key] for key in COCO_KEYS}
