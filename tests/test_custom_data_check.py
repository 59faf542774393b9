"""``python -m datamodules.check`` on the layouts annotation tools export, and on folders it
cannot read: exit 0 when clean, 1 with problems, 2 with a message saying what it looked for and
what it found, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_custom_data_voc_folder import write_voc_folder
from test_custom_data_yolo import write_roboflow, write_yolo

from datamodules.check import main as check_main


def run(target: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = check_main([str(target), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_voc_without_split_lists(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    year = tmp_path / "VOCdevkit" / "VOC2007"
    write_voc_folder(year / "JPEGImages", year / "Annotations")
    for target in (tmp_path, year):
        code, out, _ = run(target, capsys)
        assert code == 1 and "checking VOCFolderDetectionDataModule (train/val)" in out
        assert "missing_image: 1" in out and "lost.xml" in out and "8 samples decoded" in out
    (year / "Annotations" / "lost.xml").unlink()
    code, out, _ = run(year, capsys)
    assert code == 0 and "0 problem(s)" in out


def test_folder_of_images_and_xml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_voc_folder(tmp_path / "beside", tmp_path / "beside")
    code, out, _ = run(tmp_path / "beside", capsys)
    assert code == 1 and "VOCFolderDetectionDataModule" in out and "lost.xml" in out
    write_voc_folder(tmp_path / "split" / "images", tmp_path / "split" / "Annotations")
    (tmp_path / "split" / "Annotations" / "lost.xml").unlink()
    (tmp_path / "split" / "classes.txt").write_text("cat\n")  # dogs become unknown classes
    code, out, _ = run(tmp_path / "split", capsys)
    assert code == 1 and "unknown_category: 4" in out


def _coco(images: list[str], category: str = "cat") -> dict:
    return {
        "images": [{"id": i + 1, "file_name": name, "width": 32, "height": 24} for i, name in enumerate(images)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": category}],
    }


def test_coco_json_under_another_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Roboflow: train/_annotations.coco.json beside its images.
    (tmp_path / "rf" / "train").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (32, 24)).save(tmp_path / "rf" / "train" / name)
    (tmp_path / "rf" / "train" / "_annotations.coco.json").write_text(json.dumps(_coco(["a.jpg", "b.jpg"])))
    code, out, _ = run(tmp_path / "rf", capsys)
    assert code == 0 and "checking CocoDetectionDataModule (val)" in out and "2 samples decoded" in out
    # A json named by the user, images in images/ beside it; one listed image is missing.
    (tmp_path / "mine" / "images").mkdir(parents=True)
    Image.new("RGB", (32, 24)).save(tmp_path / "mine" / "images" / "a.jpg")
    (tmp_path / "mine" / "labels.json").write_text(json.dumps(_coco(["a.jpg", "gone.jpg"])))
    for target in (tmp_path / "mine", tmp_path / "mine" / "labels.json"):
        code, out, _ = run(target, capsys)
        assert code == 1 and "missing_image: 1" in out and "gone.jpg" in out
    (tmp_path / "other.json").write_text(json.dumps({"some": "thing"}))
    code, _, err = run(tmp_path / "other.json", capsys)
    assert code == 2 and "neither a COCO json" in err


def test_yolo_folder_and_data_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_yolo(tmp_path / "yolo")
    code, out, _ = run(root, capsys)
    assert code == 1 and "checking YoloDetectionDataModule (train/val)" in out
    assert "bad_label_line: 3" in out and "orphan.txt" in out and "exif_rotated: 1" in out
    code, out, _ = run(write_roboflow(tmp_path / "rf") / "data.yaml", capsys)
    assert code == 0 and "10 samples decoded" in out  # train and the val_fraction split, each image once
    (root / "data.yaml").write_text("train: images/train\nnames: {0: a, 5: b}\n")
    code, out, err = run(root, capsys)
    assert code == 2 and "cannot check" in err and str(root / "data.yaml") in err and "names indices" in err
    assert "Traceback" not in out + err


def test_nothing_recognised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(tmp_path / "nowhere", capsys)
    assert code == 2 and "does not exist" in err and str(tmp_path / "nowhere") in err and not out
    (tmp_path / "empty").mkdir()
    code, _, err = run(tmp_path / "empty", capsys)
    assert code == 2 and "no dataset recognised" in err and "Found: an empty folder" in err
    assert "YOLO data.yaml" in err and "COCO json" in err and "Annotations/" in err  # what it looked for
    # YOLO labels without their data.yaml: the message says what is missing.
    root = write_yolo(tmp_path / "noyaml")
    (root / "data.yaml").unlink()
    code, _, err = run(root, capsys)
    assert code == 2 and "2 folder(s): images, labels" in err and "need a data.yaml" in err
    shutil.rmtree(root / "labels")
    (root / "notes.txt").write_text("hello")
    (root / "table.csv").write_text("a,b")
    code, _, err = run(root, capsys)
    assert code == 2 and "1 folder(s): images; 2 file(s): 1 .csv, 1 .txt" in err
