"""``<task> export``: a checkpoint to a deployable graph, checked in its runtime against PyTorch.

One command for every task: arguments, checkpoint loading (no ImageNet weights needed: the
checkpoint holds every weight), writing, the runtime parity check on a real image and the
report. A task describes only what differs, as a ``TaskExport``: its graph (float images
``N x 3 x H x W`` in [0, 1] in, the task's tensors out), its output names and shapes, its input
size and its parity rule. LightningCLI has no place for a command without a Trainer, so the
task CLI hands ``export`` to ``run_export``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .checkpoint_checks import load_module_checkpoint
from .parity import Parity, describe_export, load_parity_batch, run_onnx
from .task import TaskModule


class TaskExport:
    """What one task's export is; ``run_export`` does the rest. Subclasses set ``module_class``
    and implement ``graph``, ``output_names``, ``image_size`` and ``parity``."""

    module_class: type[TaskModule]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The task's own options."""

    def load_overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        """Arguments of ``module_class`` given at load time (run-time options such as the output stride)."""
        return {}

    def image_size(self, module: TaskModule, args: argparse.Namespace) -> tuple[int, int]:
        """The fixed ``(H, W)`` the graph is exported for."""
        raise NotImplementedError

    def graph(self, module: TaskModule, args: argparse.Namespace) -> nn.Module:
        """The exported computation: ``images`` ``N x 3 x H x W`` in [0, 1] -> the outputs."""
        raise NotImplementedError

    def output_names(self, args: argparse.Namespace) -> dict[str, str]:
        """Output name -> its shape, in the graph's output order (the shape is for the report)."""
        raise NotImplementedError

    def parity(self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace) -> Parity:
        """Compare the runtime's outputs with PyTorch's on the same images."""
        raise NotImplementedError


INPUT_NAME = "images"


def export_onnx(
    graph: nn.Module,
    path: str | Path,
    image_size: tuple[int, int],
    output_names: Sequence[str],
    opset_version: int = 18,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``graph`` (in eval mode; its mode is restored) as one self-contained ONNX file.

    Input ``images``: float32 ``N x 3 x H x W`` RGB in [0, 1], ``(H, W) = image_size``, ``N``
    dynamic when ``dynamic_batch``. The graph runs once before tracing (a model may fill a
    cache there, such as SSDLite's anchors, so the export reads it rather than writes it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = graph.training
    graph.eval()
    try:
        # Batch 2 while tracing, so the exporter cannot specialise the batch dimension to 1.
        example = torch.rand(2 if dynamic_batch else 1, 3, *image_size)
        with torch.no_grad():
            graph(example)
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                opset_version=opset_version,
                dynamo=True,  # torch's default; needs onnxscript (the `export` extra)
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None,
                external_data=False,  # one file: these models' weights are far under protobuf's 2 GB
            )
    finally:
        graph.train(was_training)
    return path


def run_export(task: TaskExport, prog: str, argv: Sequence[str] | None = None) -> Parity:
    """Export a checkpoint, check the file in onnxruntime on ``--image`` and its mirror, print the
    result; exits with a message when the check fails."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    name = task.module_class.__name__
    parser.add_argument("--ckpt_path", required=True, help=f"a {name} checkpoint (written by fit)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--image", required=True, help="a real image (any format datamodules reads) for the parity check")
    parser.add_argument("--opset", type=int, default=18)
    task.add_arguments(parser)
    args = parser.parse_args(argv)
    for option in ("ckpt_path", "image"):
        if not Path(getattr(args, option)).is_file():
            parser.error(f"--{option} {getattr(args, option)}: no such file")

    module = load_module_checkpoint(task.module_class, args.ckpt_path, **task.load_overrides(args))
    graph = task.graph(module, args).eval()
    size = task.image_size(module, args)
    outputs = task.output_names(args)
    path = export_onnx(graph, args.output, size, list(outputs), opset_version=args.opset)
    print(describe_export(path, (3, *size), [f"{name} {shape}" for name, shape in outputs.items()]))

    images = load_parity_batch(args.image, size)
    with torch.no_grad():
        reference = graph(images)
    reference = reference if isinstance(reference, tuple) else (reference,)
    parity = task.parity(reference, run_onnx(path, images), args)
    print(f"onnxruntime vs PyTorch on {args.image} (+ mirror, batch 2): {parity.summary}")
    if not parity.passed:
        raise SystemExit(f"{path}: onnxruntime disagrees with PyTorch")
    return parity
