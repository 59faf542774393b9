"""``CocoResultsWriter``: what ``ssdlite predict`` found, as one official COCO results file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning import Callback, LightningModule, Trainer

from datamodules import detections_to_coco_results

log = logging.getLogger(__name__)


class CocoResultsWriter(Callback):
    """Collects every image's detections (boxes in its own pixels) and writes them at the end of
    predict as a COCO results list at ``path`` (rank 0, gathered from every process).

    Image ids come with each image (``meta["image_id"]``: the numeric COCO file name or the
    datamodule's ``image_ids_from`` table); category ids from ``label_to_category_id``, else the
    datamodule's, else ``label + 1``.
    """

    def __init__(self, path: str | Path, label_to_category_id: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self.label_to_category_id = label_to_category_id
        self._results: list[dict[str, Any]] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._results = []

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        for result in prediction:
            if result["image_id"] is None:
                raise ValueError(
                    f"{result['path']}: no COCO image id (not a numeric file name): set data.image_ids_from to the "
                    "annotation json, or predictions_json to null"
                )
        self._results += detections_to_coco_results(
            [r["image_id"] for r in prediction],
            [r["boxes"] for r in prediction],
            [r["scores"] for r in prediction],
            [r["labels"] for r in prediction],
            self._category_ids(trainer, pl_module),
        )

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        results = self._results
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # each rank predicted its share of the images: one file, written by rank 0
            gathered: list[list[dict]] = [[] for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(gathered, results)
            results = [r for part in gathered for r in part]
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(results))
            log.info("wrote %d detections to %s", len(results), self.path)
        self._results = []

    def _category_ids(self, trainer: Trainer, pl_module: LightningModule) -> list[int]:
        if self.label_to_category_id is not None:
            return list(self.label_to_category_id)
        mapping = getattr(trainer.datamodule, "label_to_category_id", None)
        if mapping is not None:
            return list(mapping)
        return list(range(1, pl_module.hparams.num_classes + 1))
