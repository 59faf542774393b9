"""A graph to an ExecuTorch program (``.pte``) with the XNNPACK delegate, float or int8.

The graph is the one the ONNX export writes (``TaskExport.graph``: float images
``1 x 3 x H x W`` in [0, 1] in, the task's tensors out). What is lowered is its deployable
copy: BatchNorm folded into the convs (``core.fuse.fuse_conv_bn``; in eval mode the same
function) and weights back in NCHW order, which XNNPACK's layout pass requires of every conv
weight (it inserts its own NHWC conversions). The ``ReLU6`` autograd Function is not traced:
outside autograd it is ``F.relu6``. A program's shapes are static: batch 1 at one image size.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from core.fuse import fuse_conv_bn

from .extras import require_extra
from .quantize import Int8Scope

EXTRA = "mobile"


def deployable_copy(graph: nn.Module, image_size: tuple[int, int]) -> nn.Module:
    """A copy of ``graph`` in eval mode with BN folded and NCHW weights, run once at
    ``image_size`` (a model may fill a cache there, such as SSDLite's anchors, so that the
    exported program holds it as a constant instead of computing it)."""
    deployable = fuse_conv_bn(copy.deepcopy(graph).eval(), inplace=True).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        deployable(torch.zeros(1, 3, *image_size))
    return deployable


def lower_to_executorch(graph: nn.Module, image_size: tuple[int, int], path: str | Path) -> Path:
    """``torch.export`` ``graph`` (a deployable or PT2E-converted module) at ``1 x 3 x H x W``,
    lower it with the XNNPACK partitioner and write the program to ``path``."""
    require_extra(EXTRA, "executorch.exir", "export --format executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(graph, (torch.zeros(1, 3, *image_size),))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(lowered.buffer)
    return path


def export_executorch(
    graph: nn.Module,
    path: str | Path,
    image_size: tuple[int, int],
    calibration: torch.Tensor | None = None,
    scope: Int8Scope = Int8Scope(),
) -> Path:
    """Write ``graph`` as an ExecuTorch ``.pte`` (XNNPACK) from ``images`` float ``1 x 3 x H x W``
    in [0, 1], ``(H, W) = image_size``. With ``calibration`` (``K x 3 x H x W`` images) the
    program is int8: PT2E post-training static quantization (``engine.quantize.quantize_pt2e``)
    over ``scope``."""
    deployable = deployable_copy(graph, image_size)
    if calibration is not None:
        from .quantize import quantize_pt2e

        deployable = quantize_pt2e(deployable, calibration, scope)
    return lower_to_executorch(deployable, image_size, path)
