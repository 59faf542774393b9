"""Scan a dataset before training: ``python -m datamodules.check <config.yaml | path>``.

Reports, per problem kind, how many and which files: missing or unreadable images, unknown
category ids / class names, bad YOLO label lines, boxes outside the image or of zero area,
annotations without their image, masks missing, of the wrong size or holding values outside the
classes and 255, images whose size differs from their annotation; and, as notes, the images that
are converted when read (grayscale, palette, RGBA, 16-bit, CMYK) or rotated by their EXIF
orientation.

The argument is either a LightningCLI YAML config (its ``data`` section, ``class_path`` +
``init_args``, builds the datamodule) or a dataset folder / file, recognised by layout (every
layout found in a folder is checked):

- a COCO json (a ``.json`` with ``images`` and ``categories``):
  ``<dir>/annotations/instances_<split>.json``, else any ``<dir>/*.json`` or ``<dir>/*/*.json``
  (Roboflow's ``train/_annotations.coco.json``), or the file itself. Its images are in
  ``--images``, else in the first of these folders that holds its first image: the split's
  folder beside the json's folder (``instances_val2017.json`` -> ``../val2017``), the json's
  folder, ``images/`` beside the json or beside its folder;
- a YOLO ``data.yaml`` (any ``<dir>/*.yaml`` with ``names:``, or the file itself): its train /
  val / test splits;
- ``<dir>/VOCdevkit/VOC20XX``, ``<dir>/VOC20XX`` or ``<dir>`` = ``VOC20XX``: VOC detection
  (``ImageSets/Main``) and segmentation (``ImageSets/Segmentation``) lists, whichever exist;
  without ``Main`` lists, every image of ``JPEGImages`` + ``Annotations``
  (``VOCFolderDetectionDataModule``);
- a folder of images with VOC ``.xml`` files beside them, or in ``Annotations/`` beside an image
  folder (``VOCFolderDetectionDataModule``).

VOC class names come from ``--classes`` or ``<dir>/classes.txt``; else the 20 VOC classes for
the devkit lists and the names found in the XMLs for folders without lists.

Exit status: 0 when clean, 1 when any problem was found, 2 when nothing could be checked (no
layout recognised, or one that cannot be read), with a message saying what was looked for and
what was found.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import yaml

from .base import BaseDataModule
from .coco import CocoDetectionDataModule
from .image_io import read_list
from .problems import ProblemReport
from .voc import VOCDetectionDataModule, VOCSegmentationDataModule
from .voc_folder import ANNOTATION_FOLDER, IMAGE_FOLDERS, VOCFolderDetectionDataModule
from .yolo import YoloDetectionDataModule

SPLIT_CANDIDATES = (("trainval", "test"), ("train", "val"))
YAML_SUFFIXES = (".yaml", ".yml")


class NothingToCheck(Exception):
    """No dataset the check can read at a path; the message says what was looked for and what was found."""


LOOKED_FOR = (
    "a COCO json (images + categories): annotations/instances_<split>.json, *.json or */*.json",
    "a YOLO data.yaml (names:, train:, val:)",
    "VOCdevkit/VOC20XX or VOC20XX (JPEGImages + Annotations, ImageSets lists optional)",
    "images with VOC .xml files beside them or in Annotations/",
)


def datamodule_from_config(path: Path) -> BaseDataModule:
    """The datamodule of a LightningCLI config's ``data`` section."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not a readable YAML file ({error})") from error
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{path}: no 'data' section with a class_path")
    module_name, _, class_name = data["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{path}: data class_path {data['class_path']!r} cannot be imported ({error})") from error
    try:
        return cls(**{**(data.get("init_args") or {}), "num_workers": 0})
    except TypeError as error:
        raise ValueError(f"{path}: data init_args do not fit {data['class_path']} ({error})") from error


def checks_for_path(
    path: Path, images: Path | None = None, class_names: list[str] | None = None
) -> list[tuple[BaseDataModule, tuple[str, ...]]]:
    """``(datamodule, splits)`` pairs covering the datasets found at ``path`` (see the module
    docstring); ``NothingToCheck`` when there is none.

    ``class_names`` (VOC layouts) defaults to ``<path>/classes.txt`` when present (the shapes
    dataset writes one).
    """
    if not path.exists():
        raise NothingToCheck(f"{path} does not exist")
    if class_names is None and (path / "classes.txt").is_file():
        class_names = read_list(path / "classes.txt")
    if path.is_file():
        found = _file_checks(path, images)
        if not found:
            raise NothingToCheck(
                f"{path}: neither a COCO json (with images and categories), a YOLO data.yaml (with names:) "
                "nor a LightningCLI config (with a data: section)"
            )
        return found
    found = [check for file in _coco_jsons(path) for check in _file_checks(file, images)]
    yamls = sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES)
    found += [check for file in yamls for check in _file_checks(file, images)]
    found += _voc_checks(path, class_names)
    if not found:
        raise NothingToCheck(f"{path}: no dataset recognised.\nLooked for:\n" + "".join(f"  - {item}\n" for item in LOOKED_FOR)
                             + f"Found: {_describe(path)}")  # fmt: skip
    return found


def _file_checks(path: Path, images: Path | None) -> list[tuple[BaseDataModule, tuple[str, ...]]]:
    """The check of a COCO json or YOLO data.yaml file; none for other files."""
    if path.suffix == ".json":
        data = _coco_json(path)
        if data is None:
            return []
        image_dir = (images or coco_image_folder(path, data)).resolve()
        dm = CocoDetectionDataModule(
            str(image_dir.parent), val_images=str(image_dir), val_annotations=str(path.resolve()), num_workers=0
        )
        return [(dm, ("val",))]
    if path.suffix in YAML_SUFFIXES and _yaml_keys(path) >= {"names"}:
        dm = YoloDetectionDataModule(str(path.parent), data_yaml=path.name, num_workers=0)
        return [(dm, ("train", "val", "test") if dm.data.sources["test"] else ("train", "val"))]
    return []


def _coco_json(path: Path) -> dict | None:
    """The content of ``path`` when it is a COCO annotation json, else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    is_coco = isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("categories"), list)
    return data if is_coco else None


def _yaml_keys(path: Path) -> set[str]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def _coco_jsons(folder: Path) -> list[Path]:
    """The annotation json candidates of ``folder``: ``annotations/instances_*.json`` when there
    are any, else every ``*.json`` and ``*/*.json``."""
    official = sorted((folder / "annotations").glob("instances_*.json"))
    return official or sorted([*folder.glob("*.json"), *folder.glob("*/*.json")])


def coco_image_folder(annotation_file: Path, data: dict) -> Path:
    """Where the images of a COCO json are (see the module docstring)."""
    split = annotation_file.stem.removeprefix("instances_")
    here = annotation_file.parent
    candidates = [here.parent / split, here, here / "images", here.parent / "images"]
    first = data["images"][0].get("file_name") if data["images"] else None
    default = candidates[0] if annotation_file.stem.startswith("instances_") else here
    return next((c for c in candidates if first and (c / first).is_file()), default)


def _voc_checks(path: Path, class_names: list[str] | None) -> list[tuple[BaseDataModule, tuple[str, ...]]]:
    found: list[tuple[BaseDataModule, tuple[str, ...]]] = []
    years = [path] if path.name.startswith("VOC20") else sorted([*(path / "VOCdevkit").glob("VOC20*"), *path.glob("VOC20*")])
    for year in (y for y in years if y.is_dir()):
        devkit_parent, devkit = year.parent.parent, year.parent.name
        main = _existing_lists(year / "ImageSets" / "Main")
        if main:
            sets = [f"{year.name}/{name}" for name in main]
            dm = VOCDetectionDataModule(
                str(devkit_parent), devkit=devkit, train_sets=sets, val_sets=sets, class_names=class_names, num_workers=0
            )
            found.append((dm, ("val",)))
        elif any((year / "Annotations").glob("*.xml")):
            found.append((VOCFolderDetectionDataModule(str(year), class_names=class_names, num_workers=0), ("train", "val")))
        segmentation = _existing_lists(year / "ImageSets" / "Segmentation")
        for name in segmentation:
            dm = VOCSegmentationDataModule(
                str(year),
                image_dir="JPEGImages",
                mask_dir="SegmentationClass",
                split_dir="ImageSets/Segmentation",
                val_split=name,
                class_names=class_names,
                num_workers=0,
            )
            found.append((dm, ("val",)))
    xml_folders = (path / ANNOTATION_FOLDER, *(path / f for f in IMAGE_FOLDERS), path)
    if not years and any(any(folder.glob("*.xml")) for folder in xml_folders if folder.is_dir()):
        found.append((VOCFolderDetectionDataModule(str(path), class_names=class_names, num_workers=0), ("train", "val")))
    return found


def _describe(folder: Path) -> str:
    """What ``folder`` holds, in a line: its subfolders and how many files of each ending."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        return "an empty folder"
    folders = sorted(p.name for p in entries if p.is_dir())
    endings = Counter(p.suffix.lower() or "(no ending)" for p in entries if p.is_file())
    parts = []
    if folders:
        parts.append(f"{len(folders)} folder(s): {', '.join(folders[:10])}" + (" ..." if len(folders) > 10 else ""))
    if endings:
        parts.append(f"{sum(endings.values())} file(s): " + ", ".join(f"{n} {e}" for e, n in sorted(endings.items())))
    hint = ""
    if "labels" in folders or endings.get(".txt"):
        hint = " (YOLO label .txt files need a data.yaml with names:, train: and val: to be read)"
    return "; ".join(parts) + hint


def _existing_lists(folder: Path) -> list[str]:
    for names in SPLIT_CANDIDATES:
        present = [n for n in names if (folder / f"{n}.txt").is_file()]
        if present:
            return present
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scan a dataset for problems before training.")
    parser.add_argument("target", type=Path, help="LightningCLI YAML config, dataset folder, COCO json or YOLO data.yaml")
    parser.add_argument("--images", type=Path, default=None, help="image folder of a COCO json")
    parser.add_argument("--classes", type=Path, default=None, help="class-name list (one per line) of a VOC layout")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="splits of a config to scan")
    parser.add_argument("--max-files", type=int, default=10, help="files listed per problem kind")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    try:
        if args.target.suffix in YAML_SUFFIXES and args.target.is_file() and "names" not in _yaml_keys(args.target):
            checks = [(datamodule_from_config(args.target), tuple(args.splits))]
        else:
            class_names = read_list(args.classes) if args.classes else None
            checks = checks_for_path(args.target, args.images, class_names)
        total = ProblemReport(str(args.target))
        for dm, splits in checks:
            print(f"checking {type(dm).__name__} ({'/'.join(splits)})")
            report = dm.check(splits)
            print(report.summary(args.max_files))
            total.extend(report)
    except NothingToCheck as error:
        print(f"nothing to check: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:  # a layout was recognised but cannot be read
        print(f"cannot check {args.target}: {error}", file=sys.stderr)
        return 2
    names = ", ".join(type(dm).__name__ for dm, _ in checks)
    print(f"total ({names}, {total.checked} samples decoded): {total.num_problems} problem(s); "
          + ", ".join(f"{k}={v}" for k, v in sorted(total.counts().items())))  # fmt: skip
    return 1 if total.num_problems else 0


if __name__ == "__main__":
    sys.exit(main())
