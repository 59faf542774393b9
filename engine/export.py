"""``<task> export``: a checkpoint to a deployable graph, checked in its runtime against PyTorch.

One command for every task: arguments, checkpoint loading (no ImageNet weights needed: the
checkpoint holds every weight), writing (ONNX for onnxruntime, or an ExecuTorch ``.pte`` with
the XNNPACK delegate; float, or int8 calibrated on the training run's images), the runtime
parity check on a real image, and the report written beside the file (size, latency, the
validation metric of the float graph and of the int8 file). A task describes only what
differs, as a ``TaskExport``: its graph (float images ``N x 3 x H x W`` in [0, 1] in, the task's
tensors out), its output names and shapes, its input size, its parity rules, the part of it
that int8 quantizes, and how its metric reads the graph's outputs. LightningCLI has no place
for a command without a Trainer, so the task CLI hands ``export`` to ``run_export``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .calibration import CalibrationSet, calibration_set
from .checkpoint_checks import load_module_checkpoint
from .executorch_export import export_executorch, lower_to_executorch
from .export_report import evaluate_with, write_report
from .exported import ExportedGraph, load_exported
from .extras import require_extra
from .parity import Parity, describe_export, load_parity_batch
from .qat import QATPlan, finetune_qat
from .quantize import Int8Scope, backbone_stems, quantize_onnx
from .task import TaskModule


class TaskExport:
    """What one task's export is; ``run_export`` does the rest. Subclasses set ``module_class``
    and implement ``graph``, ``output_names``, ``image_size`` and ``parity``; for int8 exports
    ``quantized_parity`` (and ``int8_scope`` to keep part of the graph float); for the
    report's metric (``--config``) ``metric_name`` and ``evaluation_model``."""

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

    def quantized_parity(
        self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace
    ) -> Parity:
        """Compare an int8 file's outputs with the float PyTorch graph's (a looser rule than ``parity``)."""
        raise NotImplementedError

    def int8_scope(self, graph: nn.Module, args: argparse.Namespace) -> Int8Scope:
        """The submodules of ``graph`` that int8 quantizes (default: the whole graph, static);
        the command keeps every backbone's stem float on top (``command_int8_scope``)."""
        return Int8Scope()

    def qat_plan(self, module: TaskModule, args: argparse.Namespace) -> QATPlan:
        """What quantization-aware fine-tuning (``--qat_steps``, ``engine.qat``) trains and exports."""
        raise SystemExit(f"--qat_steps: {type(module).__name__} has no quantization-aware fine-tuning (post-training int8 only)")

    def metric_name(self, module: TaskModule) -> str:
        """The key of ``module.compute_metric`` that the report compares (float vs int8): the
        metric the task's checkpoints watch, unless the task names a deployment metric."""
        return module.MONITOR

    def evaluation_model(
        self,
        module: TaskModule,
        run: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        image_size: tuple[int, int],
        args: argparse.Namespace,
    ) -> nn.Module:
        """A stand-in for ``module.model`` in ``module.update_metric``: images ``N x 3 x h x w``
        of any size -> what the model returns in eval mode, computed by ``run`` (the graph's
        outputs, as tensors, for images ``N x 3 x H x W`` at ``image_size``)."""
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


FORMAT_SUFFIXES = {"onnx": ".onnx", "executorch": ".pte"}
RUNTIMES = {"onnx": "onnxruntime", "executorch": "ExecuTorch"}


@dataclass(frozen=True)
class ExportResult(Parity):
    """``run_export``'s outcome: the parity check (``passed``, ``summary``), the written file and its report."""

    path: Path = Path()
    report: dict[str, Any] = field(default_factory=dict)


def add_export_arguments(parser: argparse.ArgumentParser, task: TaskExport) -> None:
    """The options every task's ``export`` takes, then the task's own."""
    name = task.module_class.__name__
    parser.add_argument("--ckpt_path", required=True, help=f"a {name} checkpoint (written by fit)")
    parser.add_argument("--output", required=True, help="the file to write: .onnx, or .pte with --format executorch")
    parser.add_argument("--image", required=True, help="a real image (any format datamodules reads) for the parity check")
    parser.add_argument("--format", choices=list(FORMAT_SUFFIXES), default="onnx",
                        help="onnx (onnxruntime, dynamic batch) or executorch (.pte, XNNPACK delegate, batch 1)")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: post-training static quantization calibrated on training images (needs --config)")
    parser.add_argument("--config", default=None,
                        help="the training run's config.yaml (beside its logs): calibration images from its training "
                             "split, and the validation metric of the float graph and the int8 file in the report")
    parser.add_argument("--calibration_images", type=int, default=200, help="training images to calibrate int8 on")
    parser.add_argument("--qat_steps", type=int, default=0,
                        help="int8 .pte by quantization-aware fine-tuning: this many steps on the run's training batches "
                             "(--config) from the checkpoint, instead of post-training calibration")
    parser.add_argument("--qat_lr", type=float, default=3e-3, help="SGD learning rate of --qat_steps")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the latency in the report")
    parser.add_argument("--opset", type=int, default=18)
    task.add_arguments(parser)


def check_export_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for option in ("ckpt_path", "image") + (("config",) if args.config else ()):
        if not Path(getattr(args, option)).is_file():
            parser.error(f"--{option} {getattr(args, option)}: no such file")
    suffix = FORMAT_SUFFIXES[args.format]
    if Path(args.output).suffix != suffix:
        parser.error(f"--output {args.output}: --format {args.format} writes a {suffix} file")
    if args.quantize == "int8" and not args.config:
        parser.error("--quantize int8 needs --config, the training run's config.yaml (its training images calibrate)")
    if args.qat_steps and (args.quantize != "int8" or args.format != "executorch"):
        parser.error("--qat_steps fine-tunes an int8 ExecuTorch program: add --format executorch --quantize int8")


def command_int8_scope(task: TaskExport, graph: nn.Module, args: argparse.Namespace) -> Int8Scope:
    """The int8 part of ``graph`` that ``export --quantize int8`` uses: ``task.int8_scope`` with
    every backbone's stem kept float (``engine.quantize.backbone_stems``)."""
    scope = task.int8_scope(graph, args)
    return dataclasses.replace(scope, kept_float=[*scope.kept_float, *backbone_stems(graph)])


def run_export(task: TaskExport, prog: str, argv: Sequence[str] | None = None) -> ExportResult:
    """Export a checkpoint (ONNX or ExecuTorch, float or int8), check the file in its runtime on
    ``--image`` and its mirror, measure it and write its report beside it (``<file>.json``);
    print both. Exits with a message when a float file disagrees with PyTorch."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_export_arguments(parser, task)
    args = parser.parse_args(argv)
    check_export_arguments(parser, args)
    if args.format == "executorch" or args.quantize == "int8":  # before any work: a missing extra says so at once
        require_extra("mobile", "executorch.exir", f"--format {args.format} --quantize {args.quantize}")

    module = load_module_checkpoint(task.module_class, args.ckpt_path, **task.load_overrides(args)).eval()
    graph = task.graph(module, args).eval()
    size = task.image_size(module, args)
    outputs = task.output_names(args)
    datamodule = None
    if args.config:
        from datamodules.check import datamodule_from_config  # the run's datamodule, as `datamodules.check` builds it

        datamodule = datamodule_from_config(Path(args.config))
    quantized = args.quantize == "int8"
    qat = args.qat_steps > 0
    calibration = calibration_set(datamodule, args.calibration_images, size) if quantized and not qat else None
    scope = command_int8_scope(task, graph, args)
    path = Path(args.output)
    qat_summary = None
    if qat:
        trained = finetune_qat(task.qat_plan(module, args), datamodule, size, args.qat_steps, args.qat_lr, scope)
        lower_to_executorch(trained.graph, size, path)
        qat_summary = trained.summary
    elif args.format == "executorch":
        export_executorch(graph, path, size, None if calibration is None else calibration.images, scope)
    elif calibration is None:
        export_onnx(graph, path, size, list(outputs), opset_version=args.opset)
    else:
        with tempfile.TemporaryDirectory() as folder:
            float_path = export_onnx(graph, Path(folder) / path.name, size, list(outputs), opset_version=args.opset)
            quantize_onnx(float_path, path, calibration.images, scope)
    print(describe_export(path, (3, *size), [f"{name} {shape}" for name, shape in outputs.items()]))
    if calibration is not None:
        print(f"int8: {calibration.summary()}" + "".join(f"\n  skipped {line}" for line in calibration.skipped))
    if qat_summary is not None:
        print(f"int8 by quantization-aware fine-tuning: {json.dumps(qat_summary)}")

    exported = load_exported(path, threads=args.threads)
    images = load_parity_batch(args.image, size)
    with torch.no_grad():
        reference = graph(images)
    reference = reference if isinstance(reference, tuple) else (reference,)
    results = [output.numpy() for output in exported(images)]
    runtime = RUNTIMES[args.format]
    if not quantized:
        parity = task.parity(reference, results, args)
        print(f"{runtime} vs PyTorch on {args.image} (+ mirror): {parity.summary}")
        if not parity.passed:
            raise SystemExit(f"{path}: {runtime} disagrees with PyTorch")
    else:
        parity = task.quantized_parity(reference, results, args)
        # After quantization-aware fine-tuning the int8 file is another model: the float
        # checkpoint's outputs are a reference only, the validation metric is the check.
        fine_tuned = " (fine-tuned by --qat_steps: compare the validation metric)" if qat else ""
        print(f"int8 {runtime} vs float PyTorch on {args.image} (+ mirror): {parity.summary}{fine_tuned}")

    report = measure(task, module, graph, exported, datamodule, calibration, qat_summary, parity, args)
    print(f"report {write_report(path, report)}: {json.dumps(report)}")
    return ExportResult(parity.passed, parity.summary, path, report)


def measure(
    task: TaskExport,
    module: TaskModule,
    graph: nn.Module,
    exported: ExportedGraph,
    datamodule: Any,
    calibration: CalibrationSet | None,
    qat: dict[str, Any] | None,
    parity: Parity,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The report of a written file (``engine.export_report``): ``format``, ``quantization``,
    ``size_bytes``, ``metric_name``, ``float`` and ``quantized`` (the validation metric of the
    float PyTorch graph and of the int8 file, at the export size; None without ``--config``),
    ``latency_ms`` (median, batch 1, ``--threads``), and how it was made (``calibration`` or ``qat``)."""
    metric_name = task.metric_name(module)
    report: dict[str, Any] = {
        "format": args.format,
        "quantization": None if args.quantize == "none" else args.quantize,
        "size_bytes": exported.path.stat().st_size,
        "metric_name": metric_name,
        "float": None,
        "quantized": None,
        "latency_ms": round(exported.latency_ms(), 2),
        "threads": args.threads,
        "input_shape": [exported.batch or "N", 3, *exported.image_size],
        "checkpoint": str(args.ckpt_path),
        "parity": parity.summary,
    }
    if calibration is not None:
        report["calibration"] = {"images": len(calibration.images), "requested": calibration.requested,
                                 "skipped": len(calibration.skipped), "skipped_files": calibration.skipped}
    if qat is not None:
        report["qat"] = qat
    if datamodule is not None:
        def on_graph(images: torch.Tensor) -> list[torch.Tensor]:
            outputs = graph(images)
            return list(outputs) if isinstance(outputs, tuple) else [outputs]

        float_metrics = evaluate_with(module, task.evaluation_model(module, on_graph, exported.image_size, args), datamodule)
        report.update({"float": float_metrics.get(metric_name), "float_metrics": float_metrics})
        if args.quantize == "int8":
            quantized = evaluate_with(module, task.evaluation_model(module, exported, exported.image_size, args), datamodule)
            report.update({"quantized": quantized.get(metric_name), "quantized_metrics": quantized})
    return report
