"""Prediction over a folder (or one file) of arbitrary images.

Any size, JPEG/PNG/..., grayscale, RGBA, 16-bit and CMYK are converted to RGB and the EXIF
orientation is applied (see ``image_io.load_image``). Files that are not images are left out
when the folder is listed and counted in ``report`` (``not_an_image``); a file that fails to
decode later is skipped like a bad training sample, so both reach the run's summary.

Items are ``(uint8 3 x h x w network input, meta)``; ``meta`` holds ``path``, ``image_id``
(from ``image_ids``, else the numeric file name, else None), ``orig_size`` ``[h, w]`` of the
upright original, ``size`` ``[h, w]`` of the valid, unpadded network input, and ``image``,
the decoded original (uint8 ``3 x orig_h x orig_w``) to draw the predictions on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from .datasets import _SkippingDataset
from .image_io import LoadedImage, is_image_file, load_image
from .problems import DataProblem, ProblemReport

log = logging.getLogger(__name__)


def list_image_files(path: str | Path) -> tuple[list[Path], ProblemReport]:
    """The files under ``path`` (recursive, sorted, hidden ones skipped) that Pillow recognises
    as images, and a report naming those it does not (``not_an_image``)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"predict path {root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root.parent).parts)]
    report = ProblemReport(f"predict ({root})")
    images = []
    for file in files:
        if is_image_file(file):
            images.append(file)
        else:
            report.add(DataProblem("not_an_image", file, "not an image Pillow can read; left out of prediction"))
    return images, report


def coco_image_ids(annotation_file: str | Path) -> dict[str, int] | None:
    """The ``file_name`` -> ``id`` table of a COCO annotation json; None (with a warning) when the
    file does not exist: ids then come from numeric file names, and whatever needs an id that
    is missing (a COCO results file) says so."""
    path = Path(annotation_file)
    if not path.is_file():
        log.warning("image_ids_from: %s does not exist; predicted images get ids from numeric file names only", path)
        return None
    return {image["file_name"]: int(image["id"]) for image in json.loads(path.read_text())["images"]}


def predict_input(
    image: np.ndarray, *, resize_to: int | None = None, max_size: int | None = None
) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """The network input (uint8 ``3 x h x w``) of an ``H x W x 3`` uint8 RGB image and its sizes:
    ``orig_size`` ``[H, W]`` and ``size`` ``[h, w]`` (the valid input, before any batch padding).

    ``resize_to`` set (detection): resized to ``resize_to`` x ``resize_to``. Otherwise
    (segmentation) the aspect ratio is kept and the image is shrunk only when its longer side
    exceeds ``max_size``. Shared by ``ImageFolderPredictDataset`` and ``engine.predictor``.
    """
    orig_h, orig_w = image.shape[:2]
    resized = image
    if resize_to is not None:
        resized = cv2.resize(image, (resize_to, resize_to), interpolation=cv2.INTER_LINEAR)
    elif max_size is not None and max(orig_h, orig_w) > max_size:
        scale = max_size / max(orig_h, orig_w)
        size = (max(1, round(orig_w * scale)), max(1, round(orig_h * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    sizes = {"orig_size": [orig_h, orig_w], "size": list(resized.shape[:2])}
    return torch.from_numpy(resized).permute(2, 0, 1), sizes


class ImageFolderPredictDataset(_SkippingDataset):
    """Images to predict on.

    ``resize_to`` set (detection): every image is resized to ``resize_to`` x ``resize_to``.
    Otherwise (segmentation) the image keeps its aspect ratio and is shrunk only when its
    longer side exceeds ``max_size``; the collate function pads the batch. ``image_ids``:
    file name -> image id (e.g. ``coco_image_ids`` of an annotation file).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        resize_to: int | None = None,
        max_size: int | None = None,
        image_ids: Mapping[str, int] | None = None,
    ) -> None:
        files, self.report = list_image_files(path)
        super().__init__(files, transform=None, strict=False)
        self.report.checked = len(files)
        self.resize_to = resize_to
        self.max_size = max_size
        self.image_ids = image_ids

    def image_path(self, index: int) -> Path:
        return self.items[index]

    def load(self, index: int) -> LoadedImage:
        return load_image(self.items[index])

    def image_id(self, path: Path) -> int | None:
        if self.image_ids is not None:
            return self.image_ids.get(path.name)
        return int(path.stem) if path.stem.isdigit() else None

    def _transformed(self, index: int, loaded: LoadedImage) -> tuple[torch.Tensor, dict[str, Any]]:
        path, original = self.items[index], loaded.array
        image, sizes = predict_input(original, resize_to=self.resize_to, max_size=self.max_size)
        meta = {
            "path": str(path),
            "image_id": self.image_id(path),
            **sizes,
            "image": torch.from_numpy(original).permute(2, 0, 1),
        }
        return image, meta
