"""COCO in its official layout: ids <-> labels, crowd, empty images, bad boxes, results json."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datamodules import CocoDetectionDataModule, CocoSegmentationDataModule, detections_to_coco_results

W, H = 64, 48
CATEGORIES = [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_coco(root: Path) -> Path:
    """A tiny COCO dataset in the official layout, with every case the reader must handle."""
    images = [
        {"id": 1, "file_name": "a.jpg", "width": W, "height": H},  # two objects + a crowd
        {"id": 2, "file_name": "b.jpg", "width": W, "height": H},  # no annotations
        {"id": 3, "file_name": "c.jpg", "width": W, "height": H},  # box past the edge, zero-area, unknown id
        {"id": 4, "file_name": "missing.jpg", "width": W, "height": H},  # not on disk
        {"id": 5, "file_name": "d.jpg", "width": W, "height": H},  # only a crowd region
    ]
    crowd = np.zeros((H, W), np.uint8, order="F")
    crowd[30:46, 44:62] = 1
    crowd_rle = mask_utils.encode(crowd)
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    anns = [
        {"id": 10, "image_id": 1, "category_id": 2, "bbox": [4, 6, 20, 10], "segmentation": _square(4, 6, 24, 16), "area": 200, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 5, "bbox": [14, 10, 16, 20], "segmentation": _square(14, 10, 30, 30), "area": 320, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 9, "bbox": [44, 30, 18, 16], "segmentation": crowd_rle, "area": 288, "iscrowd": 1},
        {"id": 13, "image_id": 3, "category_id": 9, "bbox": [50, 40, 30, 20], "segmentation": _square(50, 40, 64, 48), "area": 112, "iscrowd": 0},
        {"id": 14, "image_id": 3, "category_id": 2, "bbox": [10, 10, 0, 5], "segmentation": [], "area": 0, "iscrowd": 0},
        {"id": 15, "image_id": 3, "category_id": 77, "bbox": [1, 1, 5, 5], "segmentation": _square(1, 1, 6, 6), "area": 25, "iscrowd": 0},
        {"id": 16, "image_id": 5, "category_id": 5, "bbox": [0, 0, 10, 10], "segmentation": crowd_rle, "area": 100, "iscrowd": 1},
    ]
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for image in images:
            if image["file_name"] != "missing.jpg":
                Image.new("RGB", (W, H), (90, 120, 150)).save(root / split / image["file_name"])
    (root / "annotations").mkdir(exist_ok=True)
    dataset = {"images": images, "annotations": anns, "categories": CATEGORIES}
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(dataset))
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco"))


def _no_augment(**kwargs) -> dict:
    return dict(zoom_out=False, min_iou_crop=False, horizontal_flip=False, photometric=False, num_workers=0, **kwargs)


def test_classes_and_id_mapping_known_after_init(coco_root: Path) -> None:
    dm = CocoDetectionDataModule(str(coco_root), num_workers=0)
    assert dm.num_classes == 3
    assert dm.class_names == ["cat", "dog", "bird"]
    assert dm.label_to_category_id == [2, 5, 9]
    subset = CocoDetectionDataModule(str(coco_root), category_ids=[9, 2], num_workers=0)
    assert subset.class_names == ["bird", "cat"] and subset.num_classes == 2
    with pytest.raises(ValueError, match="category_ids \\[4\\]"):
        CocoDetectionDataModule(str(coco_root), category_ids=[4], num_workers=0)
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        CocoDetectionDataModule(str(coco_root / "nowhere"), num_workers=0)


def test_background_placeholder_category_is_no_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # As annotation tools export: Roboflow's id-0 dataset category, CVAT / labelme's "_background_".
    categories = [{"id": 0, "name": "pets-xyz", "supercategory": "none"}, {"id": 1, "name": "cat"},
                  {"id": 2, "name": "dog"}, {"id": 3, "name": "_Background_"}]  # fmt: skip
    images = [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}]
    anns = [{"id": 1, "image_id": 1, "category_id": c, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0} for c in (1, 2)]
    (tmp_path / "annotations").mkdir()
    val = tmp_path / "annotations" / "instances_val2017.json"
    val.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    with caplog.at_level(logging.INFO, logger="datamodules.coco"):
        dm = CocoDetectionDataModule(str(tmp_path), num_workers=0)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2 and dm.label_to_category_id == [1, 2]
    assert str(val) in caplog.text and "'pets-xyz'" in caplog.text and "'_Background_'" in caplog.text
    kept = CocoDetectionDataModule(str(tmp_path), category_ids=[0, 1, 2], num_workers=0)
    assert kept.class_names == ["pets-xyz", "cat", "dog"]
    # A "background" category that does hold annotations (here in the train json only) is a class.
    train_anns = [*anns, {"id": 3, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}]
    (tmp_path / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": train_anns, "categories": categories})
    )
    assert CocoDetectionDataModule(str(tmp_path), num_workers=0).class_names == ["cat", "dog", "_Background_"]


def test_records_boxes_labels_crowd_and_counted_problems(coco_root: Path) -> None:
    dm = CocoDetectionDataModule(str(coco_root), num_workers=0)
    dataset, report = dm._build_dataset("train")
    by_id = {r.image_id: r for r in dataset.items}
    assert sorted(by_id) == [1, 2, 3, 5]  # the empty image kept, the missing file dropped
    a = by_id[1]
    np.testing.assert_allclose(a.boxes, [[4, 6, 24, 16], [14, 10, 30, 30], [44, 30, 62, 46]])
    assert a.labels.tolist() == [0, 1, 2] and a.iscrowd.tolist() == [0, 0, 1]
    assert by_id[2].boxes.shape == (0, 4)
    np.testing.assert_allclose(by_id[3].boxes, [[50, 40, 64, 48]])  # clipped; zero-area and id 77 dropped
    assert report.counts() == {"missing_image": 1, "unknown_category": 1, "zero_area_box": 1, "box_outside_image": 1}
    assert "missing.jpg" in report.problems["missing_image"][0]
    assert "category id 77" in report.problems["unknown_category"][0]


def test_keep_empty_images_switch(coco_root: Path) -> None:
    dm = CocoDetectionDataModule(str(coco_root), keep_empty_images=False, num_workers=0)
    train, _ = dm._build_dataset("train")
    val, _ = dm._build_dataset("val")
    # Training drops the image without annotations and the one with only a crowd region;
    # evaluation keeps every image (COCO's evaluation counts them).
    assert sorted(r.image_id for r in train.items) == [1, 3]
    assert sorted(r.image_id for r in val.items) == [1, 2, 3, 5]


def test_training_targets_have_no_crowd_evaluation_targets_keep_it(coco_root: Path) -> None:
    dm = CocoDetectionDataModule(str(coco_root), image_size=320, batch_size=2, **_no_augment())
    dm.setup("fit")
    sx, sy = 320 / W, 320 / H
    train_item = dm.datasets["train"][0]
    image, target = train_item
    assert image.shape == (3, 320, 320) and image.dtype == torch.uint8
    torch.testing.assert_close(target["boxes"], torch.tensor([[4 * sx, 6 * sy, 24 * sx, 16 * sy], [14 * sx, 10 * sy, 30 * sx, 30 * sy]]))
    assert target["labels"].tolist() == [0, 1] and target["iscrowd"].tolist() == [0, 0]
    assert target["image_id"].item() == 1 and target["orig_size"].tolist() == [H, W]
    _, val_target = dm.datasets["val"][0]
    assert val_target["labels"].tolist() == [0, 1, 2] and val_target["iscrowd"].tolist() == [0, 0, 1]
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 320, 320) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert [t["image_id"].item() for t in targets] == [1, 2]
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].dtype == torch.int64


def test_results_round_trip_through_loadres_and_cocoeval(coco_root: Path) -> None:
    dm = CocoDetectionDataModule(str(coco_root), num_workers=0)
    gt = COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    val, _ = dm._build_dataset("val")
    # Perfect predictions, given as contiguous labels and xyxy boxes in original pixels.
    ids, boxes, scores, labels = [], [], [], []
    for record in val.items:
        keep = record.iscrowd == 0
        ids.append(record.image_id)
        boxes.append(torch.from_numpy(record.boxes[keep]))
        scores.append(torch.ones(int(keep.sum())))
        labels.append(torch.from_numpy(record.labels[keep]))
    results = detections_to_coco_results(ids, boxes, scores, labels, dm.label_to_category_id)
    assert {r["category_id"] for r in results} == {2, 5, 9}
    detections = gt.loadRes(json.loads(json.dumps(results)))
    assert len(detections.anns) == len(results) == 3
    evaluator = COCOeval(gt, detections, "bbox")
    evaluator.params.imgIds = [1]  # image 3 holds boxes this reader clips or drops on purpose
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)  # ids mapped back right, crowd ignored


def test_coco_to_voc_semantic_masks(coco_root: Path) -> None:
    dm = CocoSegmentationDataModule(str(coco_root), class_names=["cat", "dog"], num_workers=0, batch_size=2)
    assert dm.num_classes == 3 and dm.class_names == ["background", "cat", "dog"]
    dataset, _ = dm._build_dataset("val")
    paths = [item.image_path.name for item in dataset.items]
    assert paths == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    _, mask = dataset.load(0)
    assert (mask[7:15, 5:13] == 1).all()  # cat only
    assert (mask[17:29, 15:29] == 2).all()  # dog only
    assert (mask[11:15, 15:23] == 255).all()  # cat and dog overlap
    assert (mask[31:45, 45:61] == 0).all()  # bird is no selected class: background (its crowd too)
    _, crowd_only = dataset.load(3)
    assert (crowd_only[31:45, 45:61] == 255).all()  # a crowd of a selected class is ignored
    train, _ = dm._build_dataset("train")
    assert [item.image_path.name for item in train.items] == ["a.jpg"]  # images holding the classes
