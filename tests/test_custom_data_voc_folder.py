"""VOC XML exports outside the devkit layout: XMLs beside the images, an Annotations/ folder
beside an image folder, a VOC20XX folder without ImageSets; the deterministic val_fraction split."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import VOCDetectionDataModule, VOCFolderDetectionDataModule
from datamodules.splits import holdout_split

W, H = 60, 40


def voc_xml(stem: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    """A VOC annotation XML as LabelImg / CVAT write it (1-based inclusive pixel boxes)."""
    body = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    return f"<annotation><filename>{stem}.jpg</filename><size><width>{W}</width><height>{H}</height><depth>3</depth></size>{body}</annotation>"


def write_voc_folder(images: Path, annotations: Path, n: int = 8) -> None:
    """``n`` images ``p0.jpg ...``; each but the last has an XML (``p0``: a cat and a dog, others one
    object); one XML has no image."""
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (W, H), (i * 20, 40, 40)).save(images / f"p{i}.jpg")
        objects = [("dog", (1, 1, 20, 30)), ("cat", (30, 5, 50, 25))] if i == 0 else [(("cat", "dog")[i % 2], (5, 5, 15, 15))]
        if i < n - 1:
            (annotations / f"p{i}.xml").write_text(voc_xml(f"p{i}", objects))
    (annotations / "lost.xml").write_text(voc_xml("lost", [("cat", (1, 1, 5, 5))]))


def _names(dm: VOCFolderDetectionDataModule, split: str) -> list[str]:
    return [r.image_path.name for r in dm._build_dataset(split)[0].items]


def test_xmls_beside_the_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_voc_folder(tmp_path, tmp_path)
    with caplog.at_level(logging.INFO, logger="datamodules.voc_folder"):
        dm = VOCFolderDetectionDataModule(str(tmp_path), val_fraction=0.25, num_workers=0)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2  # sorted names found in the XMLs
    assert "['cat', 'dog']" in caplog.text and str(tmp_path) in caplog.text
    train, report = dm._build_dataset("train")
    val, val_report = dm._build_dataset("val")
    names = [r.image_path.name for r in train.items + val.items]
    assert len(val) == 2 and sorted(names) == [f"p{i}.jpg" for i in range(8)] and len(set(names)) == 8
    assert sorted(r.image_id for r in train.items + val.items) == list(range(8))
    by_name = {r.image_path.name: r for r in train.items + val.items}
    np.testing.assert_allclose(by_name["p0.jpg"].boxes, [[0, 0, 20, 30], [29, 4, 50, 25]])
    assert by_name["p0.jpg"].labels.tolist() == [1, 0] and by_name["p0.jpg"].size == (H, W)
    assert by_name["p7.jpg"].boxes.shape == (0, 4) and by_name["p7.jpg"].size is None  # no XML: background
    # The XML without an image is reported once, with the training split.
    assert report.counts() == {"missing_image": 1} and "lost.xml" in report.problems["missing_image"][0]
    assert val_report.num_problems == 0
    assert _names(dm, "test") == [r.image_path.name for r in val.items]
    no_empty = VOCFolderDetectionDataModule(str(tmp_path), val_fraction=0.25, keep_empty_images=False, num_workers=0)
    assert set(_names(no_empty, "train")) == {r.image_path.name for r in train.items} - {"p7.jpg"}


def test_annotations_folder_beside_an_image_folder_and_given_class_names(tmp_path: Path) -> None:
    write_voc_folder(tmp_path / "images", tmp_path / "Annotations")
    dm = VOCFolderDetectionDataModule(str(tmp_path), class_names=["dog"], num_workers=0, batch_size=2, image_size=64)
    assert dm.image_dir == tmp_path / "images" and dm.annotation_dir == tmp_path / "Annotations"
    assert dm.class_names == ["dog"]
    train, report = dm._build_dataset("train")
    val, val_report = dm._build_dataset("val")
    assert len(train) + len(val) == 8 and len(val) == 1  # round(8 * 0.1) = 1
    # The 4 cats are not in class_names: counted, as in the devkit reader.
    assert len(report.problems["unknown_category"]) + len(val_report.problems["unknown_category"]) == 4
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 64, 64) and all(set(t["labels"].tolist()) <= {0} for t in targets)


def test_voc_year_folder_without_imagesets(tmp_path: Path) -> None:
    year = tmp_path / "VOCdevkit" / "VOC2012"
    write_voc_folder(year / "JPEGImages", year / "Annotations")
    dm = VOCFolderDetectionDataModule(str(year), num_workers=0)
    assert dm.image_dir == year / "JPEGImages" and dm.class_names == ["cat", "dog"]
    assert len(dm._build_dataset("train")[0]) + len(dm._build_dataset("val")[0]) == 8
    # The devkit reader, which needs split lists, points to this one.
    devkit = VOCDetectionDataModule(str(tmp_path), train_sets=["VOC2012/trainval"], num_workers=0)
    with pytest.raises(FileNotFoundError, match="trainval.txt does not exist; .*VOCFolderDetectionDataModule"):
        devkit._build_dataset("train")


def test_split_is_deterministic_disjoint_and_independent_of_listing_order(tmp_path: Path) -> None:
    keys = [f"img_{i:04d}.jpg" for i in range(200)]
    is_val = holdout_split(keys, 0.1)
    assert sum(is_val) == 20
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    val = {k for k, v in zip(keys, is_val) if v}
    assert {k for k, v in zip(shuffled, holdout_split(shuffled, 0.1)) if v} == val
    # Not simply the first or last names in sorted order.
    assert val != set(keys[:20]) and val != set(keys[-20:])
    assert holdout_split(["only.jpg"], 0.5) == [False] and sum(holdout_split(["a", "b"], 0.01)) == 1
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
            holdout_split(keys, bad)
    # The same dataset copied elsewhere is split the same way.
    write_voc_folder(tmp_path / "a", tmp_path / "a", n=12)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    splits = [_names(VOCFolderDetectionDataModule(str(tmp_path / d), val_fraction=0.3, num_workers=0), "val") for d in "ab"]
    assert splits[0] == splits[1] and len(splits[0]) == 4


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="VOC image folder .*nowhere does not exist"):
        VOCFolderDetectionDataModule(str(tmp_path / "nowhere"), num_workers=0)
    Image.new("RGB", (W, H)).save(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="no object names in VOC .xml files"):
        VOCFolderDetectionDataModule(str(tmp_path), num_workers=0)
    with pytest.raises(ValueError, match="val_fraction"):
        VOCFolderDetectionDataModule(str(tmp_path), class_names=["a"], val_fraction=1.5, num_workers=0)
