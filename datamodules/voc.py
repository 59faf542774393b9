"""PASCAL VOC in its official layout: detection (07+12) and segmentation (incl. trainaug).

Detection reads ``VOCdevkit/VOC20XX/{JPEGImages,Annotations,ImageSets/Main}``; a set is
named ``"VOC2007/trainval"`` (folder under the devkit / split list name). Boxes are VOC's
1-based inclusive pixel indices, turned into continuous xyxy (``xmin - 1, ymin - 1, xmax,
ymax``). ``difficult`` objects are kept with ``iscrowd=1``: out of the training targets by
default, ignored by the evaluation as the VOC protocol does.

Segmentation reads ``SegmentationClass/*.png`` palette images as class indices (255 = void)
with split lists under ``ImageSets/Segmentation``. The same code reads any folder pair of
images + index PNG masks (set ``image_dir``, ``mask_dir``, ``split_dir``, ``class_names``).
The paper's "trainaug" set comes either from the common ``SegmentationClassAug`` +
``train_aug.txt`` layout (list lines ``/JPEGImages/x.jpg /SegmentationClassAug/x.png``) or,
with ``sbd_root`` and ``train_split="trainaug"``, straight from the SBD release.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable
from xml.etree import ElementTree as ET

import numpy as np

from core.constants import IGNORE_INDEX

from .base import BaseDetectionDataModule, BaseSegmentationDataModule
from .datasets import DetectionDataset, DetectionRecord, SegmentationDataset, SegmentationItem, clip_box
from .image_io import read_list
from .problems import DataProblem, ProblemReport
from .sbd import sbd_dataset_dir, trainaug_stems

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
TRAINAUG = "trainaug"
# Names annotation tools give a background placeholder class (compared in lower case).
BACKGROUND_NAMES = ("background", "_background_", "__background__")

log = logging.getLogger(__name__)


def is_background_name(name: str) -> bool:
    """Whether ``name`` is one of ``BACKGROUND_NAMES``, in any case."""
    return name.strip().lower() in BACKGROUND_NAMES


def parse_voc_xml(
    path: str | Path, class_names: list[str] | tuple[str, ...], report: ProblemReport
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int] | None]:
    """``(boxes K x 4 xyxy float32, labels int64, difficult uint8, (h, w) or None)`` of a VOC XML.

    Unknown class names (``unknown_category``) and boxes without area (``zero_area_box``) are
    dropped, boxes past the image are clipped (``box_outside_image``), all counted in ``report``.
    Raises ``DataProblem`` for a missing or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataProblem("missing_annotation", path, "annotation XML does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DataProblem("unreadable_annotation", path, f"malformed XML ({error})") from error
    size = None
    width, height = (int(float(root.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
    if width > 0 and height > 0:
        size = (height, width)
    label_of = {name: i for i, name in enumerate(class_names)}
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in label_of:
            report.add(DataProblem("unknown_category", path, f"object class {name!r} is not in class_names"))
            continue
        try:
            xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            report.add(DataProblem("unreadable_annotation", path, f"object {name!r} has no numeric bndbox"))
            continue
        box = [xmin - 1, ymin - 1, xmax, ymax]
        if size is not None:
            clipped, moved = clip_box(box, width, height)
            if moved > 0:
                report.add(DataProblem("box_outside_image", path, f"object {name!r} box {box} clipped to {width}x{height}"))
            box = clipped
        if box[2] <= box[0] or box[3] <= box[1]:
            report.add(DataProblem("zero_area_box", path, f"object {name!r} box {box} has no area"))
            continue
        boxes.append(box)
        labels.append(label_of[name])
        difficult.append(int(float(obj.findtext("difficult") or 0)))
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        np.asarray(difficult, np.uint8),
        size,
    )


def voc_class_names(xml_files: Iterable[Path]) -> list[str]:
    """The sorted object class names found in ``xml_files`` (malformed files are skipped here;
    ``parse_voc_xml`` reports them)."""
    names: set[str] = set()
    for path in xml_files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            continue
        names.update((obj.findtext("name") or "").strip() for obj in root.iter("object"))
    return sorted(names - {""})


class VOCDetectionDataModule(BaseDetectionDataModule):
    """PASCAL VOC detection: 07+12 trainval for training, 07 test for evaluation by default.

    Args:
        root: the folder holding ``devkit`` (``VOCdevkit``).
        train_sets / val_sets / test_sets: ``"VOC20XX/<ImageSets/Main list>"`` names.
        class_names: object classes (default: the 20 VOC classes).
        keep_difficult: keep ``difficult`` objects in the TRAINING targets too (as crowd).
        Others (image size, augmentation, empty images, loaders): ``BaseDetectionDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        devkit: str = "VOCdevkit",
        train_sets: list[str] | None = None,
        val_sets: list[str] | None = None,
        test_sets: list[str] | None = None,
        class_names: list[str] | None = None,
        keep_difficult: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.devkit = Path(root) / devkit
        val_sets = val_sets or ["VOC2007/test"]
        self.sets = {
            "train": train_sets or ["VOC2007/trainval", "VOC2012/trainval"],
            "val": val_sets,
            "test": test_sets or val_sets,
        }
        self.class_names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        self.num_classes = len(self.class_names)
        self.keep_difficult = keep_difficult

    def records(self, split: str, report: ProblemReport) -> list[DetectionRecord]:
        """Parsed records of every set of ``split``, with unique ``image_id``s across sets."""
        records: list[DetectionRecord] = []
        for set_name in self.sets[split]:
            year, _, list_name = set_name.rpartition("/")
            folder = self.devkit / year
            try:
                stems = read_list(folder / "ImageSets" / "Main" / f"{list_name}.txt")
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"{error}; for a VOC folder without split lists use "
                    f"datamodules.VOCFolderDetectionDataModule (root {folder}): it splits all images by val_fraction"
                ) from error
            for stem in stems:
                stem = stem.split()[0]  # per-class lists carry a second column
                image_path = folder / "JPEGImages" / f"{stem}.jpg"
                try:
                    boxes, labels, difficult, size = parse_voc_xml(folder / "Annotations" / f"{stem}.xml", self.class_names, report)
                    if not image_path.is_file():
                        raise DataProblem("missing_image", image_path, f"listed in {set_name} but not on disk")
                except DataProblem as problem:
                    report.add(problem)
                    continue
                records.append(DetectionRecord(image_path, len(records), boxes, labels, difficult, size))
        return records

    def _build_dataset(self, split: str) -> tuple[DetectionDataset, ProblemReport]:
        report = ProblemReport(f"VOC detection {split} ({', '.join(self.sets[split])})")
        return self._detection_dataset(self.records(split, report), split, keep_crowd=self.keep_difficult), report


class VOCSegmentationDataModule(BaseSegmentationDataModule):
    """PASCAL VOC 2012 segmentation (and any images + index-PNG-masks folder pair).

    Args:
        root: base folder; the paths below are relative to it (or absolute).
        image_dir / mask_dir / split_dir: official defaults under ``VOCdevkit/VOC2012``.
        train_split / val_split / test_split: list names in ``split_dir`` (``<name>.txt``);
            ``test_split`` defaults to ``val_split``. ``"trainaug"`` with ``sbd_root`` set
            builds the 10,582-image list from SBD when no ``trainaug.txt`` exists.
        image_suffix / mask_suffix: file endings of images and masks.
        class_names: object classes (default: the 20 VOC classes); with ``background_name``
            set, index 0 is background and ``num_classes = len(class_names) + 1``, unless the
            list starts with a background entry itself (``background``, ``_background_``,
            ``__background__``, any case, as labelme exports): it is then index 0 (logged).
        mask_ignore_index: the value marking "ignore" in the mask files (VOC: 255); batches
            always carry 255 there.
        sbd_root: the SBD release (``benchmark_RELEASE``), for ``trainaug``.
        Others (augmentation, padding, loaders): ``BaseSegmentationDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        image_dir: str = "VOCdevkit/VOC2012/JPEGImages",
        mask_dir: str = "VOCdevkit/VOC2012/SegmentationClass",
        split_dir: str = "VOCdevkit/VOC2012/ImageSets/Segmentation",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        image_suffix: str = ".jpg",
        mask_suffix: str = ".png",
        class_names: list[str] | None = None,
        background_name: str | None = "background",
        mask_ignore_index: int = IGNORE_INDEX,
        sbd_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        root_path = Path(root)
        self.image_dir = root_path / image_dir
        self.mask_dir = root_path / mask_dir
        self.split_dir = root_path / split_dir
        self.split_names = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.image_suffix = image_suffix
        self.mask_suffix = mask_suffix
        names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        if background_name is not None and names and is_background_name(names[0]):
            log.info("class_names starts with %r: it is the background class 0 (no %r added)", names[0], background_name)
        elif background_name is not None:
            names = [background_name, *names]
        self.class_names = names
        self.num_classes = len(self.class_names)
        if 0 <= mask_ignore_index < self.num_classes:
            raise ValueError(f"mask_ignore_index {mask_ignore_index} is one of the {self.num_classes} class indices")
        self.mask_ignore_index = mask_ignore_index
        self.sbd_root = sbd_root

    def items(self, split: str) -> list[SegmentationItem]:
        """The (image, mask source) pairs of ``split``, from its list (or SBD for trainaug)."""
        name = self.split_names[split]
        list_file = self.split_dir / f"{name}.txt"
        if name == TRAINAUG and not list_file.is_file() and self.sbd_root is not None:
            return self._sbd_trainaug_items()
        items = []
        for line in read_list(list_file):
            parts = line.split()
            if len(parts) >= 2:  # "/JPEGImages/x.jpg /SegmentationClassAug/x.png": relative to the VOC folder
                base = self.image_dir.parent
                items.append(SegmentationItem(base / parts[0].lstrip("/"), base / parts[1].lstrip("/")))
            else:
                items.append(
                    SegmentationItem(self.image_dir / f"{parts[0]}{self.image_suffix}", self.mask_dir / f"{parts[0]}{self.mask_suffix}")
                )
        return items

    def _sbd_trainaug_items(self) -> list[SegmentationItem]:
        sbd = sbd_dataset_dir(self.sbd_root)
        voc_train = read_list(self.split_dir / "train.txt")
        voc_val = read_list(self.split_dir / f"{self.split_names['val']}.txt")
        items = []
        for stem in trainaug_stems(voc_train, voc_val, sbd):
            voc_mask = self.mask_dir / f"{stem}{self.mask_suffix}"
            image = self.image_dir / f"{stem}{self.image_suffix}"
            if not image.is_file():
                image = sbd / "img" / f"{stem}.jpg"
            items.append(SegmentationItem(image, voc_mask if voc_mask.is_file() else sbd / "cls" / f"{stem}.mat"))
        return items

    def _build_dataset(self, split: str) -> tuple[SegmentationDataset, ProblemReport]:
        report = ProblemReport(f"segmentation {split} ({self.split_dir / self.split_names[split]}.txt)")
        items = []
        for item in self.items(split):
            if not item.image_path.is_file():
                report.add(DataProblem("missing_image", item.image_path, "listed in the split but not on disk"))
            elif not Path(item.mask).is_file():
                report.add(DataProblem("missing_mask", item.mask, f"mask of {item.image_path.name} does not exist"))
            else:
                items.append(item)
        return self._segmentation_dataset(items, split, self.mask_ignore_index), report
