"""Joint detection + segmentation data (``datamodules.joint``): image, boxes and mask stay on the
same pixels through the joint augmentation; the shapes dataset reads the same through its VOC
and COCO layouts; single-label sources mix at the asked ratio; bad masks are skipped and counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import JointCocoDataModule, JointVOCDataModule, MixedJointDataModule
from datamodules.joint import mixed_records
from datamodules.shapes import CLASS_NAMES, generate_shapes
from datamodules.transforms import MASK_INTERPOLATION, ssd_train_transform
from test_alignment import COLOURS, colour_classes, interior

LOADER = {"num_workers": 0, "pin_memory": False, "batch_size": 4}
CONTRACT = {"boxes": torch.float32, "labels": torch.int64, "iscrowd": torch.uint8, "image_id": torch.int64,
            "orig_size": torch.int64, "mask": torch.int64, "has_boxes": torch.bool, "has_mask": torch.bool}  # fmt: skip
EVALUATION = {"orig_boxes": torch.float32, "orig_mask": torch.int64}


def rectangle_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image, mask, boxes, labels)``: up to four rectangles, one per class 1..4, 3 px apart,
    some touching the border, on class 0; the image paints the mask's classes in ``COLOURS``,
    the boxes are the tight boxes of each rectangle's mask pixels (label = class - 1)."""
    height, width = (int(v) for v in rng.integers(80, 161, size=2))
    mask = np.zeros((height, width), np.uint8)
    boxes, labels = [], []
    for cls in rng.permutation(np.arange(1, 5)):
        for _ in range(20):
            w, h = int(rng.integers(12, width // 2)), int(rng.integers(12, height // 2))
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            if (mask[max(y0 - 3, 0) : y0 + h + 3, max(x0 - 3, 0) : x0 + w + 3] == 0).all():
                mask[y0 : y0 + h, x0 : x0 + w] = cls
                boxes.append([x0, y0, x0 + w, y0 + h])
                labels.append(cls - 1)
                break
    return COLOURS[mask], mask, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def test_joint_augmentation_keeps_image_boxes_and_mask_on_their_objects() -> None:
    """Zoom-out (255 canvas), min-IoU crop, flip, resize to three sizes, 60 random draws: every
    pixel 2 px away from an edge keeps colour -> class, and every box stays the tight box of its
    object's mask pixels within half a pixel, without bias (floor-style nearest resizing is
    biased by up to a pixel)."""
    rng = np.random.default_rng(0)
    transforms = [ssd_train_transform(size, photometric=False) for size in (64, 100, 160)]
    for seed, transform in enumerate(transforms):
        transform.set_random_seed(seed)
    errors, pixels, zoomed = [], 0, 0
    for draw in range(60):
        image, mask, boxes, labels = rectangle_scene(rng)
        out = transforms[draw % 3](image=image, mask=mask, bboxes=boxes, labels=labels, iscrowd=np.zeros(len(labels), np.uint8))
        out_image, out_mask = out["image"], out["mask"]
        assert out_mask.shape == out_image.shape[:2] and out_mask.dtype == np.uint8
        zoomed += int((out_mask == 255).any())
        inside = interior(out_mask, 2)
        np.testing.assert_array_equal(colour_classes(out_image)[inside], out_mask[inside])
        pixels += int(inside.sum())
        for box, label in zip(np.asarray(out["bboxes"]).reshape(-1, 4), out["labels"]):
            ys, xs = np.nonzero(out_mask == label + 1)
            errors.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) - box)
    errors = np.asarray(errors)
    assert len(errors) >= 100 and pixels > 100_000 and zoomed >= 10
    assert np.abs(errors).max() <= 0.5 + 1e-3, np.abs(errors).max()
    assert np.abs(errors.mean(0)).max() < 0.1, errors.mean(0)


# --- datamodules on the shapes dataset --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("joint_shapes"), num_train=6, num_val=3, min_size=96, max_size=128)


def joint_voc(root: Path, **kwargs) -> JointVOCDataModule:
    return JointVOCDataModule(root=str(root), class_names=list(CLASS_NAMES), image_size=64, **{**LOADER, **kwargs})


def joint_coco(root: Path, **kwargs) -> JointCocoDataModule:
    return JointCocoDataModule(root=str(root / "coco"), image_size=64, **{**LOADER, **kwargs})


def check_contract(images: torch.Tensor, targets: list[dict[str, torch.Tensor]], evaluation: bool) -> None:
    assert images.dtype == torch.float32 and images.shape[1:] == (3, 64, 64) and 0 <= images.min() <= images.max() <= 1
    keys = {**CONTRACT, **(EVALUATION if evaluation else {})}
    for target in targets:
        assert {k: v.dtype for k, v in target.items()} == keys
        k = len(target["labels"])
        assert target["boxes"].shape == (k, 4) and target["iscrowd"].shape == (k,)
        assert target["image_id"].shape == () and target["has_boxes"].shape == () and target["has_mask"].shape == ()
        assert target["mask"].shape == (64, 64)
        assert ((target["mask"] < 6) | (target["mask"] == 255)).all()
        if evaluation:
            h, w = target["orig_size"].tolist()
            assert target["orig_mask"].shape == (h, w) and target["orig_boxes"].shape == (k, 4)
            # The input's mask is the original's, resized by the image's pixel centres.
            resized = cv2.resize(target["orig_mask"].numpy().astype(np.uint8), (64, 64), interpolation=MASK_INTERPOLATION)
            np.testing.assert_array_equal(target["mask"].numpy(), resized)


@pytest.mark.parametrize("make", [joint_voc, joint_coco], ids=["voc", "coco"])
def test_shapes_load_with_the_contract(tiny_shapes: Path, make) -> None:
    datamodule = make(tiny_shapes)
    assert (datamodule.num_det_classes, datamodule.num_seg_classes) == (5, 6)
    assert datamodule.class_names == datamodule.det_class_names == list(CLASS_NAMES)
    assert datamodule.seg_class_names == ["background", *CLASS_NAMES]
    datamodule.setup("fit")
    train = [batch for batch in datamodule.train_dataloader()]
    assert sum(len(t) for _, t in train) == 4  # drop_last: 6 images, batches of 4
    for images, targets in train:
        check_contract(images, targets, evaluation=False)
        assert all(t["has_boxes"] and t["has_mask"] for t in targets)
    val = [batch for batch in datamodule.val_dataloader()]
    assert sum(len(t) for _, t in val) == 3
    for images, targets in val:
        check_contract(images, targets, evaluation=True)


def test_voc_and_coco_layouts_give_the_same_boxes_and_masks(tiny_shapes: Path) -> None:
    """Evaluation samples, and training samples drawn with the same seed: equal boxes and labels,
    masks equal wherever VOC's mask is not its 255 border band (COCO's are rasterised polygons)."""
    voc, coco = joint_voc(tiny_shapes), joint_coco(tiny_shapes)
    for split in ("train", "val"):
        voc_set, coco_set = voc._build_dataset(split)[0], coco._build_dataset(split)[0]
        assert len(voc_set) == len(coco_set) > 0
        for index in range(len(voc_set)):
            (voc_image, v), (coco_image, c) = voc_set.fetch(index, seed=index).sample, coco_set.fetch(index, seed=index).sample
            torch.testing.assert_close(voc_image, coco_image)
            torch.testing.assert_close(v["boxes"], c["boxes"])
            torch.testing.assert_close(v["labels"], c["labels"])
            for key in ("mask", "orig_mask") if split == "val" else ("mask",):
                labelled = v[key] != 255
                assert (v[key] == c[key])[labelled].float().mean() > 0.99
                assert (v[key] == 255)[c[key] == 255].all()  # COCO ignores only what VOC does (the canvas)
            if split == "val":
                torch.testing.assert_close(v["orig_boxes"], c["orig_boxes"])


def test_mixed_sources_give_both_kinds_of_samples_at_the_ratio(tiny_shapes: Path) -> None:
    def mixed() -> MixedJointDataModule:
        return MixedJointDataModule(
            detection={"class_path": "datamodules.CocoDetectionDataModule", "init_args": {"root": str(tiny_shapes / "coco")}},
            segmentation={"class_path": "datamodules.VOCSegmentationDataModule",
                          "init_args": {"root": str(tiny_shapes), "class_names": list(CLASS_NAMES)}},  # fmt: skip
            detection_fraction=0.25,
            image_size=64,
            **LOADER,
        )

    datamodule = mixed()
    assert (datamodule.det_class_names, datamodule.seg_class_names) == (list(CLASS_NAMES), ["background", *CLASS_NAMES])
    assert (datamodule.num_det_classes, datamodule.num_seg_classes) == (5, 6)
    datamodule.setup("fit")
    targets = [t for _, batch in datamodule.train_dataloader() for t in batch]
    assert len(targets) == 24  # 1 pass over the 6 detection images, 3 over the 6 segmentation ones
    detection = [t for t in targets if t["has_boxes"]]
    segmentation = [t for t in targets if not t["has_boxes"]]
    assert len(detection) == 6 and len(segmentation) == 18
    assert all(not t["has_mask"] and (t["mask"] == 255).all() for t in detection)
    assert all(t["has_mask"] and t["boxes"].shape == (0, 4) and (t["mask"] != 255).any() for t in segmentation)
    assert len({int(t["image_id"]) for t in detection}) == 6  # every detection image in the epoch
    # Deterministic per seed: a second datamodule draws the same epoch.
    again = mixed()
    again.setup("fit")
    first_batch = next(iter(again.train_dataloader()))
    torch.testing.assert_close(first_batch[0], next(iter(datamodule.train_dataloader()))[0])
    val = [t for _, batch in datamodule.val_dataloader() for t in batch]
    assert [(bool(t["has_boxes"]), bool(t["has_mask"])) for t in val] == [(True, False)] * 3 + [(False, True)] * 3
    check_contract(*next(iter(datamodule.val_dataloader())), evaluation=True)


@pytest.mark.parametrize(
    ("sizes", "fraction", "passes"),
    [((6, 6), 0.25, (1, 3)), ((1000, 1500), 0.5, (3, 2)), ((118, 10), 0.5, (1, 12)), ((7, 5), 1.0, (1, 0)), ((7, 5), 0.0, (0, 1))],
)
def test_an_epoch_mixes_whole_passes_near_the_fraction(sizes: tuple[int, int], fraction: float, passes: tuple[int, int]) -> None:
    detection, segmentation = [f"d{i}" for i in range(sizes[0])], [f"s{i}" for i in range(sizes[1])]
    epoch = mixed_records(detection, segmentation, fraction)
    assert epoch == detection * passes[0] + segmentation * passes[1]
    assert abs(passes[0] * sizes[0] / len(epoch) - fraction) <= 0.01
    with pytest.raises(ValueError, match="segmentation source has no training samples"):
        mixed_records(detection, [], 0.5)


def test_a_bad_mask_is_skipped_and_counted(tiny_shapes: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_shapes, tmp_path / "shapes"))
    bad = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "shapes_train_000002.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(bad)
    datamodule = joint_voc(root, batch_size=2)
    datamodule.setup("fit")
    assert sum(len(t) for _, t in datamodule.train_dataloader()) == 5
    problems = datamodule.problem_log.report.problems
    assert len(problems["mask_size_mismatch"]) == 1 and str(bad) in problems["mask_size_mismatch"][0]
    with pytest.raises(ValueError, match="mask_size_mismatch"):
        joint_voc(root, strict=True).setup("fit")


def test_coco_annotations_without_segmentation_leave_the_image_without_mask(tiny_shapes: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_shapes / "coco", tmp_path / "coco"))
    path = root / "annotations" / "instances_val2017.json"
    coco = json.loads(path.read_text())
    first = coco["annotations"][0]
    first["segmentation"] = []
    path.write_text(json.dumps(coco))
    datamodule = JointCocoDataModule(root=str(root), image_size=64, **LOADER)
    datamodule.setup("validate")
    assert len(datamodule.reports["val"].problems["no_segmentation"]) == 1
    targets = [t for _, batch in datamodule.val_dataloader() for t in batch]
    unmasked = [t for t in targets if not t["has_mask"]]
    assert [int(t["image_id"]) for t in unmasked] == [first["image_id"]]
    assert (unmasked[0]["mask"] == 255).all() and (unmasked[0]["orig_mask"] == 255).all() and unmasked[0]["has_boxes"]
