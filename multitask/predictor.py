"""``load_predictor``: a joint checkpoint as a Python callable (``engine.predictor.Predictor``).

    from multitask import load_predictor
    predictor = load_predictor("runs/multitask_shapes/checkpoints/last.ckpt")
    result = predictor("photo.jpg")  # boxes, scores, labels, class_names; label_map, seg_class_names
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from datamodules.predict import predict_input
from engine.checkpoint_io import read_checkpoint
from engine.predictor import Predictor

from .module import MultiTaskModule


class MultiTaskPredictor(Predictor):
    """Each image resized to the model's ``image_size`` square, as ``multitask predict`` does.
    Results, in the image's pixels: ``boxes`` float ``K x 4`` xyxy, ``scores`` ``K``, ``labels``
    int64 ``K`` (0-based object classes), ``class_names`` (each detection's), ``label_map`` int64
    ``H x W`` and ``seg_class_names`` (every segmentation class, index = label, background first)."""

    module_class = MultiTaskModule

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        return predict_input(image, resize_to=self.module.hparams.image_size)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        result["class_names"] = [self.class_names[label] for label in result["labels"].tolist()]
        result["seg_class_names"] = list(self.seg_class_names)
        return result

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, batch_size: int = 8, device: str | torch.device = "cpu", **overrides: Any
    ) -> "MultiTaskPredictor":
        predictor = super().from_checkpoint(path, batch_size, device, **overrides)
        saved = read_checkpoint(path).get("seg_class_names")
        predictor.seg_class_names = saved or predictor.module.seg_class_names()
        return predictor


def load_predictor(
    checkpoint: str | os.PathLike, batch_size: int = 8, device: str | torch.device = "cpu", **overrides: Any
) -> MultiTaskPredictor:
    """The joint checkpoint at ``checkpoint`` as a callable on images (a path, a PIL image, an
    ``H x W x 3`` uint8 array, a ``3 x H x W`` uint8 or [0, 1] float tensor, or a list of them),
    on the inference fast path: boxes and a label map of each image from one backbone pass.
    ``overrides``: ``MultiTaskModule`` arguments, e.g. ``score_threshold=0.3``. No ImageNet
    weights are needed."""
    return MultiTaskPredictor.from_checkpoint(checkpoint, batch_size, device, **overrides)
