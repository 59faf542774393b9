"""``ssdlite export``: decoded boxes and class scores before NMS, dynamic batch.

    ssdlite export --ckpt_path runs/demo/ssdlite/checkpoints/last.ckpt --output ssdlite.onnx --image photo.jpg

NMS stays out of the graph: torchvision's per-class NMS does not export (its loop over
classes defeats the exporter), and runtimes differ in how they want it (onnxruntime's
``NonMaxSuppression``, TensorRT's EfficientNMS plug-in, or host code such as
``ssdlite.postprocess.select_detections`` on the two outputs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from engine import Parity, TaskExport
from engine import export_onnx as export_graph
from engine.parity import compare_top_detections

from .model import SSDLite
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


class SSDLiteExport(TaskExport):
    module_class = SSDLiteModule

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image_size", type=int, default=None, help="square input size (default: the checkpoint's)")
        parser.add_argument("--top_k", type=int, default=20, help="top (anchor, class) pairs per image compared")

    def image_size(self, module: SSDLiteModule, args: argparse.Namespace) -> tuple[int, int]:
        size = args.image_size or module.hparams.image_size
        return size, size

    def graph(self, module: SSDLiteModule, args: argparse.Namespace) -> nn.Module:
        return DecodedDetections(module.model)

    def output_names(self, args: argparse.Namespace) -> dict[str, str]:
        return OUTPUTS

    def parity(self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace) -> Parity:
        return compare_top_detections(*reference, *exported, top_k=args.top_k)
