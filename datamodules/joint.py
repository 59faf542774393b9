"""Joint detection + segmentation data: each image with its boxes AND its semantic mask, both
transformed with the image in one albumentations call (``ssd_train_transform``).

Sources:

- ``JointVOCDataModule``: VOC ``Annotations`` XML + ``SegmentationClass`` PNG of the images
  that have both (the shapes dataset's VOC layout too);
- ``JointCocoDataModule``: a COCO json, boxes and polygon / RLE instances drawn into a semantic
  mask over chosen categories (the shapes dataset's COCO layout too);
- ``MixedJointDataModule``: a detection-only datamodule and a segmentation-only one, mixed at
  a ratio; each sample says which label it carries.

Batches for fit / validate / test are ``(images, targets)``: ``images`` float32
``N x 3 x S x S`` in [0, 1] (``S = image_size``; evaluation: the original image resized to
``S x S`` bilinearly, as ``ssd_eval_transform`` does for detection), ``targets`` a list of N
dicts:

- ``boxes`` float32 ``K x 4`` xyxy in input (``S x S``) pixels, ``labels`` int64 ``K``
  (``0..num_det_classes-1``), ``iscrowd`` uint8 ``K``, ``image_id`` int64 0-d, ``orig_size``
  int64 ``[h, w]``;
- ``mask`` int64 ``S x S`` class indices in input pixels (0 background, 255 ignore; all 255
  when the sample has no mask);
- ``has_boxes`` bool 0-d: False when the image carries no box annotation at all (a
  segmentation-only source): its boxes are empty and say nothing about its objects;
- ``has_mask`` bool 0-d;
- evaluation only: ``orig_boxes`` ``K x 4`` in original pixels (the annotated boxes, in the
  order of ``labels``) and ``orig_mask`` int64 ``h x w`` (all 255 when there is no mask).

Predict batches are the detection datamodules' (``S x S`` images and metas). Datamodules carry
``image_size``, ``num_det_classes``, ``num_seg_classes`` (background included, index 0),
``det_class_names``, ``seg_class_names`` (background first) and ``class_names`` (=
``det_class_names``).

Config ``data:`` sections (paths relative to the working directory)::

    # the embedded shapes dataset (python -m datamodules.shapes --out data/shapes), CPU
    data:
      class_path: datamodules.JointVOCDataModule
      init_args:
        root: data/shapes
        class_names: [circle, square, triangle, star, hexagon]
        image_size: 224
        zoom_out: false
        photometric: false
        batch_size: 16
        eval_batch_size: 24
        num_workers: 2
        pin_memory: false

    # COCO 2017: boxes of the 80 categories, masks of the 20 VOC categories (ids in VOC order)
    data:
      class_path: datamodules.JointCocoDataModule
      init_args:
        root: data/coco
        seg_category_ids: [5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72]
        image_size: 320
        batch_size: 24

    # a detection-only and a segmentation-only dataset, 60 % of the training samples from the first
    data:
      class_path: datamodules.MixedJointDataModule
      init_args:
        detection:
          class_path: datamodules.CocoDetectionDataModule
          init_args: {root: data/shapes/coco}
        segmentation:
          class_path: datamodules.VOCSegmentationDataModule
          init_args: {root: data/shapes, class_names: [circle, square, triangle, star, hexagon]}
        detection_fraction: 0.6
        image_size: 224
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import albumentations as A
import numpy as np
import torch

from core.constants import IGNORE_INDEX

from .base import BaseDetectionDataModule, BaseSegmentationDataModule
from .coco import CocoDetectionDataModule, CocoSemanticMask, coco_detection_records, load_coco
from .datasets import (
    DetectionDataset,
    DetectionRecord,
    MaskSource,
    SegmentationItem,
    has_training_target,
    load_checked_mask,
)
from .image_io import LoadedImage, read_list
from .problems import DataProblem, ProblemReport
from .transforms import ssd_train_transform, ssd_eval_transform
from .voc import VOC_CLASSES, is_background_name, parse_voc_xml

log = logging.getLogger(__name__)


@dataclass
class JointRecord(DetectionRecord):
    """A ``DetectionRecord`` (boxes ``K x 4`` xyxy in original pixels, labels, iscrowd, size)
    with where its ``H x W`` class-index mask comes from (None: no mask), and whether the
    boxes are annotations at all (False: a segmentation-only image, ``boxes`` empty)."""

    mask: MaskSource | None = None
    has_boxes: bool = True


def boxes_only(record: DetectionRecord) -> JointRecord:
    """A detection-only sample: ``record`` without a mask."""
    return JointRecord(**vars(record), mask=None, has_boxes=True)


def mask_only(item: SegmentationItem, image_id: int) -> JointRecord:
    """A segmentation-only sample: ``item`` with no box annotation."""
    return JointRecord(
        image_path=item.image_path,
        image_id=image_id,
        boxes=np.zeros((0, 4), np.float32),
        labels=np.zeros(0, np.int64),
        iscrowd=np.zeros(0, np.uint8),
        mask=item.mask,
        has_boxes=False,
    )


class JointDataset(DetectionDataset):
    """Items ``(image uint8 3 x S x S, target)`` with the joint target dict (module docstring):
    image, boxes and mask through one call of ``transform``.

    Masks must match their image's size and hold only ``0..num_seg_classes-1`` or
    ``mask_ignore_index`` (turned into 255), as ``SegmentationDataset`` checks; otherwise the
    sample is skipped and counted (raised when ``strict``). ``evaluation`` adds ``orig_boxes``
    and ``orig_mask``; ``include_crowd`` as for ``DetectionDataset``.
    """

    def __init__(
        self,
        records: list[JointRecord],
        transform: A.Compose,
        *,
        num_seg_classes: int,
        include_crowd: bool,
        evaluation: bool = False,
        mask_ignore_index: int = IGNORE_INDEX,
        strict: bool = False,
    ) -> None:
        super().__init__(records, transform, include_crowd=include_crowd, original_boxes=evaluation, strict=strict)
        self.num_seg_classes = num_seg_classes
        self.mask_ignore_index = mask_ignore_index

    def load(self, index: int) -> tuple[LoadedImage, np.ndarray | None]:
        """Decoded and checked ``(image, H x W uint8 mask or None)``; raises ``DataProblem``."""
        loaded = super().load(index)
        record = self.items[index]
        if record.mask is None:
            return loaded, None
        shape = loaded.array.shape[:2]
        return loaded, load_checked_mask(record.mask, record.image_path, shape, self.num_seg_classes, self.mask_ignore_index)

    def _transformed(
        self, index: int, loaded: tuple[LoadedImage, np.ndarray | None]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.items[index]
        image, mask = loaded[0].array, loaded[1]
        # A sample without a mask carries an all-ignore one, so every sample has the same keys.
        full_mask = mask if mask is not None else np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
        tensor, target, out = self._augmented(record, image, mask=full_mask)
        target["mask"] = torch.from_numpy(np.ascontiguousarray(out["mask"])).long()
        target["has_boxes"] = torch.tensor(record.has_boxes)
        target["has_mask"] = torch.tensor(mask is not None)
        if self.original_boxes:
            target["orig_mask"] = torch.from_numpy(full_mask).long()
        return tensor, target


class BaseJointDataModule(BaseDetectionDataModule):
    """Joint data: the SSD augmentation with the mask carried along for training
    (``ssd_train_transform``), resize-only evaluation, ``S x S`` predict, detection batches.

    Arguments: ``BaseDetectionDataModule``'s (image size, augmentation switches,
    ``keep_empty_images``, ``image_ids_from``, loaders). Subclasses call ``_set_classes`` in
    ``__init__`` and build their datasets with ``_joint_dataset``.
    """

    def _set_classes(self, det_class_names: Sequence[str], seg_class_names: Sequence[str]) -> None:
        """The class lists: detection classes, and segmentation classes with background first."""
        self.det_class_names = list(det_class_names)
        self.seg_class_names = list(seg_class_names)
        self.class_names = self.det_class_names
        self.num_det_classes = len(self.det_class_names)
        self.num_seg_classes = len(self.seg_class_names)

    def _joint_dataset(
        self, records: list[JointRecord], split: str, keep_crowd: bool = False, mask_ignore_index: int = IGNORE_INDEX
    ) -> JointDataset:
        """``records`` of ``split`` as a dataset. Training leaves out crowd / difficult boxes
        (unless ``keep_crowd``) and, unless ``keep_empty_images``, the box-annotated images
        without a training target; evaluation keeps every image and box."""
        train = split == "train"
        if train and not self.keep_empty_images:
            records = [r for r in records if not r.has_boxes or has_training_target(r, keep_crowd)]
        if train:
            transform = ssd_train_transform(self.image_size, fill=self.fill, **self.augment)
        else:
            transform = ssd_eval_transform(self.image_size)
        return JointDataset(
            records,
            transform,
            num_seg_classes=self.num_seg_classes,
            include_crowd=not train or keep_crowd,
            evaluation=not train,
            mask_ignore_index=mask_ignore_index,
            strict=self.strict,
        )


class JointVOCDataModule(BaseJointDataModule):
    """PASCAL VOC images with both an ``Annotations`` XML and a ``SegmentationClass`` PNG.

    Args:
        root: the folder holding ``devkit`` (``VOCdevkit``).
        train_sets / val_sets / test_sets: ``"VOC20XX/<list>"`` names of split lists under
            ``ImageSets/<image_sets>`` (default ``VOC2012/train``, ``VOC2012/val``; test: val).
        image_sets: ``Segmentation`` (every listed image must have its mask: a missing one is
            a problem) or ``Main`` (listed images without a mask are left out, logged).
        mask_dir: the mask folder of each year (``SegmentationClass``).
        class_names: object classes (default: the 20 VOC classes), the detection classes; mask
            value ``k`` is ``class_names[k - 1]``. The segmentation classes are
            ``[background_name, *class_names]``, unless the list starts with a background
            entry (``background``, ``_background_``, ``__background__``): it is then class 0
            of the masks and no detection class.
        keep_difficult: keep ``difficult`` objects in the TRAINING targets too (as crowd).
        mask_ignore_index: the masks' "ignore" value (VOC: 255); targets carry 255 there.
        Others: ``BaseJointDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        devkit: str = "VOCdevkit",
        train_sets: list[str] | None = None,
        val_sets: list[str] | None = None,
        test_sets: list[str] | None = None,
        image_sets: str = "Segmentation",
        mask_dir: str = "SegmentationClass",
        class_names: list[str] | None = None,
        background_name: str = "background",
        keep_difficult: bool = False,
        mask_ignore_index: int = IGNORE_INDEX,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.devkit = Path(root) / devkit
        val_sets = val_sets or ["VOC2012/val"]
        self.sets = {"train": train_sets or ["VOC2012/train"], "val": val_sets, "test": test_sets or val_sets}
        self.image_sets = image_sets
        self.mask_dir = mask_dir
        names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        if names and is_background_name(names[0]):
            self._set_classes(names[1:], names)
        else:
            self._set_classes(names, [background_name, *names])
        if 0 <= mask_ignore_index < self.num_seg_classes:
            raise ValueError(f"mask_ignore_index {mask_ignore_index} is one of the {self.num_seg_classes} class indices")
        self.mask_ignore_index = mask_ignore_index
        self.keep_difficult = keep_difficult

    def records(self, split: str, report: ProblemReport) -> list[JointRecord]:
        """The images of every set of ``split`` with boxes and mask; unique ``image_id``s across sets."""
        records: list[JointRecord] = []
        without_mask = 0
        for set_name in self.sets[split]:
            year, _, list_name = set_name.rpartition("/")
            folder = self.devkit / year
            for line in read_list(folder / "ImageSets" / self.image_sets / f"{list_name}.txt"):
                stem = line.split()[0]  # per-class lists carry a second column
                image_path = folder / "JPEGImages" / f"{stem}.jpg"
                mask_path = folder / self.mask_dir / f"{stem}.png"
                if self.image_sets != "Segmentation" and not mask_path.is_file():
                    without_mask += 1
                    continue
                try:
                    boxes, labels, difficult, size = parse_voc_xml(
                        folder / "Annotations" / f"{stem}.xml", self.det_class_names, report
                    )
                    if not image_path.is_file():
                        raise DataProblem("missing_image", image_path, f"listed in {set_name} but not on disk")
                    if not mask_path.is_file():
                        raise DataProblem("missing_mask", mask_path, f"mask of {stem}, listed in {set_name}, does not exist")
                except DataProblem as problem:
                    report.add(problem)
                    continue
                records.append(JointRecord(image_path, len(records), boxes, labels, difficult, size, mask=mask_path))
        if without_mask:
            log.info("%s: %d listed images have no %s mask: left out", ", ".join(self.sets[split]), without_mask, self.mask_dir)
        return records

    def _build_dataset(self, split: str) -> tuple[JointDataset, ProblemReport]:
        report = ProblemReport(f"VOC joint {split} ({', '.join(self.sets[split])})")
        dataset = self._joint_dataset(self.records(split, report), split, self.keep_difficult, self.mask_ignore_index)
        return dataset, report


class JointCocoDataModule(BaseJointDataModule):
    """COCO: boxes of ``category_ids``, semantic masks over ``seg_category_ids``.

    Mask pixels of a segmentation category get its index + 1 (0 = background, including every
    other category), crowd regions and pixels two classes claim get 255 (``CocoSemanticMask``).
    An image with an annotation of a segmentation category that has no ``segmentation``
    (polygons or RLE) has no known mask: it keeps its boxes with ``has_mask`` False
    (``no_segmentation``, counted).

    Args:
        root: dataset folder; the paths below are relative to it (or absolute).
        category_ids: the detection categories, as ``CocoDetectionDataModule`` takes them
            (default: all, less a background placeholder).
        seg_category_ids: the segmentation categories, in class order (default: all, the same
            way). E.g. the 20 VOC categories for VOC-style masks.
        train_images / ... / test_annotations: as ``CocoDetectionDataModule``'s.
        Others: ``BaseJointDataModule``'s.

    ``label_to_category_id`` maps detection labels back to COCO ids (for results files).
    """

    def __init__(
        self,
        root: str,
        category_ids: list[int] | None = None,
        seg_category_ids: list[int] | None = None,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        test_images: str | None = None,
        test_annotations: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        layout = {"train_images": train_images, "train_annotations": train_annotations, "val_images": val_images,
                  "val_annotations": val_annotations, "test_images": test_images, "test_annotations": test_annotations}  # fmt: skip
        # Both category lists resolve (and fail) exactly as the detection datamodule's does.
        boxes = CocoDetectionDataModule(root, category_ids, **layout)
        masks = CocoDetectionDataModule(root, seg_category_ids, **layout)
        self.splits = boxes.splits
        self.label_to_category_id: list[int] = boxes.label_to_category_id
        self.seg_category_ids: list[int] = masks.label_to_category_id
        self._set_classes(boxes.class_names, ["background", *masks.class_names])

    def _build_dataset(self, split: str) -> tuple[JointDataset, ProblemReport]:
        image_dir, annotation_file = self.splits[split]
        report = ProblemReport(f"COCO joint {split} ({annotation_file})")
        coco = load_coco(annotation_file)
        label_of = {cid: label for label, cid in enumerate(self.seg_category_ids)}
        records = []
        for record in coco_detection_records(coco, image_dir, self.label_to_category_id, report=report):
            anns = [a for a in coco.imgToAnns.get(record.image_id, []) if a["category_id"] in label_of]
            unoutlined = [a["id"] for a in anns if not a.get("segmentation")]
            mask = None
            if unoutlined:
                report.add(DataProblem("no_segmentation", record.image_path,
                                       f"annotations {unoutlined[:5]} have no segmentation: the image has no mask"))  # fmt: skip
            else:
                mask = CocoSemanticMask(anns, *record.size, label_of)
            records.append(JointRecord(**vars(record), mask=mask))
        return self._joint_dataset(records, split), report


# Mixing: the epoch holds whole passes over both sources, the fewest whose mix lies within
# MIX_TOLERANCE of the asked fraction (the closest within MAX_PASSES passes otherwise).
MIX_TOLERANCE = 0.01
MAX_PASSES = 32


def mixed_records(
    detection: list[JointRecord], segmentation: list[JointRecord], detection_fraction: float
) -> list[JointRecord]:
    """One epoch's records: ``a`` passes over ``detection`` then ``b`` over ``segmentation``,
    so that ``detection`` makes about ``detection_fraction`` (in [0, 1]) of them.

    Whole passes keep every record of a source equally often in every epoch; the mix is within
    ``MIX_TOLERANCE`` of the fraction when some ``a <= MAX_PASSES`` reaches it (e.g. 6 + 6
    records at 0.25: 1 + 3 passes; 1000 + 1500 at 0.5: 3 + 2).
    """
    shares = (("detection", detection, detection_fraction), ("segmentation", segmentation, 1 - detection_fraction))
    for name, records, share in shares:
        if share > 0 and not records:
            raise ValueError(f"the {name} source has no training samples but a share of {share:g} of the mix")
    if detection_fraction in (0.0, 1.0):
        return list(detection if detection_fraction == 1.0 else segmentation)
    n_det, n_seg = len(detection), len(segmentation)
    best = (math.inf, 1, 1)
    for a in range(1, MAX_PASSES + 1):
        b = max(1, round(a * n_det * (1 - detection_fraction) / (detection_fraction * n_seg)))
        best = min(best, (abs(a * n_det / (a * n_det + b * n_seg) - detection_fraction), a, b))
        if best[0] <= MIX_TOLERANCE:
            break
    _, a, b = best
    return detection * a + segmentation * b


def _source_datamodule(config: dict[str, Any], base: type, key: str) -> Any:
    """The datamodule ``{"class_path": ..., "init_args": {...}}`` of ``key``, a ``base`` subclass."""
    if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
        raise ValueError(f"{key}: expected {{class_path: <module>.<DataModule>, init_args: {{...}}}}, got {config!r}")
    module_name, _, class_name = config["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{key}: cannot import {config['class_path']!r} ({error})") from error
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{key}: {config['class_path']} is not a {base.__name__}")
    return cls(**config.get("init_args", {}))


class MixedJointDataModule(BaseJointDataModule):
    """Two single-label sources in one model: a detection datamodule's images (``has_mask``
    False) and a segmentation datamodule's (``has_boxes`` False).

    Only the sources' file lists are used: both pass through this module's joint pipeline
    (its ``image_size``, augmentation and loaders; the sources' own are ignored). Training
    mixes them at ``detection_fraction`` (``mixed_records``); the epoch is a fixed list, so
    its order is the usual function of (seed, epoch, position) and resumes mid-epoch.
    Validation and test hold both sources' sets once each, detection first.

    Args:
        detection: ``{class_path, init_args}`` of a ``BaseDetectionDataModule`` subclass
            (e.g. ``datamodules.CocoDetectionDataModule``); gives the detection classes.
        segmentation: the same for a ``BaseSegmentationDataModule`` subclass; gives the
            segmentation classes (background first, as those datamodules put it).
        detection_fraction: the share of training samples drawn from ``detection`` (an epoch
            is whole passes over both sources, mixed within 0.01 of it: ``mixed_records``).
        Others: ``BaseJointDataModule``'s.

    Segmentation samples get image ids after the detection source's largest.
    """

    def __init__(
        self,
        detection: dict[str, Any],
        segmentation: dict[str, Any],
        detection_fraction: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= detection_fraction <= 1.0:
            raise ValueError(f"detection_fraction must lie in [0, 1], got {detection_fraction}")
        # Configs, not datamodules, in the arguments: saved hyperparameters stay plain data,
        # which checkpoints loaded with weights_only=True accept.
        self.detection = _source_datamodule(detection, BaseDetectionDataModule, "detection")
        self.segmentation = _source_datamodule(segmentation, BaseSegmentationDataModule, "segmentation")
        self.detection_fraction = detection_fraction
        self._set_classes(self.detection.class_names, self.segmentation.class_names)

    def _build_dataset(self, split: str) -> tuple[JointDataset, ProblemReport]:
        det_dataset, det_report = self.detection._build_dataset(split)
        seg_dataset, seg_report = self.segmentation._build_dataset(split)
        report = ProblemReport(f"mixed joint {split} ({det_report.name}; {seg_report.name})")
        report.extend(det_report)
        report.extend(seg_report)
        detection = [boxes_only(r) for r in det_dataset.items]
        first_id = max((r.image_id for r in detection), default=-1) + 1
        segmentation = [mask_only(item, first_id + i) for i, item in enumerate(seg_dataset.items)]
        if split == "train":
            records = mixed_records(detection, segmentation, self.detection_fraction)
            log.info("%s: %d training samples per epoch, %.3f from detection", type(self).__name__, len(records),
                     sum(r.has_boxes for r in records) / max(len(records), 1))  # fmt: skip
        else:
            records = detection + segmentation
        # Training keeps crowd / difficult boxes when the detection source was told to.
        return self._joint_dataset(records, split, det_dataset.include_crowd, seg_dataset.mask_ignore_index), report
