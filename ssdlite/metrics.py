"""Detection metrics through torchmetrics' ``MeanAveragePrecision`` (faster-coco-eval backend).

``coco`` is the COCO protocol (AP over IoU 0.5:0.95, 101 recall points, 100 detections).
``voc07`` is PASCAL VOC 2007 AP at IoU 0.5 with 11-point interpolation: the same evaluator with
IoU 0.5 only and recall points 0, 0.1, ..., 1 (COCO's interpolated precision at a recall point is
the maximum precision at any recall >= it, which is VOC07's definition); VOC "difficult" boxes
arrive as ``iscrowd`` and are ignored, as VOC does. Known differences from the VOC devkit: no
"+1" pixel in areas, and detections on a difficult box use COCO's crowd IoU (over the detection's
area).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

MetricName = Literal["coco", "voc07"]
# COCOeval's own float64 thresholds. torchmetrics' defaults come from float32 ``torch.linspace``
# (0.55 -> 0.550000011920929), which moves recalls that fall exactly on a threshold and changed
# mAP by 5e-4 on a test set; passing these makes the result equal to pycocotools'.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()
VOC07_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 11).tolist()
COCO_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def detection_metric(name: MetricName = "coco") -> MeanAveragePrecision:
    """A fresh metric; feed it xyxy boxes with ``scores``/``labels`` and targets with ``iscrowd``."""
    if name == "coco":
        return MeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            iou_thresholds=COCO_IOU_THRESHOLDS,
            rec_thresholds=COCO_RECALL_THRESHOLDS,
            backend="faster_coco_eval",
        )
    if name == "voc07":
        return MeanAveragePrecision(
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
