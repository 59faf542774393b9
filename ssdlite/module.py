"""Lightning module: SSDLite training, COCO / VOC07 evaluation and prediction to COCO json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from lightning import Callback, LightningModule
from torch import nn

from backbone.checkpoint_checks import CheckedCheckpoints
from backbone.fuse import PredictsOnTheFastPath
from backbone.nonfinite import NonFiniteGuard
from backbone.training import RestoreRNGState, empty_batch_loss
from backbone.weights import PretrainedSpec
from datamodules import detections_to_coco_results

from .loss import ClassificationLoss
from .metrics import MetricName, detection_metric, summarize
from .model import build_ssdlite
from .postprocess import rescale_boxes
from .visualize import write_prediction_files

log = logging.getLogger(__name__)

# Where predict writes is chosen per run: kept out of the checkpoint's hyperparameters, which
# LightningCLI would otherwise let override the command line (as DeepLabModule does).
RUN_TIME_OPTIONS = ("predictions_json", "image_ids_from", "prediction_dir", "max_nonfinite_steps")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only, none on BN parameters and biases (1-d tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class SSDLiteModule(CheckedCheckpoints, PredictsOnTheFastPath, LightningModule):
    """Trains and evaluates ``build_ssdlite(...)``.

    Batches follow the project's detection contract: ``(images N x 3 x S x S in [0, 1],
    targets)`` for fit / validate / test, ``(images, metas)`` for predict. Validation and test
    log ``{stage}/map``, ``map_50``, ``map_75``, ``map_small/medium/large``, ``mar_100``
    (``metric="coco"``) or ``{stage}/ap50_voc07`` (``metric="voc07"``), computed in
    original-image pixels. Optimiser: SGD (momentum) or RMSProp (TF's recipe), weight decay off
    BN and biases, linear warm-up then cosine decay to zero, stepped every iteration.
    Optimizer steps with a non-finite loss are skipped (``backbone.nonfinite.NonFiniteGuard``);
    checkpoints are saved finite and load only into a module they fit (``CheckedCheckpoints``).
    """

    def __init__(
        self,
        num_classes: int = 80,
        backbone: str = "mobilenet_v2",
        width_mult: float = 1.0,
        image_size: int = 320,
        pretrained_backbone: PretrainedSpec = False,
        freeze_backbone: bool | str = False,
        classification_loss: ClassificationLoss = "softmax",
        score_threshold: float = 0.001,
        nms_threshold: float = 0.6,
        detections_per_image: int = 100,
        optimizer: Literal["sgd", "rmsprop"] = "sgd",
        lr: float = 0.15,
        momentum: float = 0.9,
        weight_decay: float = 4e-5,
        rmsprop_alpha: float = 0.9,
        rmsprop_eps: float = 1.0,
        warmup_steps: int = 1000,
        warmup_factor: float = 0.001,
        metric: MetricName = "coco",
        predictions_json: str | None = None,
        label_to_category_id: Sequence[int] | None = None,
        image_ids_from: str | None = None,
        prediction_dir: str | None = None,
        max_nonfinite_steps: int = 5,
        grad_checkpointing: int | None = None,
        channels_last: bool = True,
    ) -> None:
        """``predictions_json``: where ``predict`` writes an official COCO results file, with
        category ids from ``label_to_category_id`` (default: the datamodule's
        ``label_to_category_id``, else ``label + 1``) and image ids from the ``file_name`` ->
        ``id`` table of the COCO annotation file ``image_ids_from`` (default: the numeric file
        name, as in official COCO: ``000000397133.jpg`` -> 397133). ``prediction_dir``: where
        predict writes ``<image stem>.json`` (the detections, for any image names) and
        ``<image stem>_boxes.jpg`` (boxes, class names and scores drawn on the image).
        ``max_nonfinite_steps``: training stops after this many skipped non-finite steps in a row.
        ``grad_checkpointing``: backbone blocks recomputed in the backward pass to save memory
        (``build_ssdlite``; default the backbone's, 3 for MobileNetV2; 0 for the fastest step).
        ``channels_last``: weights, hence activations,
        in NHWC order, which oneDNN (CPU) and cuDNN run faster (measured: 0.81x the training
        step time at batch 16 on CPU)."""
        super().__init__()
        self.save_hyperparameters(ignore=list(RUN_TIME_OPTIONS))
        self.predictions_json = predictions_json
        self.image_ids_from = image_ids_from
        self.prediction_dir = prediction_dir
        self.max_nonfinite_steps = max_nonfinite_steps
        self.model = build_ssdlite(
            num_classes=num_classes,
            backbone=backbone,
            width_mult=width_mult,
            image_size=image_size,
            pretrained_backbone=pretrained_backbone,
            freeze_backbone=freeze_backbone,
            classification_loss=classification_loss,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            detections_per_image=detections_per_image,
            grad_checkpointing=grad_checkpointing,
        )
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.val_metric = detection_metric(metric)
        self.test_metric = detection_metric(metric)
        self._predictions: list[dict[str, Any]] = []

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    # --- training -------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if len(targets) < 2:  # skips left no sample, or one: too few for BatchNorm on the 1x1 extra maps
            return empty_batch_loss(self)
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def configure_callbacks(self) -> list[Callback]:
        # RestoreRNGState: exact resume (Lightning does not checkpoint the random state).
        return [NonFiniteGuard(self.max_nonfinite_steps), RestoreRNGState()]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = parameter_groups(self.model, hp.weight_decay)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        elif hp.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(
                groups, lr=hp.lr, momentum=hp.momentum, alpha=hp.rmsprop_alpha, eps=hp.rmsprop_eps
            )
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'rmsprop', got {hp.optimizer!r}")
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(hp.warmup_steps, total - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
        if warmup > 0:
            linear = torch.optim.lr_scheduler.LinearLR(optimizer, hp.warmup_factor, 1.0, total_iters=warmup)
            scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
        else:
            scheduler = cosine
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- evaluation -----------------------------------------------------------------------
    def _detect_original(
        self, images: torch.Tensor, orig_sizes: Sequence, model: nn.Module | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Detections of ``model`` (default ``self.model``) with boxes rescaled from the network
        input to each original image."""
        detections = (self.model if model is None else model)(images)
        input_size = tuple(images.shape[-2:])
        for det, size in zip(detections, orig_sizes):
            det["boxes"] = rescale_boxes(det["boxes"], input_size, tuple(int(s) for s in size))
        return detections

    def _evaluation_step(self, batch: tuple[torch.Tensor, list[dict]], metric) -> None:
        images, targets = batch
        detections = self._detect_original(images, [t["orig_size"] for t in targets])
        input_size = tuple(images.shape[-2:])
        ground_truth = [
            {
                "boxes": rescale_boxes(t["boxes"], input_size, tuple(int(s) for s in t["orig_size"])),
                "labels": t["labels"],
                "iscrowd": t["iscrowd"],
            }
            for t in targets
        ]
        metric.update(detections, ground_truth)

    def _log_metric(self, stage: str, metric) -> None:
        result = summarize(self.hparams.metric, metric.compute())
        self.log_dict({f"{stage}/{k}": v.float() for k, v in result.items()}, prog_bar=stage == "val")
        metric.reset()

    def validation_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        self._evaluation_step(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def test_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    # --- prediction -----------------------------------------------------------------------
    def predict_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> list[dict[str, Any]]:
        """Per image: ``path``, ``boxes`` ``K x 4`` xyxy in original-image pixels, ``scores``, ``labels``."""
        images, metas = batch
        detections = self._detect_original(images, [m["orig_size"] for m in metas], self.predict_model)
        results = [{**meta, **det} for meta, det in zip(metas, detections)]
        if self.prediction_dir is not None:
            class_names = getattr(self.trainer.datamodule, "class_names", None)
            for r in results:  # boxes are in original-image pixels, as the pictures need
                write_prediction_files(
                    r["path"], r["orig_size"], r["boxes"], r["scores"], r["labels"], self.prediction_dir, class_names
                )
        if self.predictions_json:
            self._predictions.extend(results)
        return results

    def on_predict_epoch_start(self) -> None:
        self._predictions = []

    def on_predict_epoch_end(self) -> None:
        if self.predictions_json:
            preds = self._predictions
            results = detections_to_coco_results(
                self._image_ids([p["path"] for p in preds]),
                [p["boxes"] for p in preds],
                [p["scores"] for p in preds],
                [p["labels"] for p in preds],
                self._category_ids(),
            )
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # each rank predicted its share of the images: one file, written by rank 0
                gathered: list[list[dict]] = [[] for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather_object(gathered, results)
                results = [r for part in gathered for r in part]
            if self.trainer.is_global_zero:
                path = Path(self.predictions_json)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(results))
                log.info("wrote %d detections to %s", len(results), path)
        self._predictions = []

    def _image_ids(self, paths: Sequence[str]) -> list[int]:
        if self.image_ids_from:
            images = json.loads(Path(self.image_ids_from).read_text())["images"]
            by_name = {image["file_name"]: image["id"] for image in images}
            missing = [p for p in paths if Path(p).name not in by_name]
            if missing:
                raise ValueError(f"{self.image_ids_from} has no image named {Path(missing[0]).name} ({missing[0]})")
            return [by_name[Path(p).name] for p in paths]
        ids = []
        for path in paths:
            stem = Path(path).stem
            if not stem.isdigit():
                raise ValueError(f"{path}: not a COCO file name (numeric id); set image_ids_from to the annotation json")
            ids.append(int(stem))
        return ids

    def _category_ids(self) -> list[int]:
        if self.hparams.label_to_category_id is not None:
            return list(self.hparams.label_to_category_id)
        datamodule = getattr(self.trainer, "datamodule", None)
        mapping = getattr(datamodule, "label_to_category_id", None)
        if mapping is not None:
            return list(mapping)
        return list(range(1, self.hparams.num_classes + 1))
