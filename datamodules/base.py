"""What every datamodule shares: DataLoader settings, samplers, seeding, strict mode, and the
run's report of bad data.

Subclasses build their datasets in ``_build_dataset(split)`` (``split`` in train / val /
test) and give their collate functions; this base turns them into DataLoaders. Subclasses pass
the loader settings on as ``**kwargs`` (the CLI still lists every one of them).

``image_mean`` is the normalisation mean of the model's backbone (the task CLI links it from
``model.backbone``): padding and zoom-out canvases are filled with it, so a padded pixel
normalises to zero whatever the backbone.

Training batches are a pure function of (seed, epoch, position), so a run killed mid-epoch
resumes exactly (``datamodules.loaders``). The seed is ``run_seed()``.

Under DDP, Lightning's default sampler pads the last batch with repeated images, which a
metric then counts twice. Evaluation loaders therefore get ``UnpaddedDistributedSampler``
(a ``DistributedSampler``, so Lightning keeps it): every image is evaluated exactly once,
ranks may hold one image more or less.

Bad data: the problems found reading annotations (in ``setup``) and those met while decoding
(in any worker) go to one ``ProblemLog`` per run, which logs each once; at the end of fit /
validate / test / predict, and when the run fails, its summary is logged and its counts are sent to the
Lightning loggers as ``data/problems`` (all problems), ``data/problems/<kind>`` and
``data/converted/<kind>``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import lightning as L
import torch

from core.constants import IGNORE_INDEX, IMAGENET_MEAN, mean_fill
from torch.utils.data import Dataset, DistributedSampler

from .decoded_cache import DecodedCache
from .collate import PredictCollate, SegmentationCollate, detection_collate
from .datasets import (
    DetectionDataset,
    DetectionRecord,
    SegmentationDataset,
    SegmentationItem,
    _SkippingDataset,
    decoded_image,
    has_training_target,
)
from .loaders import EpochSampler, ReportingDataLoader, ResumableDataLoader
from .predict import ImageFolderPredictDataset, coco_image_ids
from .problems import DataProblem, ProblemLog, ProblemReport
from .transforms import deeplab_train_transform, ssd_eval_transform, ssd_train_transform

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


def run_seed() -> int:
    """The run's seed: ``PL_GLOBAL_SEED`` (set by ``seed_everything``), 0 when unset, as for
    Lightning's own distributed sampler."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


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
        for kind in decoded_image(loaded).conversions:
            report.note(kind, dataset.image_path(index))
    return report


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
        image_mean: the model's normalisation mean of images in [0, 1]; padding colour.
    """

    def __init__(
        self,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        predict_path: str | None = None,
        strict: bool = False,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
    ) -> None:
        super().__init__()
        # Here, not in the subclasses: the init arguments of the whole class chain are saved.
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.predict_path = predict_path
        self.strict = strict
        self.fill = mean_fill(tuple(image_mean))
        self.datasets: dict[str, Dataset] = {}
        self.reports: dict[str, ProblemReport] = {}
        self.problem_log = ProblemLog(type(self).__name__)
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict[str, int] | None = None  # from a checkpoint, not yet applied

    # --- subclass hooks --------------------------------------------------------------------
    def _build_dataset(self, split: str) -> tuple[Dataset, ProblemReport]:
        """The dataset of ``split`` (train / val / test) and the problems met reading it."""
        raise NotImplementedError

    def _predict_dataset(self, path: str) -> ImageFolderPredictDataset:
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
        splits = STAGE_SPLITS[stage] if stage else ("train", "val", "test")
        stage_name = getattr(stage, "value", stage) or "run"  # Lightning passes a TrainerFn (a str enum)
        self.problem_log = ProblemLog(f"{type(self).__name__} {stage_name}")  # one per run
        for split in splits:
            if split not in self.datasets:
                dataset, report = self._build_dataset(split)
                if self.strict:
                    report.extend(scan_dataset(dataset))
                self.datasets[split], self.reports[split] = dataset, report
            self.problem_log.record_report(self.reports[split], announce=self._ranks()[1] == 0)
        if self.strict:  # before any step: one error naming every bad file of the stage's splits
            self.problem_log.report.raise_if_problems()
        if stage == "predict":
            if self.predict_path is None:
                raise ValueError(f"{type(self).__name__}: set predict_path to a folder or file of images to predict on")
            dataset = self._predict_dataset(self.predict_path)
            self.problem_log.record_report(dataset.report, announce=self._ranks()[1] == 0)
            self.datasets["predict"] = dataset

    def teardown(self, stage: str) -> None:
        self._report_run(self._gathered_report())

    def on_exception(self, exception: BaseException) -> None:
        # No gathering across processes here: another one may be gone.
        self._report_run(self.problem_log.report)

    # Lightning checkpoints a stateful training loader itself, but does not restore it when
    # configure_optimizers asked for trainer.estimated_stepping_batches, as both tasks' modules
    # do (Lightning issue 20550): the datamodule's own state, restored before that, carries it.
    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_loader_state = state_dict.get("train_loader")
        if self._train_loader is not None:  # strategies that restore after setup made it already
            self._resume_train_loader()

    def _resume_train_loader(self) -> None:
        if self._train_loader is not None and self._train_loader_state is not None:
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None

    def train_dataloader(self) -> ResumableDataLoader:
        dataset = self.datasets["train"]
        num_replicas, rank = self._ranks()
        sampler = EpochSampler(dataset, num_replicas, rank, seed=run_seed())
        self._train_loader = ResumableDataLoader(
            dataset,
            self.problem_log,
            sampler=sampler,
            batch_size=self.batch_size,
            drop_last=len(sampler) > self.batch_size,
            collate_fn=self._collate("train"),
            **self._worker_settings(),
        )
        self._resume_train_loader()
        return self._train_loader

    def val_dataloader(self) -> ReportingDataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> ReportingDataLoader:
        return self._evaluation_loader("test")

    def predict_dataloader(self) -> ReportingDataLoader:
        return self._evaluation_loader("predict")

    # --- helpers ---------------------------------------------------------------------------
    def _evaluation_loader(self, split: str) -> ReportingDataLoader:
        """Every sample of ``split`` once, in order (strided over DDP ranks)."""
        dataset = self.datasets[split]
        num_replicas, rank = self._ranks()
        return ReportingDataLoader(
            dataset,
            self.problem_log,
            sampler=UnpaddedDistributedSampler(dataset, num_replicas, rank) if num_replicas > 1 else None,
            batch_size=self.eval_batch_size,
            collate_fn=self._collate(split),
            **self._worker_settings(),
        )

    def _worker_settings(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
            # Workers' base seeds come from the loader's own generator: iterating a loader leaves
            # torch's global random state alone, which a resumed run restores (engine.rng_state).
            "generator": torch.Generator().manual_seed(run_seed()),
        }

    def _ranks(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached trainer; ``(1, 0)`` without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _gathered_report(self) -> ProblemReport:
        """This run's problems from every process (each counted once)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.problem_log.report
        logs: list[ProblemLog | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(logs, self.problem_log)
        gathered = ProblemLog(self.problem_log.name)
        for other in logs:
            gathered.merge(other)
        return gathered.report

    def _report_run(self, report: ProblemReport) -> None:
        """The run summary: logged (rank 0), and its counts sent to the trainer's loggers."""
        trainer = self.trainer
        if trainer is not None and not trainer.is_global_zero:
            return
        report.log()
        if trainer is None:
            return
        counts: dict[str, float] = {"data/problems": report.num_problems}
        counts.update({f"data/problems/{kind}": len(items) for kind, items in report.problems.items() if items})
        counts.update({f"data/converted/{kind}": len(paths) for kind, paths in report.notes.items() if paths})
        for logger in trainer.loggers:
            logger.log_metrics(counts, step=trainer.global_step)


class BaseDetectionDataModule(BaseDataModule):
    """Detection: SSD augmentations for training, resize-only evaluation, ``S x S`` predict.

    Args:
        image_size: the square model input (SSDLite: 320).
        zoom_out / max_zoom_out / min_iou_crop / horizontal_flip / photometric: SSD
            training augmentations (each can be switched off).
        image_ids_from: a COCO annotation json whose ``file_name`` -> ``id`` table gives each
            predicted image its ``image_id`` (default: the numeric file name, as in COCO:
            ``000000397133.jpg`` -> 397133; other names get none).
        keep_empty_images: keep training images without objects as background samples.
        Others: ``BaseDataModule``'s.

    Subclasses set ``num_classes`` and ``class_names`` in ``__init__``.
    """

    def __init__(
        self,
        image_size: int = 320,
        image_ids_from: str | None = None,
        keep_empty_images: bool = True,
        zoom_out: bool = True,
        max_zoom_out: float = 4.0,
        min_iou_crop: bool = True,
        horizontal_flip: bool = True,
        photometric: bool = True,
        batch_size: int = 24,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.image_size = image_size
        self.image_ids_from = image_ids_from
        self.keep_empty_images = keep_empty_images
        self.augment = {"zoom_out": zoom_out, "max_zoom_out": max_zoom_out, "min_iou_crop": min_iou_crop,
                        "horizontal_flip": horizontal_flip, "photometric": photometric}  # fmt: skip

    def _detection_dataset(self, records: list[DetectionRecord], split: str, keep_crowd: bool = False) -> DetectionDataset:
        """``records`` of ``split`` as a dataset. Training leaves out crowd / difficult boxes
        (unless ``keep_crowd``) and, unless ``keep_empty_images``, the images left without a
        training target; evaluation keeps every image and box (crowds for the metric to ignore)."""
        train = split == "train"
        if train and not self.keep_empty_images:
            records = [r for r in records if has_training_target(r, keep_crowd)]
        include_crowd = not train or keep_crowd
        if train:
            transform = ssd_train_transform(self.image_size, fill=self.fill, **self.augment)
        else:
            transform = ssd_eval_transform(self.image_size)
        return DetectionDataset(records, transform, include_crowd=include_crowd, original_boxes=not train, strict=self.strict)

    def _predict_dataset(self, path: str) -> ImageFolderPredictDataset:
        image_ids = coco_image_ids(self.image_ids_from) if self.image_ids_from else None
        return ImageFolderPredictDataset(path, resize_to=self.image_size, image_ids=image_ids)

    def _collate(self, split: str):
        return PredictCollate(size_divisor=1, fill=self.fill) if split == "predict" else detection_collate


class BaseSegmentationDataModule(BaseDataModule):
    """Segmentation: DeepLab augmentations for training; whole images, padded to a multiple of
    ``size_divisor`` (mean colour / 255), for evaluation; predict images shrunk to at most
    ``predict_max_size`` on the longer side.

    Args:
        crop_size / scales / horizontal_flip: DeepLab training augmentation.
        size_divisor: evaluation batches are padded to a multiple of it.
        predict_max_size: predict images larger than this (longer side) are shrunk to it.
        decoded_cache_dir: keep every decoded, checked image and mask there as raw arrays, so
            later epochs skip decoding (``DecodedCache``; decoding is most of the DeepLab
            pipeline's time; VOC trainaug needs ~8 GB).
        Others: ``BaseDataModule``'s.

    Subclasses set ``num_classes`` and ``class_names`` in ``__init__``.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        crop_size: int = 513,
        scales: list[float] | None = None,
        horizontal_flip: bool = True,
        size_divisor: int = 32,
        predict_max_size: int | None = 1024,
        decoded_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.augment = {"crop_size": crop_size, "scales": scales, "horizontal_flip": horizontal_flip}
        self.size_divisor = size_divisor
        self.predict_max_size = predict_max_size
        self.decoded_cache_dir = decoded_cache_dir

    def _segmentation_dataset(
        self, items: list[SegmentationItem], split: str, mask_ignore_index: int = IGNORE_INDEX
    ) -> SegmentationDataset:
        transform = None  # evaluation: whole images, padded by the collate function
        if split == "train":
            transform = deeplab_train_transform(**self.augment, fill=self.fill)
        return SegmentationDataset(
            items,
            transform,
            num_classes=self.num_classes,
            mask_ignore_index=mask_ignore_index,
            strict=self.strict,
            cache=DecodedCache(self.decoded_cache_dir) if self.decoded_cache_dir else None,
        )

    def _predict_dataset(self, path: str) -> ImageFolderPredictDataset:
        return ImageFolderPredictDataset(path, max_size=self.predict_max_size)

    def _collate(self, split: str):
        if split == "predict":
            return PredictCollate(self.size_divisor, self.fill)
        # Training crops all have the crop size; evaluation images are padded to the divisor.
        return SegmentationCollate(1 if split == "train" else self.size_divisor, self.fill)
