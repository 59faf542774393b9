"""ONNX export of a DeepLab segmenter: logits or a label map, dynamic batch, fixed image size.

The export is single-scale at the model's output stride; multi-scale + flip ("MF") is an
evaluation protocol, left to the caller (run the graph at several sizes and average).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .model import DeepLab

INPUT_NAME = "images"
OutputKind = Literal["logits", "labels"]


class _LabelMap(nn.Module):
    """``images`` ``N x 3 x H x W`` in [0, 1] -> ``labels`` int64 ``N x H x W`` (argmax of the logits)."""

    def __init__(self, model: DeepLab) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).argmax(dim=1)


def export_onnx(
    model: DeepLab,
    path: str | Path,
    image_size: int | tuple[int, int] = 513,
    output: OutputKind = "logits",
    opset_version: int = 18,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` as one self-contained ONNX file at ``path`` and return the path.

    Graph input ``images``: float32 ``N x 3 x H x W`` RGB in [0, 1] (normalised inside),
    ``(H, W) = image_size``, ``N`` dynamic when ``dynamic_batch``. Output ``logits`` float32
    ``N x C x H x W`` or ``labels`` int64 ``N x H x W``. Exported in eval mode (no dropout, BN
    statistics); the model's mode is restored afterwards.
    """
    if output not in ("logits", "labels"):
        raise ValueError(f"output must be 'logits' or 'labels', got {output!r}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        graph = _LabelMap(model) if output == "labels" else model
        # Batch 2 while tracing, so the exporter cannot specialise the batch dimension to 1.
        example = torch.rand(2 if dynamic_batch else 1, 3, height, width)
        with torch.no_grad():
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[output],
                opset_version=opset_version,
                dynamo=True,  # torch's default; needs onnxscript (the `export` extra)
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None,
                external_data=False,  # one file: the weights (~9 MB) are far under protobuf's 2 GB
            )
    finally:
        model.train(was_training)
    return path
