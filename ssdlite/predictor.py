"""``load_predictor``: an SSDLite checkpoint as a Python callable (``engine.predictor.Predictor``).

    from ssdlite import load_predictor
    predictor = load_predictor("runs/ssdlite_shapes/checkpoints/last.ckpt")
    result = predictor("photo.jpg")  # boxes K x 4 xyxy in the photo's pixels, scores, labels, class_names
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from datamodules.predict import predict_input
from engine.predictor import Predictor

from .module import SSDLiteModule


class SSDLitePredictor(Predictor):
    """Each image resized to the model's ``image_size`` square, as ``ssdlite predict`` does. Results:
    ``boxes`` float ``K x 4`` xyxy in the image's pixels, ``scores`` ``K``, ``labels`` int64 ``K``
    (0-based object classes) and ``class_names``, the name of each detection's class."""

    module_class = SSDLiteModule

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        return predict_input(image, resize_to=self.module.hparams.image_size)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        result["class_names"] = [self.class_names[label] for label in result["labels"].tolist()]
        return result


def load_predictor(
    checkpoint: str | os.PathLike, batch_size: int = 8, device: str | torch.device = "cpu", **overrides: Any
) -> SSDLitePredictor:
    """The SSDLite checkpoint at ``checkpoint`` as a callable on images (a path, a PIL image, an
    ``H x W x 3`` uint8 array, a ``3 x H x W`` uint8 or [0, 1] float tensor, or a list of them),
    on the inference fast path. ``overrides``: ``SSDLiteModule`` arguments to change, e.g.
    ``score_threshold=0.3``. No ImageNet weights are needed."""
    return SSDLitePredictor.from_checkpoint(checkpoint, batch_size, device, **overrides)
