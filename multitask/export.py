"""``multitask export``: one graph, both tasks' outputs, dynamic batch.

    multitask export --ckpt_path runs/demo/multitask/checkpoints/last.ckpt --output multitask.onnx --image photo.jpg

Outputs: ``boxes`` and ``scores`` as ``ssdlite export`` gives them (decoded, before NMS: the
caller runs it, e.g. ``ssdlite.postprocess.select_detections``), and ``logits`` or ``labels``
as ``deeplab-mobile export`` gives them, all from one backbone pass.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from deeplab_mobile.export import ExportedSegmenter
from engine import Parity, TaskExport
from engine.parity import compare_detection_matches, compare_label_maps, compare_top_detections
from engine.qat import QATPlan
from engine.quantize import Int8Scope
from ssdlite.export import ExportedDetector, detector_int8_scope
from ssdlite.postprocess import select_detections

from .model import MultiTaskModel
from .module import MultiTaskModule
from .qat import qat_plan

SEGMENTATION_SHAPES = {"logits": "N x C_seg x H x W (float)", "labels": "N x H x W (int64)"}


class JointOutputs(nn.Module):
    """``images`` ``N x 3 x H x W`` in [0, 1] -> (``boxes`` ``N x A x 4`` xyxy input pixels,
    ``scores`` ``N x A x C_det``, then ``logits`` ``N x C_seg x H x W`` or, with ``labels``,
    their argmax ``N x H x W`` int64): ``MultiTaskModel.decode``."""

    def __init__(self, model: MultiTaskModel, labels: bool = False) -> None:
        super().__init__()
        self.model = model
        self.labels = labels

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, logits = self.model.decode(images)
        return boxes, scores, logits.argmax(dim=1) if self.labels else logits


class ExportedJoint(nn.Module):
    """``MultiTaskModel`` in eval mode, computed by an exported graph (``run``: images at
    ``image_size`` -> boxes, scores, logits or labels), for the metric of an exported file:
    detections as ``ssdlite.export.ExportedDetector`` gives them, segmentation as
    ``deeplab_mobile.export.ExportedSegmenter`` does, from one run of the graph."""

    def __init__(
        self,
        run: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        image_size: tuple[int, int],
        select: Callable[[torch.Tensor, torch.Tensor], list[dict[str, torch.Tensor]]],
        num_seg_classes: int,
    ) -> None:
        super().__init__()
        self.run, self.image_size = run, image_size
        self._outputs: Sequence[torch.Tensor] = ()
        self.detector = ExportedDetector(lambda images: self._outputs[:2], image_size, select)
        self.segmenter = ExportedSegmenter(lambda images: self._outputs[2:], image_size, num_seg_classes)

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        resized = images
        if tuple(images.shape[-2:]) != self.image_size:
            resized = F.interpolate(images, self.image_size, mode="bilinear", align_corners=False)
        self._outputs = self.run(resized)
        try:
            return {"detections": self.detector(images), "segmentation": self.segmenter(images)}
        finally:
            self._outputs = ()


class MultiTaskExport(TaskExport):
    module_class = MultiTaskModule

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image_size", type=int, default=None, help="square input size (default: the checkpoint's)")
        parser.add_argument("--output_kind", choices=list(SEGMENTATION_SHAPES), default="logits",
                            help="segmentation output: logits N x C x H x W (float) or labels N x H x W (int64 argmax)")
        parser.add_argument("--top_k", type=int, default=20, help="top (anchor, class) pairs per image compared")

    def image_size(self, module: MultiTaskModule, args: argparse.Namespace) -> tuple[int, int]:
        size = args.image_size or module.hparams.image_size
        return size, size

    def graph(self, module: MultiTaskModule, args: argparse.Namespace) -> nn.Module:
        return JointOutputs(module.model, labels=args.output_kind == "labels")

    def output_names(self, args: argparse.Namespace) -> dict[str, str]:
        return {"boxes": "N x A x 4 (xyxy px)", "scores": "N x A x C_det", args.output_kind: SEGMENTATION_SHAPES[args.output_kind]}

    def parity(self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace) -> Parity:
        boxes, scores, segmentation = reference
        exported_boxes, exported_scores, exported_segmentation = exported
        detection = compare_top_detections(boxes, scores, exported_boxes, exported_scores, top_k=args.top_k)
        if args.output_kind == "logits":
            masks = compare_label_maps(segmentation.argmax(dim=1), exported_segmentation.argmax(axis=1))
        else:
            masks = compare_label_maps(segmentation, exported_segmentation)
        return Parity(detection.passed and masks.passed, f"detection: {detection.summary}; segmentation: {masks.summary}")

    def quantized_parity(
        self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace
    ) -> Parity:
        boxes, scores, segmentation = reference
        exported_boxes, exported_scores, exported_segmentation = (torch.as_tensor(output) for output in exported)
        detection = compare_detection_matches(
            select_detections(boxes, scores), select_detections(exported_boxes, exported_scores)
        )
        if args.output_kind == "logits":
            segmentation, exported_segmentation = segmentation.argmax(dim=1), exported_segmentation.argmax(dim=1)
        masks = compare_label_maps(segmentation, exported_segmentation.numpy(), min_agreement=0.98)
        return Parity(detection.passed and masks.passed, f"detection: {detection.summary}; segmentation: {masks.summary}")

    def int8_scope(self, graph: nn.Module, args: argparse.Namespace) -> Int8Scope:
        # The detector's int8 part as SSDLite's, and the whole segmentation side, as DeepLab's.
        detector = detector_int8_scope("model.detector", graph.model.detector)
        return Int8Scope([*detector.static, "model.seg_adapter", "model.segmenter"], detector.dynamic)

    def qat_plan(self, module: MultiTaskModule, args: argparse.Namespace) -> QATPlan:
        return qat_plan(module.model, self.image_size(module, args), labels=args.output_kind == "labels")

    def evaluation_model(
        self,
        module: MultiTaskModule,
        run: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        image_size: tuple[int, int],
        args: argparse.Namespace,
    ) -> nn.Module:
        return ExportedJoint(run, image_size, module.model.detector.select, module.hparams.num_seg_classes)
