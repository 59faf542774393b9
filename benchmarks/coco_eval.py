"""COCO box evaluation of many images x 100 detections: our path vs plain pycocotools.

Ours is what training and ``validate`` run: ``ssdlite.metrics.detection_metric("coco")`` fed
per-image tensors (``update``) then ``compute``. The peer is the textbook pycocotools recipe on
the same data: ``COCO`` ground truth, ``loadRes`` of xywh detections, ``COCOeval`` evaluate,
accumulate, summarize. Both must give the same stats (checked on every run).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks.harness import Row, time_interleaved
from ssdlite.metrics import detection_metric

# torchmetrics keys and the index of the same figure in COCOeval.stats.
STAT_INDEX = {"map": 0, "map_50": 1, "map_75": 2, "map_small": 3, "map_medium": 4, "map_large": 5, "mar_100": 8}


def synthetic_coco(num_images: int, detections: int = 100, num_classes: int = 80, seed: int = 0):
    """Ground truth (1-15 boxes per image, all sizes, some crowd) and ``detections`` per image:
    jittered copies of the ground truth plus random boxes, random scores. Boxes xyxy, 640x480."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(num_images):
        k = int(rng.integers(1, 16))
        xy = rng.uniform(0, 400, (k, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(300), (k, 2)))
        gt_boxes = np.concatenate([xy, np.minimum(xy + wh, [640, 480])], axis=1)
        gts.append({"boxes": gt_boxes, "labels": rng.integers(0, num_classes, k), "iscrowd": rng.random(k) < 0.03})
        near = gt_boxes[rng.integers(0, k, detections // 2)] + rng.normal(0, 6, (detections // 2, 4))
        xy = rng.uniform(0, 560, (detections - len(near), 2))
        far = np.concatenate([xy, xy + rng.uniform(4, 200, (len(xy), 2))], axis=1)
        boxes = np.concatenate([near, far]).clip(0, 640)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.where(rng.random(detections) < 0.7, np.concatenate([gts[-1]["labels"], np.zeros(detections, int)])[
            rng.integers(0, k, detections)], rng.integers(0, num_classes, detections))
        dets.append({"boxes": boxes, "scores": rng.random(detections), "labels": labels})
    return gts, dets


def ours_stats(gts, dets) -> dict[str, float]:
    metric = detection_metric("coco")
    for gt, det in zip(gts, dets):
        metric.update(
            [{k: torch.as_tensor(v, dtype=torch.float32 if k != "labels" else torch.int64) for k, v in det.items()}],
            [{"boxes": torch.as_tensor(gt["boxes"], dtype=torch.float32), "labels": torch.as_tensor(gt["labels"]),
              "iscrowd": torch.as_tensor(gt["iscrowd"], dtype=torch.int64)}],
        )
    result = metric.compute()
    return {key: float(result[key]) for key in STAT_INDEX}


def pycocotools_stats(gts, dets) -> dict[str, float]:
    def xywh(b: np.ndarray) -> list[float]:
        b = b.astype(np.float32).astype(np.float64)  # the precision both sides receive
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    images, annotations, results = [], [], []
    for image_id, (gt, det) in enumerate(zip(gts, dets), start=1):
        images.append({"id": image_id, "width": 640, "height": 480})
        for box, label, crowd in zip(gt["boxes"], gt["labels"], gt["iscrowd"]):
            x, y, w, h = xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(crowd)})
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
            results.append({"image_id": image_id, "category_id": int(label), "bbox": xywh(box),
                            "score": float(np.float32(score))})
    categories = [{"id": c, "name": str(c)} for c in range(80)]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {"images": images, "annotations": annotations, "categories": categories}
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {key: float(evaluation.stats[i]) for key, i in STAT_INDEX.items()}


def coco_eval_rows(num_images: int = 5000, repeats: int = 2) -> list[Row]:
    gts, dets = synthetic_coco(num_images)
    ours, peer = ours_stats(gts, dets), pycocotools_stats(gts, dets)
    worst = max(abs(ours[k] - peer[k]) for k in STAT_INDEX)
    # torchmetrics returns float32: "identical" means equal at float32 precision.
    if worst > 1e-6:
        raise AssertionError(f"COCO stats differ by {worst}: ours {ours}, pycocotools {peer}")
    ours_s, peer_s = time_interleaved(
        lambda: ours_stats(gts, dets), lambda: pycocotools_stats(gts, dets), warmup=0, min_repeats=repeats,
        min_seconds=0,
    )
    return [
        Row.timed(
            name=f"COCO evaluation, {num_images} images x 100 detections",
            ours="ssdlite.metrics (torchmetrics + faster-coco-eval)",
            peer="pycocotools COCOeval",
            ours_s=ours_s,
            peer_s=peer_s,
            target="<= 0.2",
            settings={"images": num_images, "stats equal": f"max |diff| {worst:.1e}", "map": round(ours["map"], 4),
                      "speed-up": round(peer_s / ours_s, 2)},
        )
    ]
