"""YOLO-format datasets as Ultralytics, Roboflow and CVAT export them: data.yaml names and split
entries, normalised labels to pixel boxes, bad lines counted, background images, EXIF."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from PIL import Image

from datamodules import YoloDetectionDataModule
from datamodules.image_io import EXIF_ORIENTATION
from datamodules.yolo import label_path

W, H = 40, 20
DATA_YAML = "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n"
TRAIN_LABELS = {
    "a": "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.2 0.4\n",
    "b": (
        "0 0.5 0.5 0.2\n"  # 4 columns
        "1 x 0.5 0.2 0.2\n"  # not a number
        "2 0.5 0.5 0.2 0.2\n"  # class 2 of 2 names
        "0 0.9 0.5 0.4 0.2\n"  # 4 pixels past the right edge: clipped, counted
        "1 0.5 0.5 0 0.2\n"  # no width
        "0 0.5 0.5 1.02 1.0\n"  # 0.4 pixel past both edges: rounding, clipped silently
        "\n"
        "0.5 0.5 0.5 0.2 0.2\n"  # class index not an integer
    ),
    "c": "1 0.1 0.1 0.4 0.1 0.4 0.6 0.1 0.6\n",  # a polygon: its bounding box
    "empty": "",
    "exif": "0 0.5 0.25 0.5 0.5\n",  # relative to the upright 20 x 40 image
}


def write_yolo(root: Path, data_yaml: str = DATA_YAML) -> Path:
    """A tiny YOLO dataset in the Ultralytics layout with every case the reader must handle."""
    for sub in ("images/train", "images/val", "labels/train", "labels/val"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(data_yaml)
    for stem in ("a", "b", "c", "empty", "background"):
        Image.new("RGB", (W, H), (90, 120, 150)).save(root / "images/train" / f"{stem}.jpg")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored 40 x 20, shown turned by 90 degrees: 20 wide, 40 high
    Image.new("RGB", (W, H), (200, 10, 10)).save(root / "images/train/exif.jpg", exif=exif.tobytes())
    for stem, text in TRAIN_LABELS.items():
        (root / "labels/train" / f"{stem}.txt").write_text(text)
    (root / "labels/train/orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    (root / "labels/train/classes.txt").write_text("cat\ndog\n")  # as CVAT / LabelImg write: not a label file
    Image.new("RGB", (W, H), (10, 10, 10)).save(root / "images/val/v.png")
    (root / "labels/val/v.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    return root


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    return write_yolo(tmp_path / "yolo")


def test_names_and_labels_become_pixel_boxes_with_bad_lines_counted(yolo_root: Path) -> None:
    dm = YoloDetectionDataModule(str(yolo_root), num_workers=0)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2  # known right after __init__
    train, report = dm._build_dataset("train")
    by_name = {r.image_path.stem: r for r in train.items}
    assert sorted(by_name) == ["a", "b", "background", "c", "empty", "exif"]  # background images kept
    np.testing.assert_allclose(by_name["a"].boxes, [[10, 5, 30, 15], [6, 1, 14, 9]], atol=1e-5)
    assert by_name["a"].labels.tolist() == [0, 1] and by_name["a"].size == (H, W)
    assert by_name["a"].boxes.dtype == np.float32 and by_name["a"].iscrowd.tolist() == [0, 0]
    np.testing.assert_allclose(by_name["b"].boxes, [[28, 8, 40, 12], [0, 0, 40, 20]], atol=1e-5)
    assert by_name["b"].labels.tolist() == [0, 0]
    np.testing.assert_allclose(by_name["c"].boxes, [[4, 2, 16, 12]], atol=1e-5)
    assert by_name["empty"].boxes.shape == (0, 4) and by_name["background"].labels.shape == (0,)
    assert by_name["exif"].size == (W, H)  # (h, w) of the upright image: 40 high, 20 wide
    np.testing.assert_allclose(by_name["exif"].boxes, [[5, 0, 15, 20]], atol=1e-5)
    assert report.counts() == {
        "bad_label_line": 3, "unknown_category": 1, "box_outside_image": 1, "zero_area_box": 1, "missing_image": 1,
    }  # fmt: skip
    problems = report.problems
    assert all("b.txt: line" in item for kind in ("bad_label_line", "unknown_category", "zero_area_box") for item in problems[kind])
    assert "line 1 has 4 numbers" in problems["bad_label_line"][0] and "line 2 is not all numbers" in problems["bad_label_line"][1]
    assert "line 8" in problems["bad_label_line"][2] and "class index 2" in problems["unknown_category"][0]
    assert "b.txt: line 4" in problems["box_outside_image"][0] and "orphan.txt" in problems["missing_image"][0]
    # The EXIF-rotated image decodes to the size its labels refer to: no size mismatch.
    decoded = dm.check(("train",))
    assert "size_mismatch" not in decoded.counts() and decoded.notes["exif_rotated"] == [str(by_name["exif"].image_path)]


def test_val_split_batches_and_keep_empty_images(yolo_root: Path) -> None:
    dm = YoloDetectionDataModule(str(yolo_root), num_workers=0, batch_size=2, image_size=64)
    dm.setup("fit")
    _, target = dm.datasets["val"][0]
    assert target["labels"].tolist() == [1] and target["image_id"].item() == 0
    torch.testing.assert_close(target["orig_boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0]]))
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 64, 64) and all(t["boxes"].shape[0] == t["labels"].shape[0] for t in targets)
    assert len(dm._build_dataset("test")[0]) == 1  # no test: entry, so test is val
    no_empty = YoloDetectionDataModule(str(yolo_root), keep_empty_images=False, num_workers=0)
    assert sorted(r.image_path.stem for r in no_empty._build_dataset("train")[0].items) == ["a", "b", "c", "exif"]


def test_label_path_follows_ultralytics_rule() -> None:
    assert label_path(Path("/d/images/train/x.jpg")) == Path("/d/labels/train/x.txt")
    assert label_path(Path("/d/train/images/sub/x.png")) == Path("/d/train/labels/sub/x.txt")
    assert label_path(Path("/images/d/images/x.jpeg")) == Path("/images/d/labels/x.txt")  # the last one
    assert label_path(Path("/d/photos/x.jpg")) == Path("/d/photos/x.txt")


def write_roboflow(root: Path, n: int = 10) -> Path:
    """Roboflow's layout: ``train/images`` + ``train/labels``, entries written as ``../train/images``,
    ``names`` a list; here without val (split by val_fraction) and with a foreign ``path``."""
    (root / "train/images").mkdir(parents=True)
    (root / "train/labels").mkdir(parents=True)
    (root / "data.yaml").write_text("path: /content/datasets/nowhere\ntrain: ../train/images\nnc: 2\nnames: ['car', 'bus']\n")
    for i in range(n):
        Image.new("RGB", (W, H)).save(root / "train/images" / f"img{i:02d}.jpg")
        (root / "train/labels" / f"img{i:02d}.txt").write_text(f"{i % 2} 0.5 0.5 0.5 0.5\n")
    return root


def test_without_val_a_deterministic_disjoint_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_roboflow(tmp_path / "rf")
    with caplog.at_level(logging.WARNING):
        dm = YoloDetectionDataModule(str(root), val_fraction=0.2, num_workers=0)
    assert "/content/datasets/nowhere does not exist" in caplog.text  # falls back to the yaml's folder
    assert dm.class_names == ["car", "bus"]
    train = [r.image_path.name for r in dm._build_dataset("train")[0].items]
    val = [r.image_path.name for r in dm._build_dataset("val")[0].items]
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert sorted(train + val) == [f"img{i:02d}.jpg" for i in range(10)]
    assert [r.image_path.name for r in dm._build_dataset("test")[0].items] == val
    # The same split from another instance, and from a copy of the dataset in another folder.
    again = YoloDetectionDataModule(str(write_roboflow(tmp_path / "copy")), val_fraction=0.2, num_workers=0)
    assert [r.image_path.name for r in again._build_dataset("val")[0].items] == val
    ids = [r.image_id for split in ("train", "val") for r in dm._build_dataset(split)[0].items]
    assert sorted(ids) == list(range(10))


def test_unusable_data_yaml_and_missing_labels_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.yaml does not exist"):
        YoloDetectionDataModule(str(tmp_path), num_workers=0)
    cases = {
        "train: images\n": "no 'names:' entry",
        "train: images\nnames: {0: a, 2: b}\n": r"names indices must be 0..1, got \[0, 2\]",
        "train: images\nnc: 3\nnames: [a, b]\n": "nc is 3 but names lists 2",
        "names: [a]\n": "no 'train:' entry",
        "train: [images\n": "not a readable YAML file",
    }
    for text, message in cases.items():
        (tmp_path / "data.yaml").write_text(text)
        with pytest.raises(ValueError, match=message) as error:
            YoloDetectionDataModule(str(tmp_path), num_workers=0)
        assert str(tmp_path / "data.yaml") in str(error.value)
    root = write_yolo(tmp_path / "nolabels")
    for label in (root / "labels/val").iterdir():
        label.unlink()
    dm = YoloDetectionDataModule(str(root), num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"none of the 1 images has a label file \(looked for .*labels/val/v.txt"):
        dm._build_dataset("val")
    (root / "data.yaml").write_text("train: images/train\nval: images/nowhere\nnames: [a, b]\n")
    with pytest.raises(FileNotFoundError, match="images/nowhere is neither an image folder"):
        YoloDetectionDataModule(str(root), num_workers=0)._build_dataset("val")


def test_split_list_files_and_cli_arguments(yolo_root: Path) -> None:
    # CVAT's Ultralytics export lists the images in train.txt (paths relative to the list's folder).
    (yolo_root / "train.txt").write_text("images/train/a.jpg\n./images/train/c.jpg\n")
    (yolo_root / "list.yaml").write_text("train: train.txt\nval: images/val\nnames: [cat, dog]\n")
    parser = ArgumentParser()
    parser.add_class_arguments(YoloDetectionDataModule, "data")
    config = parser.parse_args(["--data.root", str(yolo_root), "--data.data_yaml", "list.yaml", "--data.num_workers", "0"])
    dm = parser.instantiate(config).data
    train, report = dm._build_dataset("train")
    assert [r.image_path.name for r in train.items] == ["a.jpg", "c.jpg"] and report.num_problems == 0
