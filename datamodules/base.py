"""What every datamodule shares: DataLoader settings, samplers, seeding, strict mode.

Subclasses build their datasets in ``_build_dataset(split)`` (``split`` in train / val /
test) and give their collate functions; this base turns them into DataLoaders.

Under DDP, Lightning's default sampler pads the last batch with repeated images, which a
metric then counts twice. Evaluation loaders therefore get ``UnpaddedDistributedSampler``
(a ``DistributedSampler``, so Lightning keeps it): every image is evaluated exactly once,
ranks may hold one image more or less.
"""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from .collate import PredictCollate, SegmentationCollate, detection_collate
from .datasets import _SkippingDataset
from .predict import ImageFolderPredictDataset
from .problems import DataProblem, ProblemReport
from .transforms import IGNORE_INDEX, deeplab_train_transform, ssd_eval_transform, ssd_train_transform

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``R`` gets indices ``r, r + R, r + 2R, ...``: no padding, no repeats."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = list(range(rank, len(dataset), num_replicas))
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


def scan_dataset(dataset: _SkippingDataset) -> ProblemReport:
    """Decode every sample's files (``dataset.load(i)``): unreadable or mismatched files are
    problems, conversions (grayscale, RGBA, 16-bit, CMYK, EXIF rotation) are notes."""
    report = ProblemReport()
    report.checked = len(dataset)
    for index in range(len(dataset)):
        try:
            loaded = dataset.load(index)
        except DataProblem as problem:
            report.add(problem)
            continue
        image = loaded[0] if isinstance(loaded, tuple) else loaded
        for kind in image.conversions:
            report.note(kind, dataset.image_path(index))
    return report


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a distinct augmentation stream per worker and epoch.

    albumentations keeps its own random state inside ``Compose``; without this every worker
    would inherit the same copy and augment identically.
    """
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, _SkippingDataset):
        info.dataset.reseed(info.seed % 2**32)


class BaseDataModule(L.LightningDataModule):
    """DataLoaders over the datasets a subclass builds.

    Args:
        batch_size: training batch size.
        eval_batch_size: validation / test / predict batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory (for GPU training).
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        predict_path: a folder or file of arbitrary images for ``trainer.predict``.
        strict: scan the datasets in ``setup`` and raise on any problem instead of counting
            and skipping (see ``datamodules.check``).
    """

    def __init__(
        self,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        predict_path: str | None,
        strict: bool,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.predict_path = predict_path
        self.strict = strict
        self.datasets: dict[str, Dataset] = {}
        self.reports: dict[str, ProblemReport] = {}

    # --- subclass hooks --------------------------------------------------------------------
    def _build_dataset(self, split: str) -> tuple[Dataset, ProblemReport]:
        """The dataset of ``split`` (train / val / test) and the problems met reading it."""
        raise NotImplementedError

    def _predict_dataset(self, path: str) -> Dataset:
        raise NotImplementedError

    def _collate(self, split: str) -> Callable[[list[Any]], Any]:
        raise NotImplementedError

    def check(self, splits: tuple[str, ...] = ("train", "val")) -> ProblemReport:
        """Read every annotation and decode every file of ``splits``; all problems, by kind."""
        total = ProblemReport(f"{type(self).__name__} {'/'.join(splits)}")
        for split in splits:
            dataset, report = self._build_dataset(split)
            report.extend(scan_dataset(dataset))
            total.extend(report)
        return total

    # --- Lightning hooks -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS[stage] if stage else ("train", "val", "test"):
            if split in self.datasets:
                continue
            dataset, report = self._build_dataset(split)
            if self.strict:
                report.extend(scan_dataset(dataset))
                report.raise_if_problems()
            report.log()
            self.datasets[split], self.reports[split] = dataset, report
        if stage == "predict":
            if self.predict_path is None:
                raise ValueError(f"{type(self).__name__}: set predict_path to a folder or file of images to predict on")
            self.datasets["predict"] = self._predict_dataset(self.predict_path)

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        return self._loader(dataset, "train", shuffle=True, drop_last=len(dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"], "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["predict"], "predict")

    def _loader(self, dataset: Dataset, split: str, *, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        sampler = None
        trainer = self.trainer
        if split != "train" and trainer is not None and trainer.world_size > 1:
            sampler = UnpaddedDistributedSampler(dataset, trainer.world_size, trainer.global_rank)
        if self.num_workers == 0 and isinstance(dataset, _SkippingDataset):
            dataset.reseed(int(torch.randint(2**31, ())))  # follows torch's seed (seed_everything)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=self._collate(split),
            worker_init_fn=seed_worker,
        )


class BaseDetectionDataModule(BaseDataModule):
    """Detection: SSD augmentations for training, resize-only evaluation, ``S x S`` predict.

    Subclasses set ``num_classes`` and ``class_names`` in ``__init__``.
    """

    def __init__(
        self,
        image_size: int,
        augment: dict[str, Any],
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        predict_path: str | None,
        strict: bool,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, predict_path, strict)
        self.image_size = image_size
        self.augment = augment

    def _transform(self, split: str):
        if split == "train":
            return ssd_train_transform(self.image_size, **self.augment)
        return ssd_eval_transform(self.image_size)

    def _predict_dataset(self, path: str) -> ImageFolderPredictDataset:
        return ImageFolderPredictDataset(path, resize_to=self.image_size)

    def _collate(self, split: str):
        return PredictCollate(size_divisor=1) if split == "predict" else detection_collate


class BaseSegmentationDataModule(BaseDataModule):
    """Segmentation: DeepLab augmentations for training; whole images, padded to a multiple of
    ``size_divisor`` (mean colour / 255), for evaluation; predict images shrunk to at most
    ``predict_max_size`` on the longer side.

    Subclasses set ``num_classes`` and ``class_names`` in ``__init__``.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        crop_size: int,
        scales: list[float] | None,
        horizontal_flip: bool,
        size_divisor: int,
        predict_max_size: int | None,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        predict_path: str | None,
        strict: bool,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers, predict_path, strict)
        self.crop_size = crop_size
        self.scales = scales
        self.horizontal_flip = horizontal_flip
        self.size_divisor = size_divisor
        self.predict_max_size = predict_max_size

    def _transform(self, split: str):
        if split == "train":
            return deeplab_train_transform(self.crop_size, scales=self.scales, horizontal_flip=self.horizontal_flip)
        return None

    def _predict_dataset(self, path: str) -> ImageFolderPredictDataset:
        return ImageFolderPredictDataset(path, max_size=self.predict_max_size)

    def _collate(self, split: str):
        if split == "predict":
            return PredictCollate(self.size_divisor)
        # Training crops all have the crop size; evaluation images are padded to the divisor.
        return SegmentationCollate(1 if split == "train" else self.size_divisor)
