"""``TaskModule``: the Lightning module every task builds on (in the spirit of torchgeo's ``BaseTask``).

A task writes its model, its loss and its metric; the base gives it the rest:

- hyperparameters saved from the task's ``__init__`` arguments, less the run-time options in
  ``RUN_TIME_OPTIONS`` (where and how a run evaluates or writes: LightningCLI would otherwise
  let a checkpoint's saved values override the command line);
- the model in channels-last order (``channels_last``), which oneDNN and cuDNN run faster;
- SGD (or RMSprop) with weight decay on conv / linear weights only, never on BN parameters and
  biases, and the task's learning-rate schedule (``lr_schedule``);
- a training step that sums the task's losses and logs each, and that guards batches that
  skipped samples left too small for BatchNorm (``empty_batch_loss``);
- a warning when a fit asks for bf16 on a CPU that only emulates it (``cpu_computes_bf16``);
- the non-finite step guard and the random-state restore of exact resume (callbacks), and
  checkpoints saved finite, stamped with the task, loaded only where they fit;
- evaluation through the task's metric, counting every image once under DDP
  (``engine.distributed.unrepeated_samples``);
- prediction on the inference fast path (``core.fuse.optimize_for_inference``, a copy made at
  predict start), results in each image's own pixels, and pictures written by
  ``engine.prediction_writer.PredictionWriter`` when ``prediction_dir`` is set;
- class names from the datamodule.

What a task implements: ``__init__`` (build the model, call ``super().__init__(model, ...)``),
``training_losses``, ``make_metric`` / ``update_metric`` / ``compute_metric``,
``predict_batch`` and ``write_prediction`` (see ``tests/test_third_task.py`` for a whole task
in a few lines).
"""

from __future__ import annotations

import inspect
import platform
from pathlib import Path
from typing import Any, ClassVar, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric

from core.fuse import optimize_for_inference

from .checkpoint_checks import CheckedCheckpoints
from .distributed import unrepeated_samples
from .nonfinite import NonFiniteGuard
from .prediction_writer import PredictionWriter
from .rng_state import RestoreRNGState

STAGES = ("val", "test")


class SmallBatchWarning(UserWarning):
    """A training batch was too small to train on (skipped samples, or a one-image dataset)."""


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic that oneDNN uses (x86 AVX512-BF16 or AMX; Arm's
    BF16 extension): without it bf16 autocast is emulated, slower than float32."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only, none on BN parameters and biases (1-d
    tensors), as TF's slim and torchvision's recipes do; frozen parameters are left out."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def empty_batch_loss(module: nn.Module) -> torch.Tensor:
    """A zero loss attached to every trainable parameter of ``module``.

    Returning ``None`` from ``training_step`` would skip backward on this process only, and
    under DDP the other processes would wait in the gradient all-reduce for good; this loss
    runs the same backward everywhere, with zero gradients (the optimizer still steps: SGD
    momentum and weight decay move the weights as after any step).
    """
    return sum((p.sum() for p in module.parameters() if p.requires_grad), torch.zeros(())) * 0.0


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, warmup_factor: float) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` config of a linear warm-up from ``warmup_factor`` x the
    learning rate over ``warmup_steps`` (at most ``total_steps - 1``), then cosine decay to zero
    at ``total_steps``, stepped every iteration (torchvision's detection recipe)."""
    warmup = min(warmup_steps, total_steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup)
    scheduler: torch.optim.lr_scheduler.LRScheduler = cosine
    if warmup > 0:
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, warmup_factor, 1.0, total_iters=warmup)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    return {"scheduler": scheduler, "interval": "step"}


class TaskModule(CheckedCheckpoints, L.LightningModule):
    """Base of every task's ``LightningModule``; see the module docstring for what it gives.

    Batches are ``(images, targets)`` for fit / validate / test and ``(images, metas)`` for
    predict, with float ``N x 3 x H x W`` images in [0, 1]; each ``meta`` carries the image's
    ``path``, ``image_id``, ``orig_size`` ``[h, w]``, ``size`` (its unpadded ``[h, w]`` in the
    input) and ``image`` (the decoded original, uint8 ``3 x h x w``).
    """

    # Arguments of the task's __init__ that are chosen per run, not saved with the weights.
    RUN_TIME_OPTIONS: ClassVar[tuple[str, ...]] = ("prediction_dir", "max_nonfinite_steps")
    # Datamodule attributes the task CLI links to the model's arguments of the same name.
    LINKED_FROM_DATA: ClassVar[tuple[str, ...]] = ("num_classes",)
    # Samples a training batch needs (BatchNorm on 1 x 1 maps needs two).
    MIN_TRAIN_BATCH: ClassVar[int] = 2
    # The metric (``compute_metric``'s key) shown in the progress bar and watched by checkpoints.
    MONITOR: ClassVar[str] = "loss"
    # A tuple, so that the fast-path copy is no submodule: not in the state dict, not saved.
    _fast_copy: tuple[nn.Module, ...] = ()

    def __init__(
        self, model: nn.Module, channels_last: bool = True, max_nonfinite_steps: int = 5, prediction_dir: str | None = None
    ) -> None:
        super().__init__()
        # The task's own __init__ arguments (the frames from the caller of this one up), so that
        # load_from_checkpoint can pass them back: this base's are the task's to take or not.
        self.save_hyperparameters(ignore=list(self.RUN_TIME_OPTIONS), frame=inspect.currentframe().f_back)
        self.max_nonfinite_steps = max_nonfinite_steps
        self.prediction_dir = prediction_dir
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.metrics = nn.ModuleDict({stage: self.make_metric() for stage in STAGES})
        self._small_batches = 0

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(images)

    # --- what a task implements --------------------------------------------------------------
    def training_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        """The named losses of a training batch; their sum is minimised."""
        raise NotImplementedError

    def make_metric(self) -> nn.Module:
        """A fresh evaluation metric (a torchmetrics ``Metric`` or a ``ModuleDict`` of them)."""
        raise NotImplementedError

    def update_metric(self, metric: nn.Module, batch: Any, keep: torch.Tensor) -> None:
        """Add an evaluation batch; ``keep`` (bool ``N``) marks the samples to count (under DDP
        a sampler may repeat a few to even out processes)."""
        raise NotImplementedError

    def compute_metric(self, metric: nn.Module) -> dict[str, torch.Tensor]:
        """The scalars to log from a whole evaluation set (keys without the stage prefix)."""
        raise NotImplementedError

    def predict_batch(self, model: nn.Module, images: torch.Tensor, metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per image, its results in the image's own pixels, computed by ``model`` (the fast path)."""
        raise NotImplementedError

    def write_prediction(self, result: dict[str, Any], meta: dict[str, Any], directory: Path) -> None:
        """Write one image's results (files and a picture on ``meta["image"]``) under ``directory``."""
        raise NotImplementedError

    def lr_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The learning-rate scheduler config (Lightning's ``lr_scheduler`` dict); None: constant."""
        return None

    # --- training ------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.device.type == "cpu" and str(self.trainer.precision).startswith("bf16") and not cpu_computes_bf16():
            rank_zero_warn(
                f"precision={self.trainer.precision} on a CPU without AVX512-BF16 or AMX: bf16 is emulated there "
                "and trains slower than float32; use --trainer.precision 32-true"
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        size = len(batch[0])
        if size < self.MIN_TRAIN_BATCH:
            self._small_batches += 1
            rank_zero_warn(
                f"training batch {batch_idx} holds {size} sample(s) (skipped files, or a dataset smaller than "
                f"{self.MIN_TRAIN_BATCH} images): no training on it, zero gradients "
                f"({self._small_batches} such batches so far)",
                category=SmallBatchWarning,
            )
            return empty_batch_loss(self)
        losses = self.training_losses(batch)
        loss = sum(losses.values())
        if len(losses) > 1:
            self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def configure_callbacks(self) -> list[L.Callback]:
        # RestoreRNGState: exact resume (Lightning does not checkpoint the random state).
        callbacks: list[L.Callback] = [NonFiniteGuard(self.max_nonfinite_steps), RestoreRNGState()]
        if self.prediction_dir is not None:
            callbacks.append(PredictionWriter(self.prediction_dir))
        return callbacks

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = parameter_groups(self.model, hp.get("weight_decay", 0.0))
        name = hp.get("optimizer", "sgd")
        if name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.get("momentum", 0.9))
        elif name == "rmsprop":
            optimizer = torch.optim.RMSprop(
                groups, lr=hp.lr, momentum=hp.momentum, alpha=hp.rmsprop_alpha, eps=hp.rmsprop_eps
            )
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'rmsprop', got {name!r}")
        schedule = self.lr_schedule(optimizer)
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}

    def total_steps(self, interval: str = "step") -> int:
        """The schedule's length: optimizer steps of the whole fit, or epochs."""
        total = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
        if total is None or total < 1 or total == float("inf"):
            raise ValueError(f"the learning-rate schedule needs a finite length: set trainer.max_steps or max_epochs ({total=})")
        return int(total)

    # --- evaluation ----------------------------------------------------------------------------
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx, self.trainer.val_dataloaders)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx, self.trainer.test_dataloaders)

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val")

    def on_test_epoch_end(self) -> None:
        self._log_metric("test")

    def _evaluate(
        self, stage: str, batch: Any, batch_idx: int, dataloaders: DataLoader | Sequence[DataLoader] | None
    ) -> None:
        size = len(batch[0])
        if size == 0:  # every sample of the batch was skipped
            return
        loader = dataloaders[0] if isinstance(dataloaders, Sequence) else dataloaders
        batch_size = getattr(loader, "batch_size", None)
        if batch_size is None:  # no loader, or a batch sampler: nothing to tell repeats by
            keep = torch.ones(size, dtype=torch.bool)
        else:
            keep = unrepeated_samples(loader.sampler, batch_idx * batch_size, size)
        self.update_metric(self.metrics[stage], batch, keep.to(self.device))

    def _log_metric(self, stage: str) -> None:
        metric = self.metrics[stage]
        values = self.compute_metric(metric)  # summed over processes: every rank logs the same
        for part in metric.modules():
            if isinstance(part, Metric):
                part.reset()
        for key, value in values.items():
            self.log(f"{stage}/{key}", value.float(), prog_bar=stage == "val" and key == self.MONITOR)

    # --- prediction ----------------------------------------------------------------------------
    @property
    def predict_model(self) -> nn.Module:
        """The fast-path copy while predict runs, else ``self.model``."""
        return self._fast_copy[0] if self._fast_copy else self.model

    def on_predict_start(self) -> None:
        self._fast_copy = (optimize_for_inference(self.model),)

    def on_predict_end(self) -> None:
        self._fast_copy = ()

    def predict_step(self, batch: tuple[torch.Tensor, list[dict[str, Any]]], batch_idx: int) -> list[dict[str, Any]]:
        """Per image: ``path``, ``image_id``, ``orig_size`` and the task's results, in the image's pixels."""
        images, metas = batch
        if len(images) == 0:
            return []
        results = self.predict_batch(self.predict_model, images, metas)
        identity = ("path", "image_id", "orig_size")
        return [{**{k: meta[k] for k in identity if k in meta}, **result} for meta, result in zip(metas, results)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # CheckedCheckpoints: refuse non-finite, stamp the classes
        checkpoint["class_names"] = self.class_names()  # what engine.predictor names results with

    # --- shared look-ups -----------------------------------------------------------------------
    def class_names(self) -> list[str]:
        """The datamodule's ``class_names`` when it has one per class, else the indices as text."""
        num_classes = self.hparams.num_classes
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        if names is None or len(names) != num_classes:
            return [str(i) for i in range(num_classes)]
        return list(names)
