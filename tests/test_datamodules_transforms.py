"""The SSD and DeepLab pipelines keep boxes and masks on their pixels, and never emit bad boxes."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest

from core.constants import mean_fill
from datamodules.transforms import (
    MinIoURandomCrop,
    ZoomOut,
    deeplab_train_transform,
    ssd_eval_transform,
    ssd_train_transform,
)

MEAN_FILL = mean_fill()
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gray 240 x 300 image with four solid, non-overlapping coloured rectangles."""
    image = np.full((240, 300, 3), 128, np.uint8)
    boxes = np.array([[10, 20, 90, 100], [120, 30, 200, 90], [40, 140, 150, 220], [220, 120, 290, 230]], np.float32)
    for colour, (x0, y0, x1, y1) in zip(COLOURS, boxes.astype(int)):
        image[y0:y1, x0:x1] = colour
    return image, boxes, np.arange(4, dtype=np.int64)


def _run(transform: A.Compose, image, boxes, labels) -> dict:
    return transform(image=image, bboxes=boxes, labels=labels, iscrowd=np.zeros(len(labels), np.uint8))


def test_ssd_boxes_stay_on_their_objects() -> None:
    image, boxes, labels = _scene()
    transform = ssd_train_transform(320, photometric=False)
    transform.set_random_seed(0)
    checked = 0
    for _ in range(40):
        out = _run(transform, image, boxes, labels)
        img = out["image"].astype(int)
        assert img.shape == (320, 320, 3)
        for (x0, y0, x1, y1), label in zip(out["bboxes"], out["labels"]):
            colour = COLOURS[label].astype(int)
            is_colour = np.abs(img - colour).sum(-1) < 60
            inner = is_colour[int(np.ceil(y0)) + 1 : int(y1) - 1, int(np.ceil(x0)) + 1 : int(x1) - 1]
            if inner.size == 0:
                continue
            assert inner.mean() > 0.95  # the box is filled with its object ...
            ys, xs = np.nonzero(is_colour)
            # ... and the object does not reach past the box (tight up to interpolation).
            assert xs.min() >= x0 - 2 and xs.max() <= x1 + 1 and ys.min() >= y0 - 2 and ys.max() <= y1 + 1
            checked += 1
    assert checked > 60


def test_ssd_never_emits_boxes_outside_or_without_area() -> None:
    rng = np.random.default_rng(0)
    transform = ssd_train_transform(320)
    transform.set_random_seed(1)
    emitted = 0
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(50, 400, size=2))
        image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        x0 = rng.uniform(0, w - 1, size=6)
        y0 = rng.uniform(0, h - 1, size=6)
        boxes = np.stack([x0, y0, np.minimum(x0 + rng.uniform(0.5, w, 6), w), np.minimum(y0 + rng.uniform(0.5, h, 6), h)], 1)
        out = _run(transform, image, boxes.astype(np.float32), np.arange(6, dtype=np.int64))
        b = np.asarray(out["bboxes"]).reshape(-1, 4)
        assert len(b) == len(out["labels"]) == len(out["iscrowd"])
        assert (b >= 0).all() and (b <= 320).all()
        assert (b[:, 2] - b[:, 0] >= 1).all() and (b[:, 3] - b[:, 1] >= 1).all()
        emitted += len(b)
    assert emitted > 150


def test_eval_transform_only_resizes() -> None:
    image, boxes, labels = _scene()
    out = _run(ssd_eval_transform(320), image, boxes, labels)
    np.testing.assert_allclose(out["bboxes"], boxes * np.array([320 / 300, 320 / 240] * 2), rtol=1e-5)
    assert out["labels"].tolist() == [0, 1, 2, 3]


def test_zoom_out_places_image_on_mean_canvas() -> None:
    image, boxes, labels = _scene()
    transform = A.Compose([ZoomOut(max_ratio=3.0, p=1.0)], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "iscrowd"]))
    transform.set_random_seed(0)
    out = _run(transform, image, boxes, labels)
    canvas = out["image"]
    assert canvas.shape[0] >= 240 and canvas.shape[1] >= 300 and canvas.shape[0] > 240
    (x0, y0, x1, y1) = out["bboxes"][0]
    dx, dy = x0 - boxes[0, 0], y0 - boxes[0, 1]
    np.testing.assert_allclose(np.asarray(out["bboxes"]) - [dx, dy, dx, dy], boxes, atol=1e-3)
    dx, dy = int(round(dx)), int(round(dy))
    np.testing.assert_array_equal(canvas[dy : dy + 240, dx : dx + 300], image)
    outside = np.ones(canvas.shape[:2], bool)
    outside[dy : dy + 240, dx : dx + 300] = False
    assert (canvas[outside] == np.array(MEAN_FILL, np.uint8)).all()


def test_min_iou_crop_reaches_the_sampled_overlap_and_drops_off_centre_boxes() -> None:
    crop = MinIoURandomCrop(min_ious=(0.5,), p=1.0)
    crop.set_random_seed(0)
    box = np.array([[60, 40, 240, 200]], np.float32)
    normalized = box / np.array([300, 240, 300, 240], np.float32)
    for _ in range(30):
        x0, y0, x1, y1 = crop.get_params_dependent_on_data({"shape": (240, 300)}, {"bboxes": normalized})["crop_coords"]
        ix = max(0, min(x1, 240) - max(x0, 60))
        iy = max(0, min(y1, 200) - max(y0, 40))
        inter = ix * iy
        iou = inter / ((x1 - x0) * (y1 - y0) + 180 * 160 - inter)
        assert iou >= 0.5
        assert (x1 - x0) >= 0.3 * 300 - 1 and (y1 - y0) >= 0.3 * 240 - 1
    # A box whose centre is outside the crop is dropped, one whose centre is inside is clipped.
    two = np.array([[0, 0, 100, 100, 0], [150, 150, 290, 230, 1]], np.float32) / np.array([300, 240, 300, 240, 1], np.float32)
    kept = crop.apply_to_bboxes(two, crop_coords=(120, 100, 300, 240), shape=(240, 300))
    assert len(kept) == 1 and kept[0, 4] == 1


def test_deeplab_mask_stays_with_its_pixels_and_padding_is_255() -> None:
    rng = np.random.default_rng(0)
    classes = np.kron(rng.integers(0, 4, size=(6, 8)), np.ones((20, 20), np.int64)).astype(np.uint8)  # 120 x 160
    image = COLOURS[classes]
    transform = deeplab_train_transform(257)
    transform.set_random_seed(0)
    saw_padding = False
    for _ in range(20):
        out = transform(image=image, mask=classes)
        img, mask = out["image"].astype(int), out["mask"]
        assert img.shape == (257, 257, 3) and mask.shape == (257, 257)
        valid = mask != 255
        # Away from class boundaries (where the image interpolates), every pixel has the
        # colour of its mask class.
        kernel = np.ones((3, 3), np.uint8)
        interior = valid & (cv2.dilate(mask, kernel) == cv2.erode(mask, kernel))
        mismatch = np.abs(img[interior] - COLOURS[mask[interior]].astype(int)).sum(-1) > 60
        assert interior.sum() > 2000 and not mismatch.any()
        pad = ~valid  # the source has no 255: every 255 is padding, filled with the mean colour
        assert (img[pad] == np.array(MEAN_FILL)).all()
        saw_padding |= bool(pad.any())
    assert saw_padding


@pytest.mark.parametrize("scales", [[1.0], [0.5, 2.0]])
def test_deeplab_scales_are_the_listed_steps(scales: list[float]) -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 50:] = 1
    transform = deeplab_train_transform(400, scales=scales, horizontal_flip=False)
    transform.set_random_seed(0)
    seen = set()
    for _ in range(10):
        out = transform(image=image, mask=mask)["mask"]
        seen.add(int((out != 255).any(axis=0).sum()) / 100)  # valid width = scale x 100
    assert seen == set(scales)


def test_deeplab_enlarged_crops_reach_every_part_of_the_image() -> None:
    # Red encodes the source column, green the row: a crop's corner tells where it came from.
    yy, xx = np.mgrid[0:200, 0:256]
    image = np.stack([xx, yy, np.zeros_like(xx)], axis=-1).astype(np.uint8)
    mask = (xx // 64).astype(np.uint8)  # four vertical class bands
    transform = deeplab_train_transform(129, scales=[2.0], horizontal_flip=False)
    transform.set_random_seed(0)
    lefts, rights, tops = [], [], []
    for _ in range(60):
        out = transform(image=image, mask=mask)
        img, m = out["image"].astype(int), out["mask"]
        assert img.shape == (129, 129, 3) and (m != 255).all()  # 2x enlarged: never padded
        # Each output pixel's class is the band of the source column it shows.
        np.testing.assert_array_equal(m[:, 2:-2], img[:, 2:-2, 0] // 64)
        lefts.append(img[:, 0, 0].mean())
        rights.append(img[:, -1, 0].mean())
        tops.append(img[0, :, 1].mean())
    # Crops start at both ends of the image (uniform placement), and span 129 / 2 source pixels.
    assert min(lefts) < 8 and max(rights) > 247 and min(tops) < 8 and max(tops) > 200 - 65 - 8
    assert all(60 <= r - l <= 66 for l, r in zip(lefts, rights))
