"""The embedded shapes dataset: deterministic, and its COCO and VOC layouts agree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from core.constants import voc_palette
from datamodules.shapes import CATEGORY_IDS, CLASS_NAMES, generate_shapes, main


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = _digest(generate_shapes(tmp_path / "a", num_train=4, num_val=2, seed=3))
    b = _digest(generate_shapes(tmp_path / "b", num_train=4, num_val=2, seed=3))
    c = _digest(generate_shapes(tmp_path / "c", num_train=4, num_val=2, seed=4))
    assert a == b
    assert len(a) == len(c)
    jpegs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in jpegs)


def test_command_line_writes_the_layout(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    main(["--out", str(out), "--num-train", "2", "--num-val", "1"])
    assert len(list((out / "coco" / "train2017").glob("*.jpg"))) == 2
    assert len(list((out / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))) == 3


def test_layout_splits_and_classes(shapes_root: Path) -> None:
    voc = shapes_root / "VOCdevkit" / "VOC2012"
    assert (shapes_root / "classes.txt").read_text().split() == list(CLASS_NAMES)
    for sub in ("Main", "Segmentation"):
        lists = {n: (voc / "ImageSets" / sub / f"{n}.txt").read_text().split() for n in ("train", "val", "trainval")}
        assert (len(lists["train"]), len(lists["val"])) == (96, 24)
        assert lists["trainval"] == lists["train"] + lists["val"]
    for split, count in (("train", 96), ("val", 24)):
        coco = json.loads((shapes_root / "coco" / "annotations" / f"instances_{split}2017.json").read_text())
        assert len(coco["images"]) == count == len(list((shapes_root / "coco" / f"{split}2017").glob("*.jpg")))
        ids = [c["id"] for c in coco["categories"]]
        assert ids == list(CATEGORY_IDS) and ids != list(range(1, len(ids) + 1))  # gaps on purpose
        per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=max(i["id"] for i in coco["images"]) + 1)
        assert per_image[[i["id"] for i in coco["images"]]].min() >= 1 and per_image.max() <= 5
        for image in coco["images"]:
            assert 320 <= image["height"] <= 480 and 320 <= image["width"] <= 480
        short_side = {i["id"]: min(i["height"], i["width"]) for i in coco["images"]}
        sides = [max(a["bbox"][2:]) / short_side[a["image_id"]] for a in coco["annotations"]]
        assert 0.05 < min(sides) and max(sides) <= 0.5 and 0.15 < np.median(sides) < 0.45


def test_coco_and_voc_layouts_describe_the_same_objects(shapes_root: Path) -> None:
    voc = shapes_root / "VOCdevkit" / "VOC2012"
    coco = json.loads((shapes_root / "coco" / "annotations" / "instances_val2017.json").read_text())
    name_of = {c["id"]: c["name"] for c in coco["categories"]}
    palette = voc_palette()
    saw_border = False
    for image in coco["images"]:
        stem = Path(image["file_name"]).stem
        assert (shapes_root / "coco" / "val2017" / image["file_name"]).read_bytes() == (voc / "JPEGImages" / f"{stem}.jpg").read_bytes()
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        root = ET.parse(voc / "Annotations" / f"{stem}.xml").getroot()
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (image["width"], image["height"])
        voc_objects = sorted(
            (o.findtext("name"), *(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")))
            for o in root.iter("object")
        )
        # VOC: 1-based inclusive pixel indices; COCO: xywh in continuous coordinates.
        coco_objects = sorted(
            (name_of[a["category_id"]], a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
            for a in anns
        )
        assert voc_objects == coco_objects
        png = Image.open(voc / "SegmentationClass" / f"{stem}.png")
        assert png.mode == "P" and png.getpalette()[: 3 * 256] == palette
        classes = np.array(png)
        assert classes.shape == (image["height"], image["width"])
        assert set(np.unique(classes)) <= set(range(len(CLASS_NAMES) + 1)) | {255}
        saw_border |= bool((classes == 255).any())
        for ann in anns:
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"]))
            polygon = mask_utils.decode(rle).astype(bool)
            label = CATEGORY_IDS.index(ann["category_id"]) + 1
            # The polygon covers its class in the PNG except on the thin 255 border.
            agree = (classes[polygon] == label).mean()
            border = (classes[polygon] == 255).mean()
            assert agree > 0.7 and agree + border > 0.97, (stem, ann["id"], agree, border)
            # Polygons run through the boundary pixels' centres: they lose about half a pixel
            # along the outline, never more.
            assert 0.85 * ann["area"] <= polygon.sum() <= 1.02 * ann["area"]
    assert saw_border


def test_every_class_is_present(shapes_root: Path) -> None:
    coco = json.loads((shapes_root / "coco" / "annotations" / "instances_train2017.json").read_text())
    counts = np.bincount([CATEGORY_IDS.index(a["category_id"]) for a in coco["annotations"]], minlength=len(CLASS_NAMES))
    assert counts.min() >= 20
