"""PASCAL VOC XML annotations outside the devkit layout, split without split lists.

Reads what annotation tools (LabelImg, CVAT, Label Studio, ...) export as "Pascal VOC": a
folder of images with one VOC XML per image of the same stem, either beside the images
(``photo.jpg`` + ``photo.xml``) or in an ``Annotations/`` folder next to the image folder
(``JPEGImages/photo.jpg`` + ``Annotations/photo.xml``, e.g. a ``VOC20XX`` folder without
``ImageSets/Main``). Every image is used: a deterministic ``val_fraction`` of them
(``datamodules.splits``) is the val (and test) split, the rest is train.

An image without an XML is a background image (no objects), kept; an XML without its image is
counted as ``missing_image``. Boxes, difficult objects and bad boxes as in ``parse_voc_xml``:
continuous xyxy float32 in original pixels, ``difficult`` as crowd.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .base import BaseDetectionDataModule
from .datasets import DetectionDataset, DetectionRecord
from .image_io import IMAGE_SUFFIXES, list_images
from .problems import DataProblem, ProblemReport
from .splits import check_val_fraction, holdout_split
from .voc import parse_voc_xml, voc_class_names

log = logging.getLogger(__name__)

# Image folders looked for under ``root`` when ``images`` is not given, in this order.
IMAGE_FOLDERS = ("JPEGImages", "images")
ANNOTATION_FOLDER = "Annotations"


class VOCFolderDetectionDataModule(BaseDetectionDataModule):
    """Detection from a folder of images and VOC XMLs (see the module docstring).

    ``num_classes`` and ``class_names`` are known right after ``__init__``.

    Args:
        root: the dataset folder; ``images`` and ``annotations`` are relative to it (or absolute).
        images: the image folder (its subfolders are not read). Default: ``JPEGImages`` or
            ``images`` under ``root`` when one exists, else ``root`` itself.
        annotations: the XML folder. Default: ``Annotations`` under ``root`` when it exists,
            else the image folder (XMLs beside the images).
        class_names: object classes, in label order. Default: the sorted names found in the
            XMLs (logged); give the list to fix the order or leave classes out (their
            objects are then counted as ``unknown_category``).
        val_fraction: share of the images held out as val (and test), in (0, 1).
        keep_difficult: as ``VOCDetectionDataModule``'s (``keep_empty_images``: ``BaseDetectionDataModule``'s).
        Others (image size, augmentation, empty images, loaders): ``BaseDetectionDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        images: str | None = None,
        annotations: str | None = None,
        class_names: list[str] | None = None,
        val_fraction: float = 0.1,
        keep_difficult: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        root_path = Path(root)
        if images is not None:
            self.image_dir = root_path / images
        else:
            self.image_dir = next((root_path / f for f in IMAGE_FOLDERS if (root_path / f).is_dir()), root_path)
        if annotations is not None:
            self.annotation_dir = root_path / annotations
        else:
            default = root_path / ANNOTATION_FOLDER
            self.annotation_dir = default if default.is_dir() else self.image_dir
        for what, folder in (("image", self.image_dir), ("annotation", self.annotation_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"VOC {what} folder {folder} does not exist")
        self.val_fraction = check_val_fraction(val_fraction)
        if class_names is None:
            class_names = voc_class_names(self.xml_files().values())
            if not class_names:
                raise ValueError(
                    f"no object names in VOC .xml files in {self.annotation_dir} (images in {self.image_dir}): "
                    "set class_names, or annotations to the XML folder"
                )
            log.info("%s: classes found in the XMLs, sorted: %s", self.annotation_dir, class_names)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.keep_difficult = keep_difficult

    def xml_files(self) -> dict[str, Path]:
        """``{stem: XML path}`` of the annotation folder."""
        return {p.stem: p for p in sorted(self.annotation_dir.glob("*.xml")) if not p.name.startswith(".")}

    def records(self, split: str, report: ProblemReport) -> list[DetectionRecord]:
        """Parsed records of ``split``'s images (``image_id``: the index among all images)."""
        images = list_images(self.image_dir)
        if not images:
            raise FileNotFoundError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {self.image_dir}")
        xmls = self.xml_files()
        if split == "train":  # reported once, with the training split
            stems = {p.stem for p in images}
            for stem, xml in xmls.items():
                if stem not in stems:
                    report.add(DataProblem("missing_image", xml, f"annotation without an image {stem}.* in {self.image_dir}"))
        is_val = holdout_split([p.relative_to(self.image_dir).as_posix() for p in images], self.val_fraction)
        records = []
        for image_id, (path, val) in enumerate(zip(images, is_val)):
            if val != (split != "train"):
                continue
            xml = xmls.get(path.stem)
            if xml is None:  # a background image
                boxes, labels, difficult, size = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint8), None
            else:
                try:
                    boxes, labels, difficult, size = parse_voc_xml(xml, self.class_names, report)
                except DataProblem as problem:
                    report.add(problem)
                    continue
            records.append(DetectionRecord(path, image_id, boxes, labels, difficult, size))
        return records

    def _build_dataset(self, split: str) -> tuple[DetectionDataset, ProblemReport]:
        report = ProblemReport(f"VOC folder {split} ({self.image_dir}, val_fraction {self.val_fraction})")
        return self._detection_dataset(self.records(split, report), split, keep_crowd=self.keep_difficult), report
