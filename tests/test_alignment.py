"""Predictions sit on their pixels: the geometry of every path from a file to a label map or a
box, measured at sub-pixel precision.

Segmentation: backbone feature cells sit on input pixels ``os * i`` (TF deeplab's geometry),
the model puts its logits back on exactly those pixels at any input size, and images that are a
colour-coded copy of their masks keep colour and class together through every training
transform and every evaluation scale (with flip). Detection: boxes follow their objects
through every SSD transform, and back to the original image.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch import nn

from backbone import Backbone, FeatureInfo, build_backbone
from datamodules.transforms import MinIoURandomCrop, ZoomOut, deeplab_train_transform, ssd_eval_transform, ssd_train_transform
from deeplab_mobile import PAPER_EVAL_SCALES, DeepLab, multi_scale_flip_probabilities
from core.constants import mean_fill
from deeplab_mobile.model import aligned_size
from ssdlite.postprocess import rescale_boxes

COLOURS = np.array([[40, 40, 40], [230, 30, 30], [30, 200, 40], [40, 60, 230], [240, 220, 30]], np.uint8)
BACKGROUND = np.array(mean_fill())  # the zoom-out canvas colour too


def banded_scene(rng: np.random.Generator, height: int, width: int, band: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: rectangles of random classes on a grid with random offsets; the image is
    the mask's classes painted in ``COLOURS``."""
    rows = np.cumsum(rng.integers(band // 2, band * 2, size=height // (band // 2) + 2)) - rng.integers(0, band)
    cols = np.cumsum(rng.integers(band // 2, band * 2, size=width // (band // 2) + 2)) - rng.integers(0, band)
    row_of = np.searchsorted(rows, np.arange(height), side="right")
    col_of = np.searchsorted(cols, np.arange(width), side="right")
    table = rng.integers(0, len(COLOURS), size=(row_of.max() + 1, col_of.max() + 1))
    mask = table[row_of[:, None], col_of[None, :]].astype(np.uint8)
    return COLOURS[mask], mask


def interior(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels whose ``(2 margin + 1)``-square neighbourhood holds one class only (255 excluded)."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return (cv2.dilate(mask, kernel) == cv2.erode(mask, kernel)) & (mask != 255)


def colour_classes(image: np.ndarray) -> np.ndarray:
    """The class of each pixel's nearest colour."""
    distances = ((image[..., None, :].astype(int) - COLOURS.astype(int)) ** 2).sum(-1)
    return distances.argmin(-1)


def best_shift(predicted: np.ndarray, truth: np.ndarray, max_shift: int = 12) -> tuple[int, int]:
    """The ``(dy, dx)`` by which ``predicted`` must move to agree best with ``truth`` (255 ignored)."""
    best, where = -1.0, (0, 0)
    m = max_shift
    valid = truth[m:-m, m:-m] != 255
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            moved = predicted[m - dy : predicted.shape[0] - m - dy, m - dx : predicted.shape[1] - m - dx]
            agreement = (moved == truth[m:-m, m:-m])[valid].mean()
            if agreement > best:
                best, where = agreement, (dy, dx)
    return where


# --- segmentation: the model's grid ----------------------------------------------------------
@pytest.mark.parametrize("output_stride", [8, 16])
def test_backbone_feature_cells_sit_on_pixels_at_multiples_of_the_output_stride(output_stride: int) -> None:
    """A symmetric network (every kernel constant, BN the identity) answers a single bright
    pixel at ``(os * a, os * b)`` with a response symmetric about cell ``(a, b)`` of its deepest
    map (dilated layers make it a grid pattern, not a peak)."""
    backbone = build_backbone("mobilenet_v2", width_mult=0.35, output_stride=output_stride).eval()
    backbone.select_taps([backbone.seg_tap])
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
        cells = 41  # the delta sits mid-map, out of the border's reach
        size = output_stride * (cells - 1) + 1
        assert aligned_size(size, output_stride) == size
        for a, b in [(20, 20), (19, 22)]:
            image = torch.zeros(1, 3, size, size)
            image[..., output_stride * a, output_stride * b] = 1.0  # small: no ReLU6 saturates
            response = backbone(image)[backbone.seg_tap][0].sum(0)
            assert response.shape == (cells, cells)
            around = response[a - 4 : a + 5, b - 4 : b + 5]
            assert around.min() > 0.1 * around.max()  # the response reaches across the window
            torch.testing.assert_close(around, around.flip(0))
            torch.testing.assert_close(around, around.flip(1))


class PixelSampler(Backbone):
    """A backbone with the model's geometry and no learning: its one tap is the input itself at
    pixels ``os * i`` (where the real backbone's cells sit, test above)."""

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        self.feature_info = [FeatureInfo("pixels", 3, output_stride)]
        self.seg_tap = "pixels"
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.select_taps(["pixels"])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixels": images[..., :: self.output_stride, :: self.output_stride]}


@pytest.mark.parametrize("size", [(224, 224), (513, 513), (350, 421), (97, 130)])
def test_deeplab_logits_land_on_their_pixels_at_any_input_size(size: tuple[int, int]) -> None:
    """An image whose channels are its own pixel coordinates, through a ``DeepLab`` that passes
    the sampled pixels on as logits: wherever the logits interpolate between cells inside the
    image, they must give back each pixel's own coordinates (measured: the old geometry,
    no padding and ``align_corners=False``, was off by up to 7.4 px, 6.5 / 2.1 px on average at
    350 x 421)."""
    head = nn.Identity()
    head.out_channels = 3
    model = DeepLab(PixelSampler(), head, num_classes=3).eval()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.eye(3)[:, :, None, None])
        model.classifier.bias.zero_()
    height, width = size
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    coordinates = torch.stack([ys, xs, torch.zeros_like(xs)])[None] / 1000
    with torch.no_grad():
        logits = model(coordinates)
    assert logits.shape == coordinates.shape
    # Past the last cell inside the image the logits lean towards the padding's cell.
    last_y, last_x = 16 * ((height - 1) // 16), 16 * ((width - 1) // 16)
    torch.testing.assert_close(
        logits[..., : last_y + 1, : last_x + 1] * 1000, coordinates[..., : last_y + 1, : last_x + 1] * 1000, atol=1e-2, rtol=0
    )


# --- segmentation: the data and evaluation paths ---------------------------------------------
def test_training_crops_keep_colour_and_class_together() -> None:
    """Random scale, mean-colour / 255 padding, random crop, flip, with many random parameters."""
    rng = np.random.default_rng(0)
    transform = deeplab_train_transform(161)
    transform.set_random_seed(0)
    for _ in range(40):
        image, mask = banded_scene(rng, *(int(v) for v in rng.integers(120, 300, size=2)))
        out = transform(image=image, mask=mask)
        img, out_mask = out["image"], out["mask"]
        inside = interior(out_mask, 2)
        assert inside.sum() > 1000
        np.testing.assert_array_equal(colour_classes(img)[inside], out_mask[inside])


def test_every_evaluation_scale_and_flip_keeps_predictions_on_their_pixels() -> None:
    """The paper's MF protocol (six scales, mirrored) with a model that is exact on every pixel
    (the nearest colour's class): the resizes there and back keep predictions in place."""
    rng = np.random.default_rng(1)
    image, mask = banded_scene(rng, 333, 410)
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    colours = torch.tensor(COLOURS, dtype=torch.float32)[None, :, :, None, None] / 255

    def per_pixel(batch: torch.Tensor) -> torch.Tensor:
        nearest = ((batch[:, None] - colours) ** 2).sum(2).argmin(1)  # N x H x W
        return nn.functional.one_hot(nearest, len(COLOURS)).permute(0, 3, 1, 2).float() * 10

    for scales in [[s] for s in PAPER_EVAL_SCALES] + [list(PAPER_EVAL_SCALES)]:
        labels = multi_scale_flip_probabilities(per_pixel, images, scales=scales, flip=True)[0].argmax(0).numpy()
        far = interior(mask, int(np.ceil(2 / min(scales))) + 1)  # resizing blurs a boundary by about a pixel
        assert (labels[far] == mask[far]).all(), scales
        assert best_shift(labels, mask) == (0, 0), scales


# --- detection -------------------------------------------------------------------------------
def object_extent(image: np.ndarray, colour: np.ndarray, box: np.ndarray) -> tuple[float, float, float, float]:
    """Sub-pixel ``(x0, y0, x1, y1)`` of a solid ``colour`` rectangle on the background around
    ``box``: the coverage of each pixel (its colour's mix between background and ``colour``), summed along the rows
    and columns that cross the rectangle's middle, placed at the coverage-weighted centre."""
    x0, y0, x1, y1 = box
    direction = (colour - BACKGROUND).astype(float)
    coverage = np.clip(((image.astype(float) - BACKGROUND) @ direction) / (direction @ direction), 0, 1)
    mid_y, mid_x = int((y0 + y1) / 2), int((x0 + x1) / 2)
    extents = []
    for profile in (coverage[mid_y], coverage[:, mid_x]):
        centres = np.arange(len(profile)) + 0.5
        near = np.abs(centres - (centres * profile).sum() / profile.sum()) < profile.sum() / 2 + 3
        width = profile[near].sum()
        centre = (centres * profile)[near].sum() / width
        extents.append((centre - width / 2, centre + width / 2))
    (ex0, ex1), (ey0, ey1) = extents
    return ex0, ey0, ex1, ey1


def gray_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 240 x 300 image of the background colour with four solid rectangles at sub-pixel positions (anti-aliased
    by drawing at 8x and area-averaging)."""
    boxes = np.array([[10.25, 20.5, 90.75, 100.0], [120.5, 30.25, 200.0, 90.75], [40.0, 140.5, 150.25, 220.0],
                      [220.75, 120.0, 290.5, 230.25]], np.float32)  # fmt: skip
    big = np.empty((240 * 8, 300 * 8, 3), np.uint8)
    big[:] = BACKGROUND
    for colour, (x0, y0, x1, y1) in zip(COLOURS[1:], (boxes * 8).astype(int)):
        big[y0:y1, x0:x1] = colour
    return cv2.resize(big, (300, 240), interpolation=cv2.INTER_AREA), boxes, np.arange(4, dtype=np.int64)


BBOX_PARAMS = A.BboxParams(format="pascal_voc", label_fields=["labels", "iscrowd"], clip=True)


@pytest.mark.parametrize(
    "transform",
    [
        A.Compose([ZoomOut(max_ratio=2.5, p=1.0)], bbox_params=BBOX_PARAMS),
        A.Compose([MinIoURandomCrop()], bbox_params=BBOX_PARAMS),
        A.Compose([A.HorizontalFlip(p=1.0)], bbox_params=BBOX_PARAMS),
        A.Compose([A.Resize(320, 320, interpolation=cv2.INTER_LINEAR)], bbox_params=BBOX_PARAMS),
        ssd_train_transform(320, photometric=False),
    ],
    ids=["zoom_out", "min_iou_crop", "flip", "resize", "ssd_train"],
)
def test_ssd_boxes_follow_their_objects_to_sub_pixel_precision(transform: A.Compose) -> None:
    image, boxes, labels = gray_scene()
    transform.set_random_seed(0)
    checked = 0
    for _ in range(25):
        out = transform(image=image, bboxes=boxes, labels=labels, iscrowd=np.zeros(4, np.uint8))
        for box, label in zip(np.asarray(out["bboxes"]), out["labels"]):
            x0, y0, x1, y1 = box
            whole = x0 > 1 and y0 > 1 and x1 < out["image"].shape[1] - 1 and y1 < out["image"].shape[0] - 1
            if not whole or min(x1 - x0, y1 - y0) < 12:  # cut by a crop or the image edge: no extent to compare
                continue
            np.testing.assert_allclose(object_extent(out["image"], COLOURS[1 + label], box), box, atol=0.5)
            checked += 1
    assert checked >= 25


def test_boxes_map_back_to_the_original_image() -> None:
    """Evaluation resizes to the model's square input; detections found there go back to the
    original pixels with ``rescale_boxes``, onto the objects."""
    image, boxes, labels = gray_scene()
    out = ssd_eval_transform(320)(image=image, bboxes=boxes, labels=labels, iscrowd=np.zeros(4, np.uint8))
    for resized_box, original, label in zip(np.asarray(out["bboxes"]), boxes, labels):
        seen = np.asarray(object_extent(out["image"], COLOURS[1 + label], resized_box))  # what a perfect detector finds
        back = rescale_boxes(torch.from_numpy(seen)[None], (320, 320), image.shape[:2])[0].numpy()
        np.testing.assert_allclose(back, original, atol=0.5)
        np.testing.assert_allclose(object_extent(image, COLOURS[1 + label], original), original, atol=0.25)
