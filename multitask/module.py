"""``MultiTaskModule``: Lightning training and evaluation of the joint model (the runtime:
``engine.TaskModule``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from backbone.weights import PretrainedSpec
from core.constants import IGNORE_INDEX
from datamodules.image_io import save_palette_png
from deeplab_mobile.metrics import SegmentationScores
from deeplab_mobile.model import HeadName
from deeplab_mobile.resize import resize_bilinear
from deeplab_mobile.visualize import draw_label_map
from engine import TaskModule
from engine.task import warmup_cosine
from engine.prediction_writer import save_picture
from ssdlite.loss import ClassificationLoss
from ssdlite.metrics import detection_metric, summarize
from ssdlite.postprocess import rescale_boxes
from ssdlite.visualize import draw_detections, write_detections_json

from .model import build_multitask


class MultiTaskModule(TaskModule):
    """Trains and evaluates ``build_multitask(...)``: boxes and masks from one backbone pass.

    Batches: ``(images N x 3 x S x S in [0, 1], targets)`` for fit / validate / test, each
    target with the detection keys (``boxes`` xyxy in input pixels, ``labels``, ``iscrowd``,
    ``orig_size``; evaluation: ``orig_boxes`` in original pixels), ``mask`` (``S x S``, 255
    ignore; evaluation: ``orig_mask`` in original pixels) and ``has_boxes`` / ``has_mask``
    (``datamodules.joint``). ``(images, metas)`` for predict.

    Validation and test log COCO's AP family (``{stage}/map``, ``map_50``, ...) over the images
    with boxes and ``{stage}/mIoU``, ``pixel_accuracy``, ``iou/<class>`` over the images with
    masks (at their original size), side by side, and ``{stage}/score``, the mean of ``map``
    and ``mIoU``, which checkpoints watch. Training minimises the weighted sum of SSDLite's
    and the segmentation cross-entropy (``detection_weight`` / ``segmentation_weight``, or
    ``learned_weighting``); schedule: linear warm-up, then cosine decay to zero per step.

    Predict gives per image ``boxes``, ``scores``, ``labels`` and ``label_map`` in its own
    pixels; with ``prediction_dir`` set it writes ``<stem>.json`` (detections), ``<stem>.png``
    (VOC palette label map) and ``<stem>_joint.jpg`` (mask blended, boxes drawn on top).
    """

    LINKED_FROM_DATA = ("num_det_classes", "num_seg_classes", "image_size")
    MONITOR = "score"

    def __init__(
        self,
        num_det_classes: int = 80,
        num_seg_classes: int = 21,
        backbone: str = "mobilenet_v2",
        width_mult: float = 1.0,
        image_size: int = 320,
        pretrained_backbone: PretrainedSpec = False,
        freeze_backbone: bool | str = False,
        seg_head: HeadName = "reduced",
        seg_tap: str | None = None,
        seg_adapter: bool = True,
        classification_loss: ClassificationLoss = "softmax",
        score_threshold: float = 0.001,
        nms_threshold: float = 0.6,
        detections_per_image: int = 100,
        detection_weight: float = 1.0,
        segmentation_weight: float = 1.0,
        learned_weighting: bool = False,
        optimizer: Literal["sgd", "rmsprop"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 4e-5,
        warmup_steps: int = 1000,
        warmup_factor: float = 0.001,
        prediction_dir: str | None = None,
        max_nonfinite_steps: int = 5,
        grad_checkpointing: int | None = None,
        channels_last: bool = True,
    ) -> None:
        """Model arguments: ``build_multitask``. ``prediction_dir``: where predict writes its
        files and pictures. ``grad_checkpointing`` / ``channels_last``: as ``SSDLiteModule``'s."""
        model = build_multitask(
            num_det_classes, num_seg_classes, backbone, width_mult, image_size, pretrained_backbone, seg_head, seg_tap,
            seg_adapter=seg_adapter, classification_loss=classification_loss, score_threshold=score_threshold,
            nms_threshold=nms_threshold, detections_per_image=detections_per_image, freeze_backbone=freeze_backbone,
            grad_checkpointing=grad_checkpointing, detection_weight=detection_weight,
            segmentation_weight=segmentation_weight, learned_weighting=learned_weighting,
        )  # fmt: skip
        super().__init__(model, channels_last, max_nonfinite_steps, prediction_dir)

    def training_losses(self, batch: tuple[torch.Tensor, list[dict]]) -> dict[str, torch.Tensor]:
        images, targets = batch
        return self.model(images, targets)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.model.loss_weighting.learned:
            weights = self.model.loss_weighting.weights()
            self.log_dict({f"train/weight/{task}": w.detach() for task, w in weights.items()}, batch_size=len(batch[0]))

    def lr_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return warmup_cosine(optimizer, self.total_steps(), self.hparams.warmup_steps, self.hparams.warmup_factor)

    # --- evaluation -----------------------------------------------------------------------
    def make_metric(self) -> nn.Module:
        return nn.ModuleDict(
            {"detection": detection_metric("coco"), "segmentation": SegmentationScores(self.hparams.num_seg_classes)}
        )

    def update_metric(self, metric: nn.Module, batch: tuple[torch.Tensor, list[dict]], keep: torch.Tensor) -> None:
        images, targets = batch
        results = self.predict_batch(self.model, images, targets)
        kept = keep.tolist()
        with_boxes = [(r, t) for r, t, k in zip(results, targets, kept) if k and bool(t.get("has_boxes", True))]
        if with_boxes:
            metric["detection"].update(
                [{k: r[k] for k in ("boxes", "scores", "labels")} for r, _ in with_boxes],
                [{"boxes": t["orig_boxes"], "labels": t["labels"], "iscrowd": t["iscrowd"]} for _, t in with_boxes],
            )
        for result, target, k in zip(results, targets, kept):
            if k and bool(target.get("has_mask", True)):
                metric["segmentation"].update(result["label_map"][None], target["orig_mask"][None].to(self.device))

    def compute_metric(self, metric: nn.Module) -> dict[str, torch.Tensor]:
        values = summarize("coco", metric["detection"].compute())
        scores = metric["segmentation"].compute()
        values.update({"mIoU": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"]})
        for name, iou in zip(self.seg_class_names(), scores["iou"]):
            if not iou.isnan():
                values[f"iou/{name}"] = iou
        values["score"] = (values["map"].float() + values["mIoU"].float()) / 2
        return values

    # --- prediction -----------------------------------------------------------------------
    def predict_batch(self, model: nn.Module, images: torch.Tensor, metas: Sequence[dict]) -> list[dict[str, Any]]:
        """Per image, in its original pixels (``meta["orig_size"]``): ``boxes`` ``K x 4`` xyxy,
        ``scores``, ``labels`` (object classes) and ``label_map`` (int64 ``h x w``)."""
        output = model(images)
        input_size = tuple(images.shape[-2:])
        results = []
        for det, logits, meta in zip(output["detections"], output["segmentation"], metas):
            orig_size = tuple(int(s) for s in meta["orig_size"])
            det["boxes"] = rescale_boxes(det["boxes"], input_size, orig_size)
            # The image was resized (half-pixel centres), so its logits are resized back the same way.
            det["label_map"] = resize_bilinear(logits[None], orig_size)[0].max(dim=0).indices
            results.append(det)
        return results

    def write_prediction(self, result: dict[str, Any], meta: dict[str, Any], directory: Path) -> None:
        stem = directory / Path(meta["path"]).stem
        label_map = result["label_map"].cpu()
        save_palette_png(label_map, f"{stem}.png")
        write_detections_json(meta["path"], meta["image"].shape[-2:], result, f"{stem}.json", self.class_names())
        picture = draw_label_map(meta["image"], label_map, self.hparams.num_seg_classes)
        boxes = {k: result[k].cpu() for k in ("boxes", "scores", "labels")}
        save_picture(draw_detections(picture, **boxes, class_names=self.class_names()), f"{stem}_joint.jpg")

    # --- class names ----------------------------------------------------------------------
    def class_names(self) -> list[str]:
        """The object classes' names (the datamodule's ``det_class_names``), else indices."""
        return self._names("det_class_names", self.hparams.num_det_classes)

    def seg_class_names(self) -> list[str]:
        """The segmentation classes' names, background first (``seg_class_names``), else indices."""
        return self._names("seg_class_names", self.hparams.num_seg_classes)

    def _names(self, attribute: str, count: int) -> list[str]:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, attribute, None)
        return list(names) if names is not None and len(names) == count else [str(i) for i in range(count)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["seg_class_names"] = self.seg_class_names()
