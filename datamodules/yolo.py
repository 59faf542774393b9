"""YOLO-format detection datasets, as Ultralytics, Roboflow and CVAT export them::

    root/data.yaml               names, train / val / test image folders, optional path
    root/images/<split>/*.jpg    (or wherever data.yaml points)
    root/labels/<split>/*.txt    one line per object: class cx cy w h, normalised to [0, 1]

``data.yaml``: ``names:`` is a list or an ``{index: name}`` dict (indices 0..n-1); ``nc:``, when
given, must match. ``train:`` / ``val:`` / ``test:`` each name an image folder (read with its
subfolders), a ``.txt`` list of image paths (relative to the list's folder), or a list of these,
relative to ``path:`` (itself relative to the yaml's folder; default: the yaml's folder). As in
Ultralytics, a relative entry starting with ``../`` that does not exist is tried without it
(Roboflow writes ``train: ../train/images``); a ``path:`` that does not exist (the exporting
machine's) falls back to the yaml's folder, with a warning. Without ``val:``, a deterministic
``val_fraction`` of the train images (``datamodules.splits``) is val; ``test`` defaults to val.

An image's label file is its path with the last ``images`` folder replaced by ``labels`` and the
ending by ``.txt`` (Ultralytics' rule); without an ``images`` folder in the path, the ``.txt``
beside the image. An image without a label file (or with an empty one) is a background image,
kept; a split in which no image has a label file is an error (the labels are elsewhere).

Bad input, counted with the file and line: a line that is not ``class cx cy w h``
(``bad_label_line``; lines of 7 or more numbers, an odd count, are polygons ``class x1 y1 x2 y2
...`` and give their bounding box, as in Ultralytics), a class index outside ``names``
(``unknown_category``), a box past the image by more than a pixel (clipped,
``box_outside_image``), a box without area (dropped, ``zero_area_box``), a label file without its
image (``missing_image``), an unreadable label file (the image is skipped,
``unreadable_annotation``).

Boxes become continuous xyxy float32 in original pixels, which needs the image's size: it is read
from the image header with the EXIF orientation applied, since labels refer to the upright image
(Ultralytics and CVAT apply the orientation, Roboflow exports upright images) and
``load_image`` applies it too, so boxes and pixels agree.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .base import BaseDetectionDataModule
from .datasets import ROUNDING_PX, DetectionDataset, DetectionRecord, clip_box
from .image_io import image_size, list_images, read_list
from .problems import DataProblem, ProblemReport
from .splits import check_val_fraction, holdout_split

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Files in label folders that are no label files (LabelImg and CVAT write the class list there).
NOT_LABELS = ("classes.txt",)


@dataclass
class YoloData:
    """What a ``data.yaml`` says: the class names, the folder the split entries are relative to,
    and each split's image sources (folders or ``.txt`` lists; empty when not given)."""

    yaml_file: Path
    names: list[str]
    base: Path
    sources: dict[str, list[Path]]


def read_data_yaml(path: str | Path) -> YoloData:
    """Parse a YOLO ``data.yaml`` (see the module docstring); a clear error naming the file when
    it is missing or unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO data file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable YAML file ({error})") from error
    if not isinstance(data, dict) or "names" not in data:
        raise ValueError(f"{path}: no 'names:' entry; a YOLO data.yaml lists the class names there")
    names = _names(data["names"], path)
    if "nc" in data and str(data["nc"]) != str(len(names)):
        raise ValueError(f"{path}: nc is {data['nc']} but names lists {len(names)} classes")
    base = path.parent
    if data.get("path"):
        given = path.parent / str(data["path"])  # an absolute path stays as it is
        if given.is_dir():
            base = given
        else:
            log.warning("%s: path %s does not exist; split folders are taken relative to %s", path, given, base)
    sources = {split: _sources(data.get(split), base) for split in SPLITS}
    if not sources["train"]:
        raise ValueError(f"{path}: no 'train:' entry naming the training images")
    return YoloData(path, names, base, sources)


def _names(names: Any, path: Path) -> list[str]:
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: names keys must be class indices ({error})") from error
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"{path}: names indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
        return [by_index[i] for i in range(len(by_index))]
    raise ValueError(f"{path}: names must be a non-empty list or {{index: name}} mapping, got {names!r}")


def _sources(entry: Any, base: Path) -> list[Path]:
    if not entry:
        return []
    sources = []
    for value in entry if isinstance(entry, list) else [entry]:
        source = base / str(value)
        if not source.exists() and str(value).startswith("../") and (base / str(value)[3:]).exists():
            source = base / str(value)[3:]
        sources.append(source)
    return sources


def label_path(image: Path) -> Path:
    """The label file of ``image``: the last ``images`` folder of its path replaced by
    ``labels``, the ending by ``.txt``; the ``.txt`` beside it without an ``images`` folder."""
    folders = image.parts[:-1]
    if "images" not in folders:
        return image.with_suffix(".txt")
    i = len(folders) - 1 - folders[::-1].index("images")
    return Path(*folders[:i], "labels", *image.parts[i + 1 :]).with_suffix(".txt")


def parse_yolo_labels(path: Path, num_classes: int, report: ProblemReport) -> list[tuple[int, int, list[float]]]:
    """``(line number, class index, box)`` per usable line of a label file; ``box`` is xyxy
    normalised to the image (a polygon's bounding box). Bad lines are counted in ``report``
    (``bad_label_line``, ``unknown_category``); an unreadable file raises ``DataProblem``."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataProblem("unreadable_annotation", path, f"cannot read the label file ({error})") from error
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            report.add(DataProblem("bad_label_line", path, f"line {number} is not all numbers: {line.strip()!r}"))
            continue
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            report.add(DataProblem("bad_label_line", path,
                                   f"line {number} has {len(values)} numbers, expected 5 (class cx cy w h): {line.strip()!r}"))  # fmt: skip
            continue
        if not all(math.isfinite(v) for v in values) or values[0] != int(values[0]):
            report.add(DataProblem("bad_label_line", path, f"line {number} has a non-integer class or a non-finite value: {line.strip()!r}"))
            continue
        label = int(values[0])
        if not 0 <= label < num_classes:
            report.add(DataProblem("unknown_category", path, f"line {number}: class index {label} is not in names (0..{num_classes - 1})"))
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        else:
            xs, ys = values[1::2], values[2::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        rows.append((number, label, box))
    return rows


def pixel_boxes(
    rows: list[tuple[int, int, list[float]]], size: tuple[int, int], path: Path, report: ProblemReport
) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes K x 4 float32 xyxy pixels, labels int64 K)`` of ``parse_yolo_labels``'s rows on an
    image of ``size`` (h, w): boxes past the image are clipped (``box_outside_image`` beyond a
    pixel), boxes without area dropped (``zero_area_box``)."""
    height, width = size
    boxes, labels = [], []
    for number, label, (x0, y0, x1, y1) in rows:
        box, moved = clip_box([x0 * width, y0 * height, x1 * width, y1 * height], width, height)
        if box[2] <= box[0] or box[3] <= box[1]:
            report.add(DataProblem("zero_area_box", path, f"line {number}: box has no area inside the {width}x{height} image"))
            continue
        if moved > ROUNDING_PX:
            report.add(DataProblem("box_outside_image", path, f"line {number}: box reaches past the image [0, 1], clipped"))
        boxes.append(box)
        labels.append(label)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


class YoloDetectionDataModule(BaseDetectionDataModule):
    """YOLO-format detection (see the module docstring).

    ``num_classes`` and ``class_names`` (data.yaml's ``names``) are known right after ``__init__``.

    Args:
        root: the dataset folder.
        data_yaml: the data file, relative to ``root`` (or absolute).
        val_fraction: share of the train images held out as val (and test) when data.yaml has
            no ``val:``; unused otherwise.
        Others (image size, augmentation, empty images, loaders): ``BaseDetectionDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        data_yaml: str = "data.yaml",
        val_fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data = read_data_yaml(Path(root) / data_yaml)
        self.class_names = list(self.data.names)
        self.num_classes = len(self.class_names)
        self.val_fraction = check_val_fraction(val_fraction)
        if not self.data.sources["val"]:
            log.info("%s has no val: entry: val and test are %g of the train images", self.data.yaml_file, val_fraction)

    def images(self, source: str, report: ProblemReport | None) -> list[Path]:
        """The sorted images of data.yaml's ``source`` split; label files without an image in
        its folders are counted in ``report`` (when given)."""
        where = f"{self.data.yaml_file} {source}"
        images: set[Path] = set()
        for folder in self.data.sources[source]:
            if folder.is_dir():
                found = list_images(folder, recursive=True)
                images.update(found)
                if report is not None:
                    self._report_orphan_labels(folder, found, report)
            elif folder.suffix == ".txt" and folder.is_file():
                images.update(Path(line) if Path(line).is_absolute() else folder.parent / line for line in read_list(folder))
            else:
                raise FileNotFoundError(f"{where}: {folder} is neither an image folder nor a .txt list of images")
        if not images:
            raise FileNotFoundError(f"{where}: no images in {', '.join(map(str, self.data.sources[source]))}")
        listed = sorted(images)
        if not any(label_path(p).is_file() for p in listed):
            raise FileNotFoundError(
                f"{where}: none of the {len(listed)} images has a label file (looked for {label_path(listed[0])}, ...)"
            )
        return listed

    @staticmethod
    def _report_orphan_labels(folder: Path, images: list[Path], report: ProblemReport) -> None:
        labels_folder = label_path(folder / "image.jpg").parent
        expected = {label_path(p) for p in images}
        for label_file in sorted(labels_folder.rglob("*.txt")) if labels_folder.is_dir() else ():
            if label_file not in expected and label_file.name not in NOT_LABELS:
                report.add(DataProblem("missing_image", label_file, f"label file without an image in {folder}"))

    def records(self, split: str, report: ProblemReport) -> list[DetectionRecord]:
        """Parsed records of ``split`` (``image_id``: the index in its data.yaml split's listing)."""
        source = "val" if split == "test" and not self.data.sources["test"] else split
        holdout = source != "test" and not self.data.sources["val"]
        listed = "train" if holdout else source
        listing = self.images(listed, report if split == listed else None)  # orphans: once, with their own split
        pairs = list(enumerate(listing))
        if holdout:
            keys = [p.relative_to(self.data.base).as_posix() if p.is_relative_to(self.data.base) else p.as_posix() for p in listing]
            pairs = [pair for pair, val in zip(pairs, holdout_split(keys, self.val_fraction)) if val == (source == "val")]
        records, background = [], 0
        for image_id, path in pairs:
            labels_file = label_path(path)
            boxes, labels, size = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None
            try:
                if not path.is_file():
                    raise DataProblem("missing_image", path, f"listed in {self.data.yaml_file} {source} but not on disk")
                rows = parse_yolo_labels(labels_file, self.num_classes, report) if labels_file.is_file() else []
                if rows:
                    size = image_size(path)
                    boxes, labels = pixel_boxes(rows, size, labels_file, report)
            except DataProblem as problem:
                report.add(problem)
                continue
            background += not len(labels)
            records.append(DetectionRecord(path, image_id, boxes, labels, np.zeros(len(labels), np.uint8), size))
        log.info("YOLO %s: %d images, %d of them without objects (background)", split, len(records), background)
        return records

    def _build_dataset(self, split: str) -> tuple[DetectionDataset, ProblemReport]:
        report = ProblemReport(f"YOLO {split} ({self.data.yaml_file})")
        return self._detection_dataset(self.records(split, report), split), report
