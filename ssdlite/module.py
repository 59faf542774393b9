"""Lightning module: SSDLite training, COCO / VOC07 evaluation and prediction to COCO json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from lightning import Callback
from torch import nn

from backbone.weights import PretrainedSpec
from engine import TaskModule
from engine.task import warmup_cosine

from .coco_results import CocoResultsWriter
from .loss import ClassificationLoss
from .metrics import MetricName, detection_metric, summarize
from .model import build_ssdlite
from .postprocess import rescale_boxes
from .visualize import write_prediction_files


class SSDLiteModule(TaskModule):
    """Trains and evaluates ``build_ssdlite(...)`` (the runtime: ``engine.TaskModule``).

    Batches: ``(images N x 3 x S x S in [0, 1], targets)`` for fit / validate / test,
    ``(images, metas)`` for predict. Validation and test log ``{stage}/map``, ``map_50``,
    ``map_75``, ``map_small/medium/large``, ``mar_100`` (``metric="coco"``) or
    ``{stage}/ap50_voc07`` (``metric="voc07"``), computed in original-image pixels against
    the annotated boxes. Optimiser: SGD (momentum) or RMSProp (TF's recipe), linear warm-up
    then cosine decay to zero, stepped every iteration.
    """

    RUN_TIME_OPTIONS = (*TaskModule.RUN_TIME_OPTIONS, "predictions_json")
    LINKED_FROM_DATA = ("num_classes", "image_size")

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
        prediction_dir: str | None = None,
        max_nonfinite_steps: int = 5,
        grad_checkpointing: int | None = None,
        channels_last: bool = True,
    ) -> None:
        """``predictions_json``: where ``predict`` writes an official COCO results file, with
        category ids from ``label_to_category_id`` (default: the datamodule's
        ``label_to_category_id``, else ``label + 1``) and the image ids the datamodule gives
        (``data.image_ids_from``, or numeric COCO file names). ``prediction_dir``: where
        predict writes ``<image stem>.json`` (the detections, for any image names) and
        ``<image stem>_boxes.jpg`` (boxes, class names and scores drawn on the image).
        ``max_nonfinite_steps``: training stops after this many skipped non-finite steps in a row.
        ``grad_checkpointing``: backbone blocks recomputed in the backward pass to save memory
        (``build_ssdlite``; default the backbone's, 3 for MobileNetV2; 0 for the fastest step).
        ``channels_last``: weights, hence activations, in NHWC order, which oneDNN (CPU) and
        cuDNN run faster."""
        model = build_ssdlite(
            num_classes, backbone, width_mult, image_size, pretrained_backbone, freeze_backbone=freeze_backbone,
            classification_loss=classification_loss, score_threshold=score_threshold, nms_threshold=nms_threshold,
            detections_per_image=detections_per_image, grad_checkpointing=grad_checkpointing,
        )  # fmt: skip
        super().__init__(model, channels_last, max_nonfinite_steps, prediction_dir)
        self.predictions_json = predictions_json
        self.MONITOR = "ap50_voc07" if metric == "voc07" else "map"

    def training_losses(self, batch: tuple[torch.Tensor, list[dict]]) -> dict[str, torch.Tensor]:
        images, targets = batch
        return self.model(images, targets)

    def lr_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return warmup_cosine(optimizer, self.total_steps(), self.hparams.warmup_steps, self.hparams.warmup_factor)

    def configure_callbacks(self) -> list[Callback]:
        callbacks = super().configure_callbacks()
        if self.predictions_json:
            callbacks.append(CocoResultsWriter(self.predictions_json, self.hparams.label_to_category_id))
        return callbacks

    # --- evaluation -----------------------------------------------------------------------
    def make_metric(self) -> nn.Module:
        return detection_metric(self.hparams.metric)

    def update_metric(self, metric: nn.Module, batch: tuple[torch.Tensor, list[dict]], keep: torch.Tensor) -> None:
        images, targets = batch
        if not keep.all():
            images, targets = images[keep], [t for t, kept in zip(targets, keep.tolist()) if kept]
        detections = self.predict_batch(self.model, images, targets)
        ground_truth = [{"boxes": t["orig_boxes"], "labels": t["labels"], "iscrowd": t["iscrowd"]} for t in targets]
        metric.update(detections, ground_truth)

    def compute_metric(self, metric: nn.Module) -> dict[str, torch.Tensor]:
        return summarize(self.hparams.metric, metric.compute())

    # --- prediction -----------------------------------------------------------------------
    def predict_batch(self, model: nn.Module, images: torch.Tensor, metas: Sequence[dict]) -> list[dict[str, Any]]:
        """Per image: ``boxes`` ``K x 4`` xyxy in its original pixels (``meta["orig_size"]``), ``scores``, ``labels``."""
        detections = model(images)
        input_size = tuple(images.shape[-2:])
        for det, meta in zip(detections, metas):
            det["boxes"] = rescale_boxes(det["boxes"], input_size, tuple(int(s) for s in meta["orig_size"]))
        return detections

    def write_prediction(self, result: dict[str, Any], meta: dict[str, Any], directory: Path) -> None:
        write_prediction_files(
            meta["image"], meta["path"], result["boxes"], result["scores"], result["labels"], directory, self.class_names()
        )
