"""Prediction over a folder (or one file) of arbitrary images.

Any size, JPEG/PNG/..., grayscale, RGBA, 16-bit and CMYK are converted to RGB and the EXIF
orientation is applied (see ``io.load_image``). Files that are not images are reported with
a logged error when the folder is listed and left out; a file that fails to decode later is
skipped the same way. Items are ``(uint8 3 x h x w, meta)`` with ``meta`` = ``path``,
``orig_size`` ``[h, w]`` of the (upright) original and ``size`` ``[h, w]`` of the valid,
unpadded network input.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import torch
from torch.utils.data import Dataset

from .io import is_image_file, read_image
from .problems import DataProblem

log = logging.getLogger(__name__)


def list_image_files(path: str | Path) -> tuple[list[Path], list[Path]]:
    """``(images, rejected)``: the files under ``path`` (recursive, sorted, hidden ones
    skipped) that Pillow recognises as images, and those it does not (each logged)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"predict path {root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root.parent).parts)]
    images, rejected = [], []
    for file in files:
        (images if is_image_file(file) else rejected).append(file)
    for file in rejected:
        log.error("%s: not an image Pillow can read; left out of prediction", file)
    if rejected:
        log.error("%d of %d files under %s are not images and were left out", len(rejected), len(files), root)
    return images, rejected


class ImageFolderPredictDataset(Dataset):
    """Images to predict on.

    ``resize_to`` set (detection): every image is resized to ``resize_to`` x ``resize_to``.
    Otherwise (segmentation) the image keeps its aspect ratio and is shrunk only when its
    longer side exceeds ``max_size``; the collate function pads the batch.
    """

    def __init__(self, path: str | Path, *, resize_to: int | None = None, max_size: int | None = None) -> None:
        self.files, self.rejected = list_image_files(path)
        self.resize_to = resize_to
        self.max_size = max_size
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        path = self.files[index]
        try:
            image = read_image(path)
        except DataProblem as problem:
            self.skipped += 1
            log.error("skipping %s [%s]", problem, problem.kind)
            return None
        orig_h, orig_w = image.shape[:2]
        if self.resize_to is not None:
            image = cv2.resize(image, (self.resize_to, self.resize_to), interpolation=cv2.INTER_LINEAR)
        elif self.max_size is not None and max(orig_h, orig_w) > self.max_size:
            scale = self.max_size / max(orig_h, orig_w)
            size = (max(1, round(orig_w * scale)), max(1, round(orig_h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        meta = {"path": str(path), "orig_size": [orig_h, orig_w], "size": list(image.shape[:2])}
        return torch.from_numpy(image).permute(2, 0, 1), meta
