"""What an export measured, written as JSON beside the file: its size, its latency, and the
task's validation metric of the float graph and, for an int8 file, of that file.

The metric is the task's own (``make_metric`` / ``update_metric`` / ``compute_metric``), on
the validation set of the training run's datamodule, with the module's model replaced by a
stand-in that runs a graph at the export size (``TaskExport.evaluation_model``): the float
PyTorch graph (which a float export matches to the parity rule) or the written int8 file, so
both go through the same resizing and post-processing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from torch import nn

from .task import TaskModule


def evaluate_with(module: TaskModule, stand_in: nn.Module, datamodule: LightningDataModule) -> dict[str, float]:
    """The scalars of ``module``'s metric on ``datamodule``'s validation set, with ``stand_in``
    computing what ``module.model`` would (the module's model is restored afterwards)."""
    datamodule.setup("validate")
    metric = module.make_metric()
    original = module.model
    module.model = stand_in
    try:
        with torch.no_grad():
            for batch in datamodule.val_dataloader():
                if len(batch[0]):  # every sample of the batch may have been skipped
                    module.update_metric(metric, batch, torch.ones(len(batch[0]), dtype=torch.bool))
            values = module.compute_metric(metric)
    finally:
        module.model = original
    return {key: round(float(value), 4) for key, value in values.items() if value.numel() == 1}


def report_path(path: str | Path) -> Path:
    """Where the report of the exported file ``path`` goes: ``<path>.json`` (``ssdlite.pte.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` beside the exported file ``path``; returns the report's path."""
    target = report_path(path)
    target.write_text(json.dumps(report, indent=2) + "\n")
    return target
