"""COCO in its official layout (also the custom-dataset path: any image folder + COCO json).

Default layout under ``root``::

    train2017/*.jpg   val2017/*.jpg   annotations/instances_{train,val}2017.json

Category ids (COCO's 80 ids between 1 and 90, or any ids of a custom json) map to
contiguous labels ``0..C-1`` in increasing id order; ``label_to_category_id`` maps back,
and ``detections_to_coco_results`` writes predictions as an official results list.
Annotations are read with pycocotools. Boxes go from xywh to xyxy, are clipped to the image
and dropped when of zero area (counted). Crowd regions are no training targets; evaluation
targets keep them with ``iscrowd=1``. Images without annotations are kept as background
samples unless ``keep_empty_images=False``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from core.constants import IGNORE_INDEX

from .base import BaseDetectionDataModule, BaseSegmentationDataModule
from .datasets import ROUNDING_PX, DetectionDataset, DetectionRecord, SegmentationDataset, SegmentationItem, clip_box
from .problems import DataProblem, ProblemReport
from .voc import VOC_CLASSES, is_background_name

log = logging.getLogger(__name__)

# VOC class -> COCO category name, for the paper's COCO pre-training of the segmenter.
VOC_TO_COCO_NAMES = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}


def read_categories(annotation_file: str | Path) -> list[dict[str, Any]]:
    """The ``categories`` of a COCO json, sorted by id; a clear error if unusable."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    try:
        categories = json.loads(path.read_text())["categories"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a COCO instances json with 'categories' ({error})") from error
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate category ids {sorted(i for i in ids if ids.count(i) > 1)}")
    return sorted(categories, key=lambda c: c["id"])


def background_placeholders(categories: list[dict[str, Any]], annotation_files: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The categories that only stand for the background, as annotation tools export one (CVAT,
    labelme, Roboflow's id-0 dataset category): id 0 or a background name (``background``,
    ``_background_``, ``__background__``, any case), with no annotation in any of
    ``annotation_files`` (read only when such a category exists)."""
    candidates = {c["id"]: c for c in categories if c["id"] == 0 or is_background_name(str(c["name"]))}
    for path in annotation_files if candidates else ():
        for ann in json.loads(Path(path).read_text()).get("annotations", []):
            candidates.pop(ann.get("category_id"), None)
    return list(candidates.values())


def coco_splits(
    root: str | Path, train: tuple[str, str], val: tuple[str, str], test: tuple[str, str] | None = None
) -> dict[str, tuple[Path, Path]]:
    """``{split: (image folder, annotation json)}`` under ``root`` from ``(images, annotations)``
    pairs (relative to ``root``, or absolute); ``test`` defaults to ``val``."""
    pairs = {"train": train, "val": val, "test": test or val}
    return {split: (Path(root) / images, Path(root) / annotations) for split, (images, annotations) in pairs.items()}


def load_coco(annotation_file: str | Path) -> COCO:
    """pycocotools index of ``annotation_file`` (its own prints silenced into the log)."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco = COCO(str(annotation_file))
    log.debug("%s", printed.getvalue())
    return coco


def coco_detection_records(
    coco: COCO,
    image_dir: str | Path,
    category_ids: Sequence[int],
    *,
    keep_empty_images: bool = True,
    report: ProblemReport | None = None,
) -> list[DetectionRecord]:
    """One ``DetectionRecord`` per image of ``coco`` (labels = index in ``category_ids``).

    Annotations of other categories are dropped and counted as ``unknown_category``; boxes
    are clipped (``box_outside_image``) and dropped when of zero area (``zero_area_box``);
    images whose file is missing are dropped (``missing_image``). Images without any
    non-crowd box are kept only with ``keep_empty_images``.
    """
    report = report if report is not None else ProblemReport()
    image_dir = Path(image_dir)
    label_of = {cid: label for label, cid in enumerate(category_ids)}
    records = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        path = image_dir / info["file_name"]
        if not path.is_file():
            report.add(DataProblem("missing_image", path, "listed in the annotations but not on disk"))
            continue
        height, width = int(info["height"]), int(info["width"])
        boxes, labels, crowd = [], [], []
        for ann in coco.imgToAnns.get(image_id, []):
            if ann["category_id"] not in label_of:
                report.add(DataProblem("unknown_category", path, f"annotation {ann['id']} has category id {ann['category_id']}"))
                continue
            box = _clipped_xyxy(ann, path, width, height, report)
            if box is None:
                continue
            boxes.append(box)
            labels.append(label_of[ann["category_id"]])
            crowd.append(int(ann.get("iscrowd", 0)))
        if not keep_empty_images and not any(c == 0 for c in crowd):
            continue
        records.append(
            DetectionRecord(
                image_path=path,
                image_id=int(image_id),
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64),
                iscrowd=np.asarray(crowd, dtype=np.uint8),
                size=(height, width),
            )
        )
    return records


def _clipped_xyxy(ann: dict, path: Path, width: int, height: int, report: ProblemReport) -> list[float] | None:
    x, y, w, h = (float(v) for v in ann["bbox"])
    clipped, moved = clip_box([x, y, x + w, y + h], width, height)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        report.add(DataProblem("zero_area_box", path, f"annotation {ann['id']} box {ann['bbox']} (xywh) has no area inside the image"))
        return None
    if moved > ROUNDING_PX:
        report.add(DataProblem("box_outside_image", path, f"annotation {ann['id']} box {ann['bbox']} (xywh) clipped to the image"))
    return clipped


def detections_to_coco_results(
    image_ids: Sequence[int],
    boxes: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    label_to_category_id: Sequence[int],
) -> list[dict[str, Any]]:
    """Per-image predictions -> the official COCO results list (``loadRes`` / ``json.dump``).

    ``boxes[i]``: ``K x 4`` xyxy in the ORIGINAL image's pixels; ``scores[i]``: ``K``;
    ``labels[i]``: ``K`` int64 contiguous labels, written back as original category ids.
    """
    lookup = torch.as_tensor(list(label_to_category_id), dtype=torch.int64)
    results = []
    for image_id, b, s, l in zip(image_ids, boxes, scores, labels):
        xywh = b.detach().float().cpu().clone()
        xywh[:, 2:] -= xywh[:, :2]
        category_ids = lookup[l.detach().cpu().long()]
        for box, score, cid in zip(xywh.tolist(), s.detach().cpu().tolist(), category_ids.tolist()):
            results.append(
                {"image_id": int(image_id), "category_id": int(cid), "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
            )
    return results


class CocoDetectionDataModule(BaseDetectionDataModule):
    """COCO detection for SSDLite: ``(images N x 3 x S x S in [0, 1], targets)`` batches.

    ``num_classes``, ``class_names`` and ``label_to_category_id`` are known right after
    ``__init__`` (read from the categories of the val json, or the train json).

    Args:
        root: dataset folder; the paths below are relative to it (or absolute).
        train_images / train_annotations / val_images / val_annotations: official defaults.
        test_images / test_annotations: default to the val ones (test-dev has no labels).
        category_ids: use only these category ids, in this order. Default: all, by id, less a
            background placeholder category (id 0 or named ``background`` / ``_background_`` /
            ``__background__``, any case, and without any annotation in the train / val /
            test jsons), which is dropped with a log line. List the ids to keep such a
            category, or to train on some categories only.
        Others (image size, augmentation, empty images, loaders): ``BaseDetectionDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        category_ids: list[int] | None = None,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        test_images: str | None = None,
        test_annotations: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.splits = coco_splits(root, (train_images, train_annotations), (val_images, val_annotations),
                                  (test_images or val_images, test_annotations or val_annotations))  # fmt: skip
        source = next((a for _, a in (self.splits["val"], self.splits["train"]) if a.is_file()), None)
        if source is None:
            raise FileNotFoundError(
                f"no COCO annotation file: neither {self.splits['val'][1]} nor {self.splits['train'][1]} exists"
            )
        listed = read_categories(source)
        categories = {c["id"]: c["name"] for c in listed}
        ids = list(category_ids) if category_ids is not None else sorted(categories)
        if category_ids is None:
            files = sorted({a for _, a in self.splits.values() if a.is_file()})
            for placeholder in background_placeholders(listed, files):
                log.info("%s: category %d %r has no annotations: taken as a background placeholder, not a class "
                         "(set category_ids to keep it)", source, placeholder["id"], placeholder["name"])  # fmt: skip
                ids.remove(placeholder["id"])
        unknown = [i for i in ids if i not in categories]
        if unknown:
            raise ValueError(f"category_ids {unknown} are not in {source} (ids: {sorted(categories)})")
        self.label_to_category_id: list[int] = ids
        self.class_names: list[str] = [categories[i] for i in ids]
        self.num_classes = len(ids)

    def _build_dataset(self, split: str) -> tuple[DetectionDataset, ProblemReport]:
        image_dir, annotation_file = self.splits[split]
        report = ProblemReport(f"COCO {split} ({annotation_file})")
        records = coco_detection_records(load_coco(annotation_file), image_dir, self.label_to_category_id, report=report)
        return self._detection_dataset(records, split), report


@dataclass
class CocoSemanticMask:
    """Builds one image's ``H x W`` uint8 semantic mask from its COCO instances.

    Pixels of one selected class get ``label + 1`` (0 = background, other categories stay
    background); pixels claimed by two different classes, and crowd regions, get 255.
    """

    annotations: list[dict[str, Any]]
    height: int
    width: int
    label_of: dict[int, int]
    cache_key: str = ""  # names this mask for DecodedCache: annotation file version + image id

    def __call__(self) -> np.ndarray:
        mask = np.zeros((self.height, self.width), np.uint8)
        ignore = np.zeros((self.height, self.width), bool)
        for ann in self.annotations:
            if ann["category_id"] not in self.label_of or not ann["segmentation"]:
                continue
            instance = _decode_segmentation(ann["segmentation"], self.height, self.width)
            if ann.get("iscrowd", 0):
                ignore |= instance
                continue
            value = self.label_of[ann["category_id"]] + 1
            ignore |= instance & (mask != 0) & (mask != value)
            mask[instance] = value
        mask[ignore] = IGNORE_INDEX
        return mask


def _decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed or compressed RLE -> ``H x W`` bool."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


class CocoSegmentationDataModule(BaseSegmentationDataModule):
    """COCO -> VOC-classes semantic segmentation (the paper's COCO pre-training step).

    Masks are drawn from the instance polygons / RLE for ``class_names`` only (index 0 is
    background, other COCO categories are background too, overlaps and crowds are 255).
    ``coco_names`` gives each class's COCO category name (default: the VOC -> COCO name map,
    e.g. aeroplane -> airplane). Training keeps only images holding an outlined object of
    one of the classes unless ``keep_empty_images``.
    """

    def __init__(
        self,
        root: str,
        class_names: list[str] | None = None,
        coco_names: list[str] | None = None,
        keep_empty_images: bool = False,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.splits = coco_splits(root, (train_images, train_annotations), (val_images, val_annotations))
        names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        self.coco_names = list(coco_names) if coco_names is not None else [VOC_TO_COCO_NAMES.get(n, n) for n in names]
        if len(self.coco_names) != len(names):
            raise ValueError(f"coco_names has {len(self.coco_names)} names for {len(names)} class_names")
        self.class_names = ["background", *names]
        self.num_classes = len(self.class_names)
        self.keep_empty_images = keep_empty_images

    def _build_dataset(self, split: str) -> tuple[SegmentationDataset, ProblemReport]:
        image_dir, annotation_file = self.splits[split]
        report = ProblemReport(f"COCO segmentation {split} ({annotation_file})")
        coco = load_coco(annotation_file)
        by_name = {c["name"]: c["id"] for c in coco.dataset["categories"]}
        missing = [n for n in self.coco_names if n not in by_name]
        if missing:
            raise ValueError(f"{annotation_file}: no COCO categories named {missing}")
        label_of = {by_name[n]: label for label, n in enumerate(self.coco_names)}
        stat = Path(annotation_file).stat()
        annotations_version = f"{Path(annotation_file).resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{self.coco_names}"
        items = []
        for image_id in sorted(coco.imgs):
            info = coco.imgs[image_id]
            path = Path(image_dir) / info["file_name"]
            anns = [a for a in coco.imgToAnns.get(image_id, []) if a["category_id"] in label_of]
            has_object = any(not a.get("iscrowd", 0) and a["segmentation"] for a in anns)
            if split == "train" and not self.keep_empty_images and not has_object:
                continue
            if not path.is_file():
                report.add(DataProblem("missing_image", path, "listed in the annotations but not on disk"))
                continue
            mask = CocoSemanticMask(
                anns, int(info["height"]), int(info["width"]), label_of, f"{annotations_version}#{image_id}"
            )
            items.append(SegmentationItem(path, mask))
        return self._segmentation_dataset(items, split), report
