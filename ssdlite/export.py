"""ONNX export of SSDLite: decoded boxes and class scores before NMS, dynamic batch.

NMS stays out of the graph: torchvision's per-class NMS does not export (its loop over
classes defeats the exporter, see REFERENCE.md), and runtimes differ in how they want it
(onnxruntime's ``NonMaxSuppression``, TensorRT's EfficientNMS plug-in, or host code such as
``ssdlite.postprocess.select_detections`` on the two outputs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .model import SSDLite

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores")


class _DecodeOnly(nn.Module):
    """``images`` ``N x 3 x H x W`` float in [0, 1] -> (``boxes`` ``N x A x 4``, ``scores`` ``N x A x C``)."""

    def __init__(self, model: SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode(images)


def export_onnx(
    model: SSDLite,
    path: str | Path,
    image_size: int | tuple[int, int] = 320,
    opset_version: int = 18,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` as one self-contained ONNX file at ``path`` and return the path.

    Graph input ``images``: float32 ``N x 3 x H x W`` RGB in [0, 1] (normalised inside, as the
    model does), ``(H, W) = image_size``, ``N`` dynamic when ``dynamic_batch``. Outputs
    ``boxes`` ``N x A x 4`` (xyxy, input pixels, clipped) and ``scores`` ``N x A x C``
    (softmax or sigmoid as trained, background dropped): ``SSDLite.decode``, before NMS.
    Anchors are baked in for ``image_size``. The model is exported in eval mode; its mode is
    restored afterwards.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
        # Batch 2 while tracing, so the exporter cannot specialise the batch dimension to 1.
        example = torch.rand(2 if dynamic_batch else 1, 3, height, width)
        with torch.no_grad():
            model.decode(example)  # fills the anchor cache, so export reads it rather than writes it
            torch.onnx.export(
                _DecodeOnly(model).eval(),
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset_version,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=False,  # one file: the weights (~17 MB) fit well under protobuf's 2 GB
            )
    finally:
        model.train(was_training)
    return path
