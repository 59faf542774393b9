"""The paper's augmentations as albumentations pipelines.

SSD (training): zoom-out onto a mean-colour canvas, the SSD min-IoU random crop, horizontal
flip, resize to the model size, photometric distortion. Albumentations 2.0.8 has neither the
zoom-out nor the min-IoU crop, so both are written here as albumentations transforms
(``ZoomOut``, ``MinIoURandomCrop``) and compose with its own. Evaluation: resize only.

DeepLab (training): random scale in {0.5, 0.75, ..., 2.0}, pad to the crop size (mean colour
on the image, 255 on the mask), random crop, flip. Evaluation runs on whole images, padded
by the collate function.

Joint detection + segmentation: the SSD pipelines carry an ``H x W`` uint8 class-index mask
through the same call (``ssd_train_transform``; evaluation: ``ssd_eval_transform``): the
zoom-out canvas is 255 (ignore) on the mask, crops and flips cut and mirror it as the image,
and the resize picks each mask pixel by the same half-pixel centres bilinear samples the image
at (``MASK_INTERPOLATION``), so boxes, image and mask stay on the same pixels.

Pipelines take and give ``H x W x 3`` uint8 RGB; boxes are ``pascal_voc`` (xyxy pixels) with
``labels`` and ``iscrowd`` fields. Nothing normalises here: the models do it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops import functional as fcrops
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.bbox_utils import denormalize_bboxes
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.core.type_definitions import Targets
from pydantic import Field

from core.constants import IGNORE_INDEX, mean_fill

DEEPLAB_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
# SSD sampling options: None = the whole image, else the minimum IoU a crop must reach with
# some object (0.0 = any patch), as in the SSD paper.
SSD_CROP_MIN_IOUS = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
# Mask resizing: the source pixel whose centre is nearest, by the half-pixel centres that
# bilinear image resizing uses (cv2's INTER_NEAREST floors x * src / dst instead, which drifts
# up to half a source pixel from the image).
MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT


class ZoomOut(A.Pad):
    """SSD "expand": place the image at a random spot of a canvas ``ratio`` times larger.

    ``ratio`` is uniform in ``[1, max_ratio]``; the canvas is filled with ``fill`` (mask:
    ``fill_mask``). Objects become smaller, which teaches the small-object anchors.
    """

    class InitSchema(BaseTransformInitSchema):
        max_ratio: float = Field(ge=1)
        fill: tuple[float, ...] | float
        fill_mask: float

    def __init__(
        self,
        max_ratio: float = 4.0,
        fill: tuple[float, ...] | float = mean_fill(),
        fill_mask: float = IGNORE_INDEX,
        p: float = 0.5,
    ) -> None:
        super().__init__(padding=0, fill=fill, fill_mask=fill_mask, border_mode=cv2.BORDER_CONSTANT, p=p)
        self.max_ratio = max_ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(1.0, self.max_ratio)
        canvas_h, canvas_w = int(height * ratio), int(width * ratio)
        top = self.py_random.randint(0, canvas_h - height)
        left = self.py_random.randint(0, canvas_w - width)
        return {
            "pad_top": top,
            "pad_bottom": canvas_h - height - top,
            "pad_left": left,
            "pad_right": canvas_w - width - left,
        }

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_ratio", "fill", "fill_mask")


class MinIoURandomCrop(BaseCrop):
    """The SSD random crop (Liu et al. 2016, §2.2 "Data augmentation").

    Each call picks one option of ``min_ious``: ``None`` keeps the whole image; a number ``t``
    samples patches (sides in ``[min_scale, 1]`` of the image's, aspect ratio within
    ``[1/max_aspect_ratio, max_aspect_ratio]``) until one holds the centre of some object and
    reaches IoU ``>= t`` with one of those objects. Objects whose centre falls outside the
    patch are dropped; the others are clipped to it. After ``max_trials`` failed patches
    another option is drawn; after ``max_attempts`` options the whole image is kept.
    """

    class InitSchema(BaseTransformInitSchema):
        min_ious: Sequence[float | None]
        min_scale: float = Field(gt=0, le=1)
        max_aspect_ratio: float = Field(ge=1)
        max_trials: int = Field(ge=1)
        max_attempts: int = Field(ge=1)

    def __init__(
        self,
        min_ious: Sequence[float | None] = SSD_CROP_MIN_IOUS,
        min_scale: float = 0.3,
        max_aspect_ratio: float = 2.0,
        max_trials: int = 50,
        max_attempts: int = 20,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.min_ious = tuple(min_ious)
        self.min_scale = min_scale
        self.max_aspect_ratio = max_aspect_ratio
        self.max_trials = max_trials
        self.max_attempts = max_attempts

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = (0, 0, width, height)
        bboxes = data.get("bboxes")
        boxes = (
            denormalize_bboxes(np.asarray(bboxes)[:, :4], (height, width))
            if bboxes is not None and len(bboxes)
            else np.zeros((0, 4))
        )
        for _ in range(self.max_attempts):
            min_iou = self.py_random.choice(self.min_ious)
            if min_iou is None:
                return {"crop_coords": whole}
            crop = self._sample(height, width, boxes, min_iou)
            if crop is not None:
                return {"crop_coords": crop}
        return {"crop_coords": whole}

    def _sample(self, height: int, width: int, boxes: np.ndarray, min_iou: float) -> tuple[int, int, int, int] | None:
        for _ in range(self.max_trials):
            crop_w = self.py_random.uniform(self.min_scale, 1.0) * width
            crop_h = self.py_random.uniform(self.min_scale, 1.0) * height
            if not 1 / self.max_aspect_ratio <= crop_w / crop_h <= self.max_aspect_ratio:
                continue
            left = self.py_random.uniform(0, width - crop_w)
            top = self.py_random.uniform(0, height - crop_h)
            crop = (int(left), int(top), int(left + crop_w), int(top + crop_h))
            if crop[2] - crop[0] < 1 or crop[3] - crop[1] < 1:
                continue
            if len(boxes) == 0:
                return crop
            inside = _centres_inside(boxes, crop)
            if inside.any() and _iou_with_crop(boxes[inside], crop).max() >= min_iou:
                return crop
        return None

    def apply_to_bboxes(
        self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any
    ) -> np.ndarray:
        if len(bboxes):
            boxes = denormalize_bboxes(bboxes[:, :4], params["shape"][:2])
            bboxes = bboxes[_centres_inside(boxes, crop_coords)]
        return fcrops.crop_bboxes_by_coords(bboxes, crop_coords, params["shape"][:2])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "min_scale", "max_aspect_ratio", "max_trials", "max_attempts")


def _centres_inside(boxes: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx > crop[0]) & (cx < crop[2]) & (cy > crop[1]) & (cy < crop[3])


def _iou_with_crop(boxes: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    ix = np.clip(np.minimum(boxes[:, 2], crop[2]) - np.maximum(boxes[:, 0], crop[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], crop[3]) - np.maximum(boxes[:, 1], crop[1]), 0, None)
    inter = ix * iy
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    crop_area = (crop[2] - crop[0]) * (crop[3] - crop[1])
    return inter / (box_area + crop_area - inter)


class RandomStepScale(A.RandomScale):
    """Rescale by a factor drawn from a fixed list (DeepLab: 0.5 to 2.0 in steps of 0.25).

    With ``crop_size`` (a random crop of that size follows), a side that the scale makes
    longer than the crop is first cut to a random window of ``ceil(crop_size / scale) + 1``
    source pixels: just enough to cover the crop once scaled, so enlarging does not compute
    pixels the crop would throw away. The window's position is uniform, so the crop that
    follows is still uniform over the whole image.
    """

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES)

    class InitSchema(BaseTransformInitSchema):
        scales: Sequence[float] = Field(min_length=1)
        crop_size: int | None = Field(default=None, ge=1)

    def __init__(self, scales: Sequence[float] = DEEPLAB_SCALES, crop_size: int | None = None, p: float = 1.0) -> None:
        super().__init__(scale_limit=0.0, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, p=p)
        self.scales = tuple(scales)
        self.crop_size = crop_size

    def get_params(self) -> dict[str, Any]:
        return {}

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        scale = self.py_random.choice(self.scales)
        x0, x1 = self._window(width, scale)
        y0, y1 = self._window(height, scale)
        return {"scale": scale, "window": (x0, y0, x1, y1)}

    def _window(self, length: int, scale: float) -> tuple[int, int]:
        if self.crop_size is None or int(length * scale) <= self.crop_size:
            return 0, length
        size = min(length, math.ceil(self.crop_size / scale) + 1)
        start = self.py_random.randint(0, length - size)
        return start, start + size

    def apply(self, img: np.ndarray, scale: float, window: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        x0, y0, x1, y1 = window
        return super().apply(img[y0:y1, x0:x1], scale)

    def apply_to_mask(self, mask: np.ndarray, scale: float, window: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        x0, y0, x1, y1 = window
        return super().apply_to_mask(mask[y0:y1, x0:x1], scale)

    def apply_to_bboxes(self, bboxes: np.ndarray, window: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        # Normalised boxes do not change with the scale; only the window moves them.
        return fcrops.crop_bboxes_by_coords(bboxes, window, params["shape"][:2])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scales", "crop_size")


def photometric_distortion(p: float = 0.5) -> A.ColorJitter:
    """SSD photometric distortion with torchvision's ``RandomPhotometricDistort`` ranges."""
    return A.ColorJitter(brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.05, 0.05), p=p)


def _bbox_params(min_side: float) -> A.BboxParams:
    # Boxes are clipped to the image and, after every step, dropped once thinner than
    # ``min_side`` pixels, so no target leaves the pipeline outside the image or with no area.
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels", "iscrowd"],
        clip=True,
        filter_invalid_bboxes=True,
        min_width=min_side,
        min_height=min_side,
    )


def ssd_train_transform(
    image_size: int = 320,
    *,
    zoom_out: bool = True,
    max_zoom_out: float = 4.0,
    min_iou_crop: bool = True,
    horizontal_flip: bool = True,
    photometric: bool = True,
    fill: tuple[int, int, int] = mean_fill(),
) -> A.Compose:
    """SSD training: [zoom-out] -> [min-IoU crop] -> [flip] -> resize -> [photometric].

    ``fill``: the zoom-out canvas colour, the model's normalisation mean (``core.constants.mean_fill``).

    Also the joint detection + segmentation training pipeline: called with a ``mask`` (``H x W``
    uint8 class indices) beside ``image``, ``bboxes``, ``labels`` and ``iscrowd``, the mask
    follows the image step by step: 255 (ignore) on the zoom-out canvas, cut by the min-IoU crop
    and mirrored by the flip as the image, resized by ``MASK_INTERPOLATION``. The crop drops boxes
    whose centre leaves it while their objects' mask pixels stay: the mask keeps labelling what
    the image shows.

    The photometric distortion acts per pixel, so it runs last, on the small resized image,
    where it costs a fraction of what it would on the zoomed-out canvas.
    """
    steps: list[A.BasicTransform] = []
    if zoom_out:
        steps.append(ZoomOut(max_ratio=max_zoom_out, fill=fill, p=0.5))
    if min_iou_crop:
        steps.append(MinIoURandomCrop())
    if horizontal_flip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps.append(A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=MASK_INTERPOLATION))
    if photometric:
        steps.append(photometric_distortion())
    return A.Compose(steps, bbox_params=_bbox_params(min_side=1.0))


def ssd_eval_transform(image_size: int = 320) -> A.Compose:
    """SSD evaluation: resize to ``image_size`` squared (boxes follow; none is dropped; a
    ``mask`` follows by ``MASK_INTERPOLATION``)."""
    return A.Compose(
        [A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=MASK_INTERPOLATION)],
        bbox_params=_bbox_params(min_side=0.0),
    )


def deeplab_train_transform(
    crop_size: int = 513,
    *,
    scales: Sequence[float] | None = None,
    horizontal_flip: bool = True,
    fill: tuple[int, int, int] = mean_fill(),
) -> A.Compose:
    """DeepLab training: random step scale -> pad to ``crop_size`` (``fill`` / 255) -> random crop -> flip.

    ``scales`` defaults to ``DEEPLAB_SCALES`` (0.5 to 2.0 in steps of 0.25); ``[1.0]`` turns scaling off.
    """
    scales = DEEPLAB_SCALES if scales is None else tuple(scales)
    steps: list[A.BasicTransform] = []
    if scales != (1.0,):
        steps.append(RandomStepScale(scales, crop_size=crop_size))
    # RandomCrop pads (bottom/right) only when the scaled image is smaller than the crop:
    # the same result as PadIfNeeded + RandomCrop at half the cost.
    steps.append(
        A.RandomCrop(
            crop_size,
            crop_size,
            pad_if_needed=True,
            pad_position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=fill,
            fill_mask=IGNORE_INDEX,
        )
    )
    if horizontal_flip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps)
