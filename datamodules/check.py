"""Scan a dataset before training: ``python -m datamodules.check <config.yaml | path>``.

Reports, per problem kind, how many and which files: missing or unreadable images, unknown
category ids / class names, boxes outside the image or of zero area, masks missing, of the
wrong size or holding values outside the classes and 255, images whose size differs from
their annotation; and, as notes, the images that are converted when read (grayscale,
palette, RGBA, 16-bit, CMYK) or rotated by their EXIF orientation.

The argument is either a LightningCLI YAML config (its ``data`` section, ``class_path`` +
``init_args``, builds the datamodule) or a dataset folder / COCO json, recognised by layout:

- ``<dir>/annotations/instances_<split>.json`` with ``<dir>/<split>/``: COCO;
- a ``.json`` file: COCO, images in ``--images`` (default: the json's folder's sibling
  named after the split, ``instances_val2017.json`` -> ``../val2017``);
- ``<dir>/VOCdevkit/VOC20XX`` or ``<dir>`` = ``VOC20XX``: VOC detection (``ImageSets/Main``)
  and segmentation (``ImageSets/Segmentation``) lists, whichever exist.

Exit status 1 when any problem was found.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

import yaml

from .base import BaseDataModule
from .coco import CocoDetectionDataModule
from .image_io import read_list
from .problems import ProblemReport
from .voc import VOCDetectionDataModule, VOCSegmentationDataModule

SPLIT_CANDIDATES = (("trainval", "test"), ("train", "val"))


def datamodule_from_config(path: Path) -> BaseDataModule:
    """The datamodule of a LightningCLI config's ``data`` section."""
    config = yaml.safe_load(path.read_text()) or {}
    data = config.get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{path}: no 'data' section with a class_path")
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{**data.get("init_args", {}), "num_workers": 0})


def checks_for_path(
    path: Path, images: Path | None = None, class_names: list[str] | None = None
) -> list[tuple[BaseDataModule, tuple[str, ...]]]:
    """``(datamodule, splits)`` pairs covering the dataset found at ``path``.

    ``class_names`` (VOC layouts) defaults to ``<path>/classes.txt`` when present (the shapes
    dataset writes one), else the 20 VOC classes.
    """
    if class_names is None and (path / "classes.txt").is_file():
        class_names = read_list(path / "classes.txt")
    if path.suffix == ".json":
        split = path.stem.removeprefix("instances_")
        image_dir = images or path.parent.parent / split
        dm = CocoDetectionDataModule(
            str(image_dir.parent), val_images=str(image_dir), val_annotations=str(path), num_workers=0
        )
        return [(dm, ("val",))]
    found: list[tuple[BaseDataModule, tuple[str, ...]]] = []
    for annotation in sorted((path / "annotations").glob("instances_*.json")):
        found += checks_for_path(annotation, images, class_names)
    if found:
        return found
    years = [path] if path.name.startswith("VOC20") else sorted((path / "VOCdevkit").glob("VOC20*"))
    for year in years:
        devkit_parent, devkit = year.parent.parent, year.parent.name
        main = _existing_lists(year / "ImageSets" / "Main")
        if main:
            sets = [f"{year.name}/{name}" for name in main]
            dm = VOCDetectionDataModule(
                str(devkit_parent), devkit=devkit, train_sets=sets, val_sets=sets, class_names=class_names, num_workers=0
            )
            found.append((dm, ("val",)))
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
    if not found:
        raise ValueError(f"{path}: no COCO annotations/instances_*.json and no VOCdevkit/VOC20XX layout found")
    return found


def _existing_lists(folder: Path) -> list[str]:
    for names in SPLIT_CANDIDATES:
        present = [n for n in names if (folder / f"{n}.txt").is_file()]
        if present:
            return present
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scan a dataset for problems before training.")
    parser.add_argument("target", type=Path, help="LightningCLI YAML config, dataset folder or COCO json")
    parser.add_argument("--images", type=Path, default=None, help="image folder of a COCO json")
    parser.add_argument("--classes", type=Path, default=None, help="class-name list (one per line) of a VOC layout")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="splits of a config to scan")
    parser.add_argument("--max-files", type=int, default=10, help="files listed per problem kind")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.target.suffix in (".yaml", ".yml"):
        checks = [(datamodule_from_config(args.target), tuple(args.splits))]
    else:
        class_names = read_list(args.classes) if args.classes else None
        checks = checks_for_path(args.target, args.images, class_names)
    total = ProblemReport(str(args.target))
    for dm, splits in checks:
        report = dm.check(splits)
        print(report.summary(args.max_files))
        total.extend(report)
    print(f"total: {total.num_problems} problem(s); " + ", ".join(f"{k}={v}" for k, v in sorted(total.counts().items())))
    return 1 if total.num_problems else 0


if __name__ == "__main__":
    sys.exit(main())
