"""``ssdlite export``: decoded boxes and class scores before NMS, dynamic batch.

    ssdlite export --ckpt_path runs/demo/ssdlite/checkpoints/last.ckpt --output ssdlite.onnx --image photo.jpg

By default NMS stays out of the graph, as runtimes differ in how they want it (onnxruntime's
``NonMaxSuppression``, TensorRT's EfficientNMS plug-in, or host code such as
``ssdlite.postprocess.select_detections`` on the two outputs). ``--nms`` (ONNX) puts it
inside: padded detections out (``ssdlite.export_nms``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from engine import Parity, TaskExport
from engine.qat import QATPlan
from engine import export_onnx as export_graph
from engine.parity import compare_detection_matches, compare_top_detections
from engine.quantize import Int8Scope

from .export_nms import OUTPUTS as NMS_OUTPUTS
from .export_nms import DetectionsWithNMS, as_detections, compare_selected_detections, unpad_detections
from .model import SSDLite
from .postprocess import select_detections
from .qat import qat_plan
from .module import SSDLiteModule

OUTPUTS = {"boxes": "N x A x 4 (xyxy px)", "scores": "N x A x C"}


class DecodedDetections(nn.Module):
    """``images`` ``N x 3 x H x W`` float in [0, 1] -> (``boxes`` ``N x A x 4`` xyxy in input
    pixels, clipped; ``scores`` ``N x A x C``, softmax or sigmoid as trained, background dropped):
    ``SSDLite.decode``, before NMS. Anchors are those of the export size."""

    def __init__(self, model: SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode(images)


def export_onnx(model: SSDLite, path: str | Path, image_size: int = 320, opset_version: int = 18) -> Path:
    """Write ``model`` as one ONNX file from ``images`` (``N`` dynamic, ``image_size`` squared)
    to ``boxes`` and ``scores`` (``DecodedDetections``); returns the path."""
    return export_graph(DecodedDetections(model), path, (image_size, image_size), list(OUTPUTS), opset_version)


class ExportedDetector(nn.Module):
    """``SSDLite`` in eval mode, computed by an exported graph: ``images`` ``N x 3 x h x w`` in
    [0, 1] (any size) are resized to the export size, ``run`` gives their boxes (its first
    output, xyxy in export pixels) and the rest (decoded scores; or scores, labels and counts
    with NMS inside), boxes are scaled back to the input's pixels and ``select`` (the model's
    thresholds, NMS and top-k; or ``unpad_detections``) gives the detections. Returns per image
    ``boxes`` ``K x 4`` xyxy in input pixels, ``scores``, ``labels``."""

    def __init__(
        self,
        run: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        image_size: tuple[int, int],
        select: Callable[..., list[dict[str, torch.Tensor]]],
    ) -> None:
        super().__init__()
        self.run, self.image_size, self.select = run, image_size, select

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        (height, width), (export_h, export_w) = images.shape[-2:], self.image_size
        if (height, width) != self.image_size:
            images = F.interpolate(images, self.image_size, mode="bilinear", align_corners=False)
        boxes, *rest = self.run(images)
        scale = boxes.new_tensor([width / export_w, height / export_h, width / export_w, height / export_h])
        return self.select(boxes * scale, *rest)


def detector_int8_scope(prefix: str, model: SSDLite) -> Int8Scope:
    """The int8 part of ``model``, an ``SSDLite`` at submodule path ``prefix``: backbone, extras
    and the depthwise layers of the predictors, static; the predictors' 1 x 1 convs dynamic
    (int8 weights and inputs, float outputs): int8 class logits at one calibrated scale cost
    more accuracy than the rest of the network together, and int8 box offsets moved the joint
    model's boxes off the float ones (README). The head's concatenation over feature maps and
    the box decoding (pixels) stay float."""
    predictors = range(len(model.head.classification))
    heads = ("classification", "regression")
    return Int8Scope(
        static=[f"{prefix}.features", *(f"{prefix}.head.{head}.{i}.0" for head in heads for i in predictors)],
        dynamic=[f"{prefix}.head.{head}.{i}.1" for head in heads for i in predictors],
    )


class SSDLiteExport(TaskExport):
    module_class = SSDLiteModule

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image_size", type=int, default=None, help="square input size (default: the checkpoint's)")
        parser.add_argument("--top_k", type=int, default=20, help="top (anchor, class) pairs per image compared")
        parser.add_argument("--nms", action="store_true",
                            help="NMS inside the graph (ONNX only), with the checkpoint's thresholds and counts: padded "
                                 "boxes, scores, labels and num_detections out")

    def image_size(self, module: SSDLiteModule, args: argparse.Namespace) -> tuple[int, int]:
        size = args.image_size or module.hparams.image_size
        return size, size

    def graph(self, module: SSDLiteModule, args: argparse.Namespace) -> nn.Module:
        if not args.nms:
            return DecodedDetections(module.model)
        if args.format != "onnx":
            raise SystemExit(f"--nms writes ONNX (NonMaxSuppression); {args.format} has no NMS kernel: drop --nms")
        return DetectionsWithNMS(module.model)

    def output_names(self, args: argparse.Namespace) -> dict[str, str]:
        return NMS_OUTPUTS if args.nms else OUTPUTS

    def parity(self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace) -> Parity:
        if args.nms:
            return compare_selected_detections(as_detections(reference), as_detections(exported))
        return compare_top_detections(*reference, *exported, top_k=args.top_k)

    def quantized_parity(
        self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace
    ) -> Parity:
        # Detections as the caller keeps them (NMS with the library's defaults), not raw anchors:
        # int8 may reorder near-equal anchors of one object.
        if args.nms:
            return compare_detection_matches(as_detections(reference), as_detections(exported))
        boxes, scores = (torch.as_tensor(output) for output in exported)
        return compare_detection_matches(select_detections(*reference), select_detections(boxes, scores))

    def int8_scope(self, graph: nn.Module, args: argparse.Namespace) -> Int8Scope:
        return detector_int8_scope("model", graph.model)

    def qat_plan(self, module: SSDLiteModule, args: argparse.Namespace) -> QATPlan:
        return qat_plan(module.model, self.image_size(module, args))

    def metric_name(self, module: SSDLiteModule) -> str:
        return "ap50_voc07" if module.hparams.metric == "voc07" else "map_50"

    def evaluation_model(
        self,
        module: SSDLiteModule,
        run: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        image_size: tuple[int, int],
        args: argparse.Namespace,
    ) -> nn.Module:
        return ExportedDetector(run, image_size, unpad_detections if args.nms else module.model.select)
