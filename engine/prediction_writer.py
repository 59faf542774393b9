"""``PredictionWriter``: writes what ``predict`` found, per image, as it goes (Lightning's
``BasePredictionWriter``); the task decides what its files and pictures are."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torchvision.io import write_jpeg


def save_picture(picture: torch.Tensor, out: str | Path, quality: int = 90) -> Path:
    """Write a uint8 ``3 x H x W`` picture as a JPEG at ``out`` (folders made); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(picture.cpu(), str(out), quality=quality)
    return out


class PredictionWriter(BasePredictionWriter):
    """After each predict batch, ``pl_module.write_prediction(result, meta, directory)`` for every
    image: the results of ``predict_step`` with the batch's own metadata (path, id, the decoded
    original to draw on), so no file is read twice."""

    def __init__(self, directory: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.directory = Path(directory)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Sequence[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for result, meta in zip(prediction, batch[1]):
            pl_module.write_prediction(result, meta, self.directory)
