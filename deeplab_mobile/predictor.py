"""``load_predictor``: a DeepLab checkpoint as a Python callable (``engine.predictor.Predictor``).

    from deeplab_mobile import load_predictor
    predictor = load_predictor("runs/deeplab_shapes/checkpoints/last.ckpt")
    result = predictor("photo.jpg")  # labels: int64 H x W label map of the photo; class_names
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Mapping

import numpy as np
import torch

from engine.predictor import Predictor

from .module import DeepLabModule


class DeepLabPredictor(Predictor):
    """Each image kept at its size, shrunk only when its longer side exceeds ``max_size``, and
    padded with the mean colour to a multiple of ``size_divisor``, as ``deeplab-mobile predict``
    does (both from the run's datamodule settings, ``predict_max_size`` and ``size_divisor``,
    else the datamodule's defaults). Results: ``labels``, an int64 ``H x W`` label map at the
    image's size, and ``class_names``, the name of every class (index = label)."""

    module_class = DeepLabModule

    def __init__(self, module: DeepLabModule, *, data_hparams: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        # Imported here: datamodules.base and .predict load albumentations, which `import deeplab_mobile` need not.
        from datamodules.base import BaseSegmentationDataModule

        data, defaults = data_hparams or {}, inspect.signature(BaseSegmentationDataModule.__init__).parameters
        self.size_divisor: int = data.get("size_divisor", defaults["size_divisor"].default)
        self.max_size: int | None = data.get("predict_max_size", defaults["predict_max_size"].default)
        super().__init__(module, data_hparams=data_hparams, **kwargs)

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        from datamodules.predict import predict_input

        return predict_input(image, max_size=self.max_size)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        result["class_names"] = list(self.class_names)
        return result


def load_predictor(
    checkpoint: str | os.PathLike, batch_size: int = 8, device: str | torch.device = "cpu", **overrides: Any
) -> DeepLabPredictor:
    """The DeepLab checkpoint at ``checkpoint`` as a callable on images (a path, a PIL image, an
    ``H x W x 3`` uint8 array, a ``3 x H x W`` uint8 or [0, 1] float tensor, or a list of them),
    on the inference fast path. ``overrides``: ``DeepLabModule`` arguments, e.g.
    ``output_stride=8`` or ``eval_scales=[0.5, 0.75, 1.0], eval_flip=True``. No ImageNet weights
    are needed."""
    return DeepLabPredictor.from_checkpoint(checkpoint, batch_size, device, **overrides)
