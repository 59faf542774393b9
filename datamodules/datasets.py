"""Datasets shared by every layout: parsed records in, augmented tensors out.

The COCO and VOC readers turn their annotation files into ``DetectionRecord`` /
``SegmentationItem`` lists; the datasets here decode the files, run an albumentations
pipeline and return tensors. A sample whose files turn out to be bad (``DataProblem``) is
logged and returned as ``None``, which the collate functions drop: one bad file costs one
sample, never the epoch. With ``strict=True`` the problem is raised instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from .io import LoadedImage, load_image, read_index_mask
from .problems import DataProblem
from .transforms import IGNORE_INDEX

log = logging.getLogger(__name__)


@dataclass
class DetectionRecord:
    """One annotated image: boxes ``K x 4`` float32 xyxy in original pixels (continuous
    coordinates: a box covering pixel columns 0..9 is ``[0, 10]``), ``labels`` int64 ``K``
    (0..C-1), ``iscrowd`` uint8 ``K`` (COCO crowd or VOC difficult), annotated ``size`` (h, w)."""

    image_path: Path
    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    size: tuple[int, int] | None = None


MaskSource = Path | Callable[[], np.ndarray]


@dataclass
class SegmentationItem:
    """One image and where its ``H x W`` class-index mask comes from (a PNG or ``.mat`` file,
    or a callable building it, e.g. from COCO polygons)."""

    image_path: Path
    mask: MaskSource


def read_mask(source: MaskSource) -> np.ndarray:
    """``H x W`` uint8 class indices from a palette/grayscale PNG, an SBD ``.mat`` or a callable."""
    if callable(source):
        return source()
    if Path(source).suffix == ".mat":
        from .sbd import read_sbd_mask

        return read_sbd_mask(source)
    return read_index_mask(source)


class _SkippingDataset(Dataset):
    """Base: ``__getitem__`` turns a ``DataProblem`` into a logged, counted skip (``None``)."""

    def __init__(self, transform: A.Compose | None, strict: bool) -> None:
        self.transform = transform
        self.strict = strict
        self.skipped = 0

    def reseed(self, seed: int) -> None:
        """Give the augmentation its own random stream (called in each DataLoader worker)."""
        if self.transform is not None:
            self.transform.set_random_seed(seed)

    def _skip(self, problem: DataProblem) -> None:
        if self.strict:
            raise problem
        self.skipped += 1
        log.warning("skipping %s [%s] (%d skipped by this process)", problem, problem.kind, self.skipped)
        return None


class DetectionDataset(_SkippingDataset):
    """Items ``(image uint8 3 x H x W, target)`` with the contract's target dict.

    ``include_crowd=False`` (training) removes crowd / difficult boxes from the targets;
    evaluation keeps them with ``iscrowd=1`` so the metric can ignore them.
    """

    def __init__(
        self,
        records: list[DetectionRecord],
        transform: A.Compose,
        *,
        include_crowd: bool,
        strict: bool = False,
    ) -> None:
        super().__init__(transform, strict)
        self.records = records
        self.include_crowd = include_crowd

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        return self.records[index].image_path

    def load(self, index: int) -> LoadedImage:
        """The decoded image of record ``index``, checked against its annotated size; raises ``DataProblem``."""
        record = self.records[index]
        loaded = load_image(record.image_path)
        height, width = loaded.array.shape[:2]
        if record.size is not None and (height, width) != tuple(record.size):
            raise DataProblem(
                "size_mismatch",
                record.image_path,
                f"image is {height}x{width} but its annotation says {record.size[0]}x{record.size[1]} (h x w)",
            )
        return loaded

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        record = self.records[index]
        try:
            image = self.load(index).array
        except DataProblem as problem:
            return self._skip(problem)
        keep = np.ones(len(record.labels), bool) if self.include_crowd else record.iscrowd == 0
        out = self.transform(
            image=image, bboxes=record.boxes[keep], labels=record.labels[keep], iscrowd=record.iscrowd[keep]
        )
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64)),
            "iscrowd": torch.as_tensor(np.asarray(out["iscrowd"], dtype=np.uint8)),
            "image_id": torch.tensor(record.image_id, dtype=torch.int64),
            "orig_size": torch.tensor(image.shape[:2], dtype=torch.int64),
        }
        return torch.from_numpy(out["image"]).permute(2, 0, 1), target


class SegmentationDataset(_SkippingDataset):
    """Items ``(image uint8 3 x H x W, mask uint8 H x W)``; 255 = ignore (the collate
    function gives the batch's int64 masks, widening while it pads).

    Masks must match their image's size and hold only ``0..num_classes-1`` or
    ``mask_ignore_index`` (the files' "ignore" value, turned into 255); anything else is a
    ``DataProblem`` (skipped, or raised when strict). ``transform=None`` (evaluation)
    returns the whole image; the collate function pads.
    """

    def __init__(
        self,
        items: list[SegmentationItem],
        transform: A.Compose | None,
        *,
        num_classes: int,
        mask_ignore_index: int = IGNORE_INDEX,
        strict: bool = False,
    ) -> None:
        super().__init__(transform, strict)
        self.items = items
        self.num_classes = num_classes
        self.mask_ignore_index = mask_ignore_index

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, index: int) -> Path:
        return self.items[index].image_path

    def load(self, index: int) -> tuple[LoadedImage, np.ndarray]:
        """Decoded and validated ``(image, H x W uint8 mask)``; raises ``DataProblem``."""
        item = self.items[index]
        loaded = load_image(item.image_path)
        image = loaded.array
        mask = read_mask(item.mask)
        where = item.mask if isinstance(item.mask, Path) else item.image_path
        if mask.shape != image.shape[:2]:
            raise DataProblem(
                "mask_size_mismatch",
                where,
                f"mask is {mask.shape[0]}x{mask.shape[1]} but image {item.image_path.name} is "
                f"{image.shape[0]}x{image.shape[1]}",
            )
        bad = (mask >= self.num_classes) & (mask != self.mask_ignore_index)
        if bad.any():
            values = np.unique(mask[bad]).tolist()
            raise DataProblem(
                "mask_bad_values",
                where,
                f"mask holds values {values[:10]} outside the classes 0..{self.num_classes - 1} and {self.mask_ignore_index}",
            )
        if self.mask_ignore_index != IGNORE_INDEX:
            mask = np.where(mask == self.mask_ignore_index, IGNORE_INDEX, mask).astype(np.uint8)
        return loaded, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            loaded, mask = self.load(index)
        except DataProblem as problem:
            return self._skip(problem)
        image = loaded.array
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), torch.from_numpy(np.ascontiguousarray(mask))
