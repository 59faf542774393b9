"""Mobile deployment rows: each task's exported file (ExecuTorch, onnxruntime; fp32, int8) vs eager.

For each task -- SSDLite (320 px, 80 classes, width 1.0), Mobile DeepLabv3 (reduced head,
OS16, 512 px, 21 classes) and the joint multitask model (320 px) -- the graph its ``export``
command writes (``TaskExport.graph``: float images ``1 x 3 x H x W`` in [0, 1] in; decoded
boxes and scores before NMS, and / or logits, out) is written into a temporary folder by the
project's own export code as an ExecuTorch fp32 ``.pte`` and int8 ``.pte`` (PT2E, XNNPACK;
``engine.executorch_export``), an ONNX fp32 file and an int8 QDQ file (``engine.export``,
``engine.quantize``), int8 over the task's ``int8_scope`` only, and run by
``engine.exported.load_exported``. Rows, batch 1, ``--threads`` (2) for torch, ExecuTorch's
threadpool and onnxruntime alike, all in this process:

- each file's latency vs the same graph eager on the inference fast path
  (``core.fuse.optimize_for_inference``, as ``benchmarks.models`` runs ours);
- each file's size in MB (int8 vs fp32, per runtime);
- the peers, eager with random weights: the ExecuTorch fp32 detector plus our NMS on the host
  vs torchvision's ``ssdlite320_mobilenet_v3_large`` end to end (``benchmarks.models``'
  thresholds), and the ExecuTorch fp32 segmenter vs ``lraspp_mobilenet_v3_large`` at 512.

Two runtimes alternate in runs of 6 calls, the first of each dropped (``harness.time_interleaved``
``block``); the medians are compared. Weights and calibration images (16) are random: times and
sizes do not depend on them, int8 accuracy does and is not measured here -- the float vs int8
validation metric of a trained checkpoint is in the report of ``<task> export --quantize int8``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from core.fuse import optimize_for_inference
from deeplab_mobile import build_deeplab
from deeplab_mobile.export import DeepLabExport
from engine.executorch_export import export_executorch
from engine.export import command_int8_scope, export_onnx
from engine.exported import ExportedGraph, load_exported
from engine.extras import require_extra
from engine.quantize import Int8Scope, quantize_onnx
from multitask import build_multitask
from multitask.export import JointOutputs, MultiTaskExport
from ssdlite import build_ssdlite
from ssdlite.export import DecodedDetections, SSDLiteExport
from ssdlite.postprocess import select_detections

from .harness import Row, time_interleaved
from .models import (
    DETECTIONS_PER_IMAGE, NMS_THRESHOLD, NUM_CLASSES, SCORE_THRESHOLD, TOPK_PER_CLASS, NormalisedPeer, Timing,
    torchvision_detector, uint8_images,
)  # fmt: skip

SEG_CLASSES = 21
BLOCK = 6  # calls per run when two runtimes alternate (harness.time_interleaved)
# What the tasks' export commands take by default: decoded detections without NMS, logits.
EXPORT_ARGS = argparse.Namespace(nms=False, output_kind="logits")


@dataclass
class MobileTask:
    """One task's export: its graph (eval mode), input size, output names and int8 part."""

    name: str
    graph: nn.Module
    image_size: tuple[int, int]
    outputs: list[str]
    int8_scope: Int8Scope


def mobile_tasks() -> list[MobileTask]:
    """The three graphs as ``TaskExport.graph`` builds them, on random-weight models."""
    detector = DecodedDetections(build_ssdlite(num_classes=NUM_CLASSES, width_mult=1.0, image_size=320)).eval()
    segmenter = build_deeplab(num_classes=SEG_CLASSES, output_stride=16, head="reduced").eval()
    joint = JointOutputs(build_multitask(num_det_classes=NUM_CLASSES, num_seg_classes=SEG_CLASSES, image_size=320))
    tasks = []
    for name, graph, size, export in (
        ("SSDLite 320", detector, 320, SSDLiteExport()),
        ("DeepLab reduced 512", segmenter, 512, DeepLabExport()),
        ("multitask 320", joint.eval(), 320, MultiTaskExport()),
    ):
        outputs = list(export.output_names(EXPORT_ARGS))
        tasks.append(MobileTask(name, graph, (size, size), outputs, command_int8_scope(export, graph, EXPORT_ARGS)))
    return tasks


def write_files(task: MobileTask, folder: Path, calibration: torch.Tensor) -> dict[str, Path]:
    """The four deployable files of ``task``, by variant name."""
    stem, size = folder / task.name.replace(" ", "_"), task.image_size
    onnx_fp32 = export_onnx(task.graph, f"{stem}.onnx", size, task.outputs)
    return {
        "ExecuTorch fp32": export_executorch(task.graph, f"{stem}.pte", size),
        "ExecuTorch int8": export_executorch(task.graph, f"{stem}_int8.pte", size, calibration, task.int8_scope),
        "onnxruntime fp32": onnx_fp32,
        "onnxruntime int8": quantize_onnx(onnx_fp32, f"{stem}_int8.onnx", calibration, task.int8_scope),
    }


def on_runtime(
    exported: ExportedGraph, images: torch.Tensor, after: Callable[..., object] | None = None
) -> Callable[[], None]:
    """One batch-1 call of ``exported`` (then ``after`` on its outputs), torch on one thread
    meanwhile: as deployed, the runtime owns the cores (``benchmarks.models.onnx_rows``)."""

    def call() -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                outputs = exported(images.float().div_(255))
                if after is not None:
                    after(*outputs)
        finally:
            torch.set_num_threads(threads)

    return call


def eager(model: nn.Module, images: torch.Tensor, as_list: bool = False) -> Callable[[], None]:
    """One call of ``model`` on ``images`` scaled to [0, 1] (a list of images when ``as_list``)."""

    @torch.inference_mode()
    def call() -> None:
        x = images.float().div_(255)
        model(list(x) if as_list else x)

    return call


def timed_pair(ours: Callable[[], None], peer: Callable[[], None], timing: Timing) -> tuple[float, float]:
    return time_interleaved(
        ours, peer, warmup=timing.warmup, min_repeats=timing.min_repeats, min_seconds=timing.min_seconds, block=BLOCK
    )


def task_rows(task: MobileTask, files: dict[str, Path], timing: Timing, threads: int) -> list[Row]:
    """Each file vs the eager fast path of the same graph, then the int8 / fp32 file sizes."""
    images = uint8_images(1, task.image_size[0])
    fast = eager(optimize_for_inference(task.graph), images)
    rows = []
    for variant, path in files.items():
        ours_s, peer_s = timed_pair(on_runtime(load_exported(path, threads), images), fast, timing)
        rows.append(Row.timed(
            name=f"{task.name} {variant}, batch 1", ours=f"{variant} ({path.suffix})", peer="same graph eager, fast path",
            ours_s=ours_s, peer_s=peer_s,
            settings={"size": task.image_size[0], "outputs": ",".join(task.outputs), "alternation": f"runs of {BLOCK}"},
        ))  # fmt: skip
    for runtime in ("ExecuTorch", "onnxruntime"):
        int8, fp32 = (files[f"{runtime} {bits}"].stat().st_size / 1e6 for bits in ("int8", "fp32"))
        rows.append(Row(
            name=f"{task.name} {runtime} file size", ours=f"int8 {files[f'{runtime} int8'].suffix}",
            peer=f"fp32 {files[f'{runtime} fp32'].suffix}", ours_ms=int8, peer_ms=fp32, ratio=int8 / fp32, unit="MB",
            settings={"int8 modules": "all" if task.int8_scope.static is None else len(task.int8_scope.static),
                      "dynamic int8 modules": len(task.int8_scope.dynamic) if runtime == "ExecuTorch" else 0},
        ))  # fmt: skip
    return rows


def peer_rows(detector: Path, segmenter: Path, timing: Timing, threads: int) -> list[Row]:
    """Our ExecuTorch fp32 files vs torchvision's eager SSDLite320 (NMS on both sides) and LR-ASPP."""
    images = uint8_images(1, 320)

    def nms(boxes: torch.Tensor, scores: torch.Tensor) -> None:
        select_detections(boxes, scores, SCORE_THRESHOLD, NMS_THRESHOLD, TOPK_PER_CLASS, DETECTIONS_PER_IMAGE)

    ours = on_runtime(load_exported(detector, threads), images, nms)
    ours_s, peer_s = timed_pair(ours, eager(torchvision_detector(), images, as_list=True), timing)
    rows = [Row.timed(
        name="detection 320, batch 1, end to end", ours="SSDLite ExecuTorch fp32 .pte + our NMS",
        peer="torchvision ssdlite320_mobilenet_v3_large eager", ours_s=ours_s, peer_s=peer_s,
        settings={"score thr": SCORE_THRESHOLD, "nms": NMS_THRESHOLD, "dets/img": DETECTIONS_PER_IMAGE},
    )]  # fmt: skip
    images = uint8_images(1, 512)
    lraspp = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=SEG_CLASSES)
    lraspp = NormalisedPeer(lraspp).eval()
    ours_s, peer_s = timed_pair(on_runtime(load_exported(segmenter, threads), images), eager(lraspp, images), timing)
    rows.append(Row.timed(
        name="segmentation 512, batch 1, logits", ours="DeepLab reduced ExecuTorch fp32 .pte",
        peer="torchvision lraspp_mobilenet_v3_large eager", ours_s=ours_s, peer_s=peer_s, settings={"size": 512},
    ))  # fmt: skip
    return rows


def mobile_rows(timing: Timing, calibration_images: int = 16) -> list[Row]:
    """All rows: per task (files written to a temporary folder), then the torchvision peers."""
    require_extra("mobile", "executorch.exir", "benchmarks --only mobile")
    threads = torch.get_num_threads()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        written = {}
        for task in mobile_tasks():
            generator = torch.Generator().manual_seed(0)
            calibration = torch.rand(calibration_images, 3, *task.image_size, generator=generator)
            written[task.name] = files = write_files(task, Path(tmp), calibration)
            rows += task_rows(task, files, timing, threads)
        detector, segmenter = (written[name]["ExecuTorch fp32"] for name in ("SSDLite 320", "DeepLab reduced 512"))
        rows += peer_rows(detector, segmenter, timing, threads)
    return rows
