"""Datasets shared by every layout: parsed records in, augmented tensors out.

The COCO and VOC readers turn their annotation files into ``DetectionRecord`` /
``SegmentationItem`` lists; the datasets here decode the files, run an albumentations
pipeline and return tensors. A sample whose files turn out to be bad (``DataProblem``) is
skipped: ``dataset.fetch(i)`` returns it as ``Fetched(None, problem, [])``, which the loaders
(``datamodules.loaders``) log once and count, and ``dataset[i]`` is ``None``, which the
collate functions drop: one bad file costs one sample, never the epoch. With
``strict=True`` the problem is raised instead.

``fetch(i, seed)`` augments sample ``i`` from a random stream seeded with ``seed``: the
training sampler derives it from (run seed, epoch, index), so an epoch's samples do not depend
on the number of workers or on where a resumed run starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from core.constants import IGNORE_INDEX

from .decoded_cache import DecodedCache
from .image_io import LoadedImage, load_image, read_index_mask
from .problems import DataProblem


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


# Boxes past the image edge by at most this many pixels are rounding, clipped without a report.
ROUNDING_PX = 1.0


def clip_box(box: list[float], width: float, height: float) -> tuple[list[float], float]:
    """``box`` (xyxy pixels) clipped to a ``width`` x ``height`` image, and the largest
    distance, in pixels, that one of its coordinates moved."""
    clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
               min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]  # fmt: skip
    return clipped, max(abs(a - b) for a, b in zip(box, clipped))


def has_training_target(record: DetectionRecord, keep_crowd: bool = False) -> bool:
    """Whether ``record`` holds a training target: a non-crowd box (any box with ``keep_crowd``)."""
    return bool((record.iscrowd == 0).any() or (keep_crowd and len(record.labels)))


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


def load_checked_mask(
    source: MaskSource, image_path: Path, image_shape: tuple[int, int], num_classes: int, mask_ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """The ``H x W`` uint8 mask of ``source`` for the image ``image_path`` of ``image_shape``
    (h, w), its ``mask_ignore_index`` turned into 255.

    Raises ``DataProblem`` (naming the mask file, or the image when the mask is built) when the
    mask cannot be read, differs in size from the image, or holds values other than
    ``0..num_classes-1`` and ``mask_ignore_index``.
    """
    mask = read_mask(source)
    where = source if isinstance(source, Path) else image_path
    if mask.shape != tuple(image_shape):
        raise DataProblem(
            "mask_size_mismatch",
            where,
            f"mask is {mask.shape[0]}x{mask.shape[1]} but image {image_path.name} is {image_shape[0]}x{image_shape[1]}",
        )
    bad = (mask >= num_classes) & (mask != mask_ignore_index)
    if bad.any():
        values = np.unique(mask[bad]).tolist()
        raise DataProblem(
            "mask_bad_values",
            where,
            f"mask holds values {values[:10]} outside the classes 0..{num_classes - 1} and {mask_ignore_index}",
        )
    if mask_ignore_index != IGNORE_INDEX:
        mask = np.where(mask == mask_ignore_index, IGNORE_INDEX, mask).astype(np.uint8)
    return mask


class SampleKey(NamedTuple):
    """A training sampler's item: the dataset index and the seed of that sample's augmentation."""

    index: int
    seed: int


class Fetched(NamedTuple):
    """A sample as the loaders get it: the sample (None when skipped), the problem that skipped
    it, and the conversions its image went through, as ``(kind, image path)``."""

    sample: Any
    problem: DataProblem | None
    notes: list[tuple[str, str]]


def decoded_image(loaded: LoadedImage | tuple[LoadedImage, np.ndarray]) -> LoadedImage:
    """The image of what a dataset's ``load`` returns (an image, or an image and its mask)."""
    return loaded[0] if isinstance(loaded, tuple) else loaded


class _SkippingDataset(Dataset):
    """Base: ``fetch`` turns a ``DataProblem`` into a skip that names it; ``dataset[i]`` is the
    sample, or None when skipped. ``items`` are the samples' descriptions (each with an
    ``image_path``); subclasses give ``load`` and ``_transformed``."""

    def __init__(
        self, items: list[Any], transform: A.Compose | None, strict: bool, cache: DecodedCache | None = None
    ) -> None:
        self.items = items
        self.transform = transform
        self.strict = strict
        self.cache = cache

    def load(self, index: int) -> LoadedImage | tuple[LoadedImage, np.ndarray]:
        """The decoded, checked files of sample ``index``; raises ``DataProblem``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, index: int) -> Path:
        return self.items[index].image_path

    def cache_sources(self, index: int) -> list[Path | str] | None:
        """What ``load(index)`` depends on, for ``DecodedCache``; None: not cacheable."""
        return None

    def _load(self, index: int) -> LoadedImage | tuple[LoadedImage, np.ndarray]:
        """``load(index)``, through the decoded cache when there is one."""
        sources = self.cache_sources(index) if self.cache is not None else None
        if sources is None:
            return self.load(index)
        return self.cache.get(sources, lambda: self.load(index))

    def _transformed(self, index: int, loaded: Any) -> Any:
        """The sample's tensors from its decoded files, through the augmentation."""
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Draw the augmentation from a fresh stream seeded with ``seed``: one numpy and one
        Python generator shared by every transform of the pipeline (albumentations'
        ``set_random_seed`` would give each transform the same draws)."""
        if self.transform is not None:
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def fetch(self, index: int, seed: int | None = None) -> Fetched:
        """Sample ``index``, augmented from the stream ``seed`` (None: the current stream), or
        the problem that skips it (raised when ``strict``)."""
        try:
            loaded = self._load(index)
        except DataProblem as problem:
            if self.strict:
                raise
            return Fetched(None, problem, [])
        if seed is not None:
            self.reseed(seed)
        path = str(self.image_path(index))
        return Fetched(self._transformed(index, loaded), None, [(kind, path) for kind in decoded_image(loaded).conversions])

    def __getitem__(self, index: int) -> Any:
        return self.fetch(index).sample


class DetectionDataset(_SkippingDataset):
    """Items ``(image uint8 3 x H x W, target)`` with the contract's target dict: ``boxes``
    ``K x 4`` xyxy in the transformed image's pixels, ``labels``, ``iscrowd``, ``image_id``,
    ``orig_size`` ``[h, w]``; with ``original_boxes`` (evaluation, whose resize drops no box)
    also ``orig_boxes``, the annotated boxes in the original image's pixels, in the order of
    ``labels``: what the metric compares detections with.

    ``include_crowd=False`` (training) removes crowd / difficult boxes from the targets;
    evaluation keeps them with ``iscrowd=1`` so the metric can ignore them.
    """

    def __init__(
        self,
        records: list[DetectionRecord],
        transform: A.Compose,
        *,
        include_crowd: bool,
        original_boxes: bool = False,
        strict: bool = False,
    ) -> None:
        super().__init__(records, transform, strict)
        self.original_boxes = original_boxes
        self.include_crowd = include_crowd

    def load(self, index: int) -> LoadedImage:
        """The decoded image of record ``index``, checked against its annotated size; raises ``DataProblem``."""
        record = self.items[index]
        loaded = load_image(record.image_path)
        height, width = loaded.array.shape[:2]
        if record.size is not None and (height, width) != tuple(record.size):
            raise DataProblem(
                "size_mismatch",
                record.image_path,
                f"image is {height}x{width} but its annotation says {record.size[0]}x{record.size[1]} (h x w)",
            )
        return loaded

    def _transformed(self, index: int, loaded: LoadedImage) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target, _ = self._augmented(self.items[index], loaded.array)
        return image, target

    def _augmented(
        self, record: DetectionRecord, image: np.ndarray, **extra: np.ndarray
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """``(image uint8 3 x H x W, target, albumentations output)`` of ``record``'s ``image``
        (``H x W x 3``) with its boxes and the ``extra`` targets (e.g. ``mask``) through one
        call of the transform."""
        keep = np.ones(len(record.labels), bool) if self.include_crowd else record.iscrowd == 0
        out = self.transform(
            image=image, bboxes=record.boxes[keep], labels=record.labels[keep], iscrowd=record.iscrowd[keep], **extra
        )
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64)),
            "iscrowd": torch.as_tensor(np.asarray(out["iscrowd"], dtype=np.uint8)),
            "image_id": torch.tensor(record.image_id, dtype=torch.int64),
            "orig_size": torch.tensor(image.shape[:2], dtype=torch.int64),
        }
        if self.original_boxes:
            target["orig_boxes"] = torch.as_tensor(record.boxes[keep])
        return torch.from_numpy(out["image"]).permute(2, 0, 1), target, out


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
        cache: DecodedCache | None = None,
    ) -> None:
        super().__init__(items, transform, strict, cache)
        self.num_classes = num_classes
        self.mask_ignore_index = mask_ignore_index

    def cache_sources(self, index: int) -> list[Path | str] | None:
        item = self.items[index]
        mask_source = item.mask if isinstance(item.mask, Path) else getattr(item.mask, "cache_key", None)
        if mask_source is None:
            return None
        return [item.image_path, mask_source, f"classes {self.num_classes}, ignore {self.mask_ignore_index}"]

    def load(self, index: int) -> tuple[LoadedImage, np.ndarray]:
        """Decoded and validated ``(image, H x W uint8 mask)``; raises ``DataProblem``."""
        item = self.items[index]
        loaded = load_image(item.image_path)
        shape = loaded.array.shape[:2]
        return loaded, load_checked_mask(item.mask, item.image_path, shape, self.num_classes, self.mask_ignore_index)

    def _transformed(self, index: int, loaded: tuple[LoadedImage, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = loaded[0].array, loaded[1]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), torch.from_numpy(np.ascontiguousarray(mask))
