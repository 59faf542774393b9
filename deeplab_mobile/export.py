"""``deeplab-mobile export``: logits or a label map, dynamic batch, fixed image size.

    deeplab-mobile export --ckpt_path runs/demo/deeplab/checkpoints/last.ckpt --output deeplab.onnx --image photo.jpg

The export is single-scale at the model's output stride; multi-scale + flip ("MF") is an
evaluation protocol, left to the caller (run the graph at several sizes and average).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from engine import Parity, TaskExport
from engine import export_onnx as export_graph
from engine.parity import compare_label_maps
from engine.qat import QATPlan

from .model import DeepLab
from .module import DeepLabModule

OutputKind = Literal["logits", "labels"]
OUTPUT_SHAPES = {"logits": "N x C x H x W (float)", "labels": "N x H x W (int64)"}


class LabelMap(nn.Module):
    """``images`` ``N x 3 x H x W`` in [0, 1] -> ``labels`` int64 ``N x H x W`` (argmax of the
    logits of ``model``, a ``DeepLab`` or a graph computing its logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).argmax(dim=1)


def export_onnx(
    model: DeepLab, path: str | Path, image_size: tuple[int, int] = (513, 513), output: OutputKind = "logits",
    opset_version: int = 18,
) -> Path:
    """Write ``model`` as one ONNX file from ``images`` (``N`` dynamic, ``image_size = (H, W)``)
    to ``logits`` float32 ``N x C x H x W`` or ``labels`` int64 ``N x H x W``; returns the path."""
    if output not in OUTPUT_SHAPES:
        raise ValueError(f"output must be 'logits' or 'labels', got {output!r}")
    graph = LabelMap(model) if output == "labels" else model
    return export_graph(graph, path, tuple(image_size), [output], opset_version)


class ExportedSegmenter(nn.Module):
    """``DeepLab`` in eval mode, computed by an exported graph: ``images`` ``N x 3 x h x w`` in
    [0, 1] (any size) are resized to the export size and ``run`` gives their logits (or labels,
    made one-hot), resized back to ``N x C x h x w`` (bilinear; labels nearest)."""

    def __init__(
        self, run: Callable[[torch.Tensor], Sequence[torch.Tensor]], image_size: tuple[int, int], num_classes: int
    ) -> None:
        super().__init__()
        self.run, self.image_size, self.num_classes = run, image_size, num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = tuple(images.shape[-2:])
        if size != self.image_size:
            images = F.interpolate(images, self.image_size, mode="bilinear", align_corners=False)
        (output,) = self.run(images)
        if output.dim() == 3:  # a label map
            output = F.one_hot(output.long(), self.num_classes).permute(0, 3, 1, 2).float()
            return F.interpolate(output, size, mode="nearest") if size != self.image_size else output
        return F.interpolate(output, size, mode="bilinear", align_corners=False) if size != self.image_size else output


class DeepLabExport(TaskExport):
    module_class = DeepLabModule

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image_size", type=int, nargs=2, default=[513, 513], metavar=("H", "W"))
        parser.add_argument("--output_kind", choices=list(OUTPUT_SHAPES), default="logits",
                            help="logits N x C x H x W (float) or labels N x H x W (int64 argmax)")
        parser.add_argument("--output_stride", type=int, default=16, choices=[8, 16, 32])

    def load_overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"output_stride": args.output_stride}

    def image_size(self, module: DeepLabModule, args: argparse.Namespace) -> tuple[int, int]:
        return tuple(args.image_size)

    def graph(self, module: DeepLabModule, args: argparse.Namespace) -> nn.Module:
        return LabelMap(module.model) if args.output_kind == "labels" else module.model

    def output_names(self, args: argparse.Namespace) -> dict[str, str]:
        return {args.output_kind: OUTPUT_SHAPES[args.output_kind]}

    def parity(self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace) -> Parity:
        (output,), (exported_output,) = reference, exported
        if args.output_kind == "logits":
            return compare_label_maps(output.argmax(dim=1), exported_output.argmax(axis=1))
        return compare_label_maps(output, exported_output)

    def quantized_parity(
        self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace
    ) -> Parity:
        (output,), (exported_output,) = reference, exported
        if args.output_kind == "logits":
            return compare_label_maps(output.argmax(dim=1), exported_output.argmax(axis=1), min_agreement=0.98)
        return compare_label_maps(output, exported_output, min_agreement=0.98)

    def qat_plan(self, module: DeepLabModule, args: argparse.Namespace) -> QATPlan:
        # The model's logits, fake-quantized, under the training loss; labels are their argmax.
        return QATPlan(
            module.model,
            lambda outputs, batch: module.loss(outputs[0], batch[1]),
            lambda converted: LabelMap(converted) if args.output_kind == "labels" else converted,
        )

    def evaluation_model(
        self,
        module: DeepLabModule,
        run: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        image_size: tuple[int, int],
        args: argparse.Namespace,
    ) -> nn.Module:
        return ExportedSegmenter(run, image_size, module.hparams.num_classes)
