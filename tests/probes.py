"""Callbacks the tests append to the real command line (``--trainer.callbacks+=probes.<Name>``,
with ``tests/`` importable) to see inside a run: what each DDP rank evaluated, and how memory
evolves over epochs."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer


class EvaluationRecord(Callback):
    """At the end of each validation, writes ``<default_root_dir>/evaluated_<fit|validate>_rank<r>.json``:
    the class and indices of the validation sampler, the number of images this process
    evaluated and the ``val/`` metrics it holds."""

    def __init__(self) -> None:
        self.images = 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.images = 0

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.images += len(batch[0])

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sampler = trainer.val_dataloaders.sampler
        record = {
            "sampler": type(sampler).__name__,
            "indices": [int(i) for i in sampler],
            "images": self.images,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        }
        path = Path(trainer.default_root_dir) / f"evaluated_{trainer.state.fn.value}_rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


def resident_mb() -> float:
    """This process's resident set size (``VmRSS``) in MB."""
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024


class MemoryRecorder(Callback):
    """At the end of each training epoch (after its validation), once garbage is collected:
    the resident set size in ``rss_mb`` and the number of live tensors in ``tensors`` (any
    tensor kept from one epoch to the next shows there, however small)."""

    def __init__(self) -> None:
        self.rss_mb: list[float] = []
        self.tensors: list[int] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        gc.collect()
        self.rss_mb.append(resident_mb())
        self.tensors.append(sum(isinstance(obj, torch.Tensor) for obj in gc.get_objects()))
