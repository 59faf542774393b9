"""Post-training int8 quantization, calibrated on the same images for both runtimes.

- ExecuTorch: PT2E (``torchao``) with the XNNPACK quantizer: int8 activations (histogram
  observers, per tensor) and symmetric per-channel int8 weights, the layout XNNPACK's int8
  kernels take (per-tensor weights can collapse MobileNets' depthwise layers);
- ONNX: onnxruntime's static QDQ quantization: uint8 activations (min / max, per tensor) and
  per-channel int8 weights.

A task says which part of its graph int8 quantizes (``Int8Scope``, from
``TaskExport.int8_scope``) and keeps the rest float: SSDLite's box decoding works in pixels,
which int8 cannot hold to a pixel, and its predictor outputs share one scale across feature
maps once concatenated. Convs whose outputs int8 cannot hold (class logits) may be quantized
dynamically instead (ExecuTorch only): int8 weights and inputs, float outputs. Every
backbone's stem (``Backbone.stem``: the layers at stride 2 and below, a few percent of the
multiply-adds) stays float in every task: int8 there, on the image's full detail, cost more
than any other part (README).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.fx import Node

from backbone import Backbone

from .extras import require_extra

if TYPE_CHECKING:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

# Calibration images per forward pass: histogram observers cost per call, not per image.
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class Int8Scope:
    """The part of a graph that int8 quantizes, by submodule path.

    ``static``: int8 activations with scales calibrated ahead of time and per-channel int8
    weights (None: the whole graph). ``dynamic`` (ExecuTorch; ONNX keeps them float): convs with
    per-channel int8 weights whose inputs are quantized per call (a scale from each input's own
    range) and whose outputs stay float, for outputs that one calibrated int8 scale cannot hold.
    ``kept_float``: submodules inside those that stay float."""

    static: Sequence[str] | None = None
    dynamic: Sequence[str] = ()
    kept_float: Sequence[str] = ()


def xnnpack_quantizer(scope: Int8Scope = Int8Scope(), is_qat: bool = False) -> XNNPACKQuantizer:
    """The XNNPACK quantizer (int8 activations per tensor, symmetric per-channel int8 weights; QAT:
    fake-quant observers) restricted to ``scope``."""
    require_extra("mobile", "torchao.quantization.pt2e.quantize_pt2e", "--quantize int8 (ExecuTorch)")
    require_extra("mobile", "executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "--quantize int8 (ExecuTorch)")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    dynamic = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True, is_qat=is_qat)

    class Quantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            # XNNPACK's cat annotator ignores the filter: mark the cats outside it as done, unquantized.
            for node in model.graph.nodes:
                if node.target == torch.ops.aten.cat.default and self.filter_fn and not self.filter_fn(node):
                    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
            # The dynamic convs first, so that the static pass finds them annotated. (Not by
            # ``set_module_name``: its filter rejects the weights, which carry no module path.)
            if scope.dynamic:
                self._annotate_all_patterns(model, dynamic, inside_modules(scope.dynamic))
            return super().annotate(model)

    quantizer = Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat))
    if scope.static is not None or scope.kept_float:
        quantizer.set_filter_function(in_scope(scope))
    return quantizer


def quantize_pt2e(graph: nn.Module, calibration: torch.Tensor, scope: Int8Scope = Int8Scope()) -> nn.Module:
    """``graph`` (deployable, eval mode) exported, observed on ``calibration`` (``K x 3 x H x W``
    images in [0, 1]) and converted to int8 (quantize / dequantize nodes around int8 ops, which
    XNNPACK lowers to its int8 kernels) over ``scope``."""
    quantizer = xnnpack_quantizer(scope)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batches = calibration.split(CALIBRATION_BATCH)
    # A dynamic batch while observing (calibration in batches); the program is re-exported at batch 1.
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        exported = torch.export.export(graph, (batches[0],), dynamic_shapes=({0: batch},))
        prepared = prepare_pt2e(exported.module(), quantizer)
        for images in batches:
            prepared(images)
    return convert_pt2e(prepared)


def inside_modules(modules: Sequence[str], unrecorded: bool = True) -> Callable[[Node], bool]:
    """A quantizer filter: True for graph nodes computed inside one of the submodules ``modules``
    (by the module path ``torch.export`` records); ``unrecorded`` for the nodes that record none
    (weights and biases, which a pattern such as conv + weight also checks)."""

    def inside(node: Node) -> bool:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            return unrecorded
        return any(path == name or path.startswith(name + ".") for path, _ in stack.values() for name in modules)

    return inside


def in_scope(scope: Int8Scope) -> Callable[[Node], bool]:
    """A quantizer filter: True for the nodes of ``scope``'s static and dynamic parts (the whole
    graph when ``static`` is None) outside its ``kept_float`` submodules."""
    included = inside_modules([*scope.static, *scope.dynamic]) if scope.static is not None else (lambda node: True)
    kept_float = inside_modules(scope.kept_float, unrecorded=False)
    return lambda node: included(node) and not kept_float(node)


def backbone_stems(graph: nn.Module) -> list[str]:
    """The module paths in ``graph`` of the stem layers (``Backbone.stem``) of every backbone in it."""
    return [f"{path}.{layer}" if path else layer
            for path, module in graph.named_modules() if isinstance(module, Backbone) for layer in module.stem]  # fmt: skip


class _CalibrationReader:
    """onnxruntime's ``CalibrationDataReader``: one ``{input: 1 x 3 x H x W}`` feed at a time."""

    def __init__(self, input_name: str, calibration: torch.Tensor) -> None:
        self.input_name = input_name
        self.images = calibration
        self.feeds: Iterator[dict] = self._feeds()

    def _feeds(self) -> Iterator[dict]:
        for images in self.images.split(CALIBRATION_BATCH):
            yield {self.input_name: images.numpy()}

    def get_next(self) -> dict | None:
        return next(self.feeds, None)

    def rewind(self) -> None:
        self.feeds = self._feeds()


def onnx_nodes_in(model_path: str | Path, modules: Sequence[str]) -> list[str]:
    """Names of the nodes of an ONNX file written by torch's exporter that sit inside one of the
    submodules ``modules`` (the exporter records each node's module path, ``name_scopes``)."""
    import onnx

    nodes = []
    for node in onnx.load(str(model_path)).graph.node:
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), [])
        if any(scope == name or scope.startswith(name + ".") for scope in scopes for name in modules):
            nodes.append(node.name)
    return nodes


def quantize_onnx(
    float_path: str | Path, path: str | Path, calibration: torch.Tensor, scope: Int8Scope = Int8Scope()
) -> Path:
    """Write to ``path`` the int8 QDQ version of the float ONNX file ``float_path``, calibrated on
    ``calibration`` (``K x 3 x H x W`` in [0, 1]), over ``scope.static`` less ``scope.kept_float``
    (its dynamic part stays float)."""
    quantization = require_extra("export", "onnxruntime.quantization", "--quantize int8 (ONNX)")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    reader = _CalibrationReader(session.get_inputs()[0].name, calibration)
    quantization.quantize_static(
        str(float_path),
        str(path),
        reader,
        quant_format=quantization.QuantFormat.QDQ,
        activation_type=quantization.QuantType.QUInt8,  # onnxruntime's x86 int8 kernels take uint8 activations
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
        calibrate_method=quantization.CalibrationMethod.MinMax,
        nodes_to_quantize=None if scope.static is None else onnx_nodes_in(float_path, scope.static),
        nodes_to_exclude=onnx_nodes_in(float_path, scope.kept_float),
    )
    return Path(path)
