"""``Predictor``: a checkpoint as a Python callable on images, with the ``predict`` command's results.

    predictor = ssdlite.load_predictor("runs/ssdlite_shapes/checkpoints/last.ckpt")
    result = predictor("photo.jpg")                  # one input: one result
    results = predictor([pil_image, array, tensor])  # a list: a list

The generic part lives here: loading (``load_module_checkpoint``: no ImageNet weights needed,
the checkpoint holds every weight), the inference fast path (``core.fuse.optimize_for_inference``,
made once at load), input conversion, batching and the class names. A task says only how an
image becomes its network input (``prepare``, the same function the predict datamodule uses)
and what it adds to a result (``finish``); the results are its ``predict_batch``'s, in each
image's own pixels.

Inputs: a path (``str`` / ``PathLike``: decoded as ``predict`` decodes files, EXIF orientation
applied, any mode converted to RGB), a PIL image (converted to RGB the same way, its pixels
taken as they are), an ``H x W x 3`` uint8 RGB numpy array, or a ``3 x H x W`` RGB tensor
(uint8, or float in [0, 1], rounded to uint8 as a decoded file would be).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, TypeVar, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from core.constants import IMAGENET_MEAN, mean_fill
from core.fuse import optimize_for_inference
from datamodules.collate import PredictCollate
from datamodules.image_io import to_rgb, load_image

from .checkpoint_checks import load_module_checkpoint
from .checkpoint_io import read_checkpoint
from .task import TaskModule

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]
P = TypeVar("P", bound="Predictor")


def rgb_array(image: ImageInput) -> np.ndarray:
    """``image`` (see the module docstring) as ``H x W x 3`` uint8 RGB; ``TypeError`` /
    ``ValueError`` saying what was expected otherwise."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(image)).array
    if isinstance(image, Image.Image):
        return to_rgb(image, [])
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a numpy image must be H x W x 3 uint8 RGB, got {image.dtype} of shape {image.shape}")
        return image
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"a tensor image must be 3 x H x W RGB, got shape {tuple(image.shape)} (pass a batch as a list)"
            )
        image = image.detach().cpu()
        if image.is_floating_point():
            low, high = image.aminmax()
            if low < 0 or high > 1:
                raise ValueError(f"a float tensor image must hold values in [0, 1], got [{low:.3g}, {high:.3g}]")
            image = image.mul(255).round_().to(torch.uint8)
        elif image.dtype != torch.uint8:
            raise ValueError(f"a tensor image must be uint8 or float in [0, 1], got {image.dtype}")
        return image.permute(1, 2, 0).contiguous().numpy()
    raise TypeError(
        f"cannot predict on a {type(image).__name__}: pass a path, a PIL image, an H x W x 3 uint8 array, "
        "a 3 x H x W tensor, or a list of them"
    )


def checkpoint_class_names(checkpoint: Mapping[str, Any], num_classes: int) -> list[str]:
    """The names of a checkpoint's classes: those it holds (``TaskModule`` saves its datamodule's),
    else its datamodule hyperparameters' ``class_names`` (with the ``background_name`` a
    segmentation datamodule puts first), else the label indices as text."""
    names = checkpoint.get("class_names")
    if names is not None and len(names) == num_classes:
        return [str(name) for name in names]
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    names = data.get("class_names")
    if names is not None:
        background = data.get("background_name", "background")
        if len(names) + 1 == num_classes and background is not None:
            names = [background, *names]
        if len(names) == num_classes:
            return [str(name) for name in names]
    return [str(i) for i in range(num_classes)]


def normalisation_mean(model: nn.Module) -> tuple[float, float, float]:
    """The normalisation mean of the first submodule of ``model`` that has one (its backbone)."""
    for module in model.modules():
        mean = getattr(module, "mean", None)
        if isinstance(mean, (tuple, list)) and len(mean) == 3 and hasattr(module, "normalize"):
            return tuple(float(m) for m in mean)  # type: ignore[return-value]
    return IMAGENET_MEAN


class Predictor:
    """A task module on the inference fast path, called on images: ``predictor(image)`` gives one
    result dict, ``predictor([image, ...])`` a list (inputs: see the module docstring).

    Each result is the task's ``predict_batch`` result for that image, in its own pixels, as CPU
    tensors, plus what ``finish`` adds. Inputs go through the network ``batch_size`` at a time;
    images whose inputs pad to different sizes run in separate batches, so an image's result
    does not depend on the images it came with. ``class_names``: one name per class.
    ``data_hparams``: the run's datamodule hyperparameters (a checkpoint's
    ``datamodule_hyper_parameters``), for the task's input settings and the padding colour
    (``image_mean``; default the backbone's). ``device``: where the model runs (the prepacked CPU
    kernels only on the CPU). Subclasses set ``module_class`` and implement ``prepare``.
    """

    module_class: ClassVar[type[TaskModule]] = TaskModule
    # Batches are padded bottom/right, with the mean colour, to a multiple of this.
    size_divisor: int = 1

    def __init__(
        self,
        module: TaskModule,
        *,
        class_names: Sequence[str] | None = None,
        data_hparams: Mapping[str, Any] | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.module = module.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.data_hparams = dict(data_hparams or {})
        self.class_names = list(class_names) if class_names is not None else module.class_names()
        self.fill = mean_fill(tuple(self.data_hparams.get("image_mean") or normalisation_mean(module.model)))
        with torch.inference_mode():
            self.model = optimize_for_inference(module.model)

    @classmethod
    def from_checkpoint(
        cls: type[P], path: str | os.PathLike, batch_size: int = 8, device: str | torch.device = "cpu", **overrides: Any
    ) -> P:
        """The predictor of the ``module_class`` checkpoint at ``path``; ``overrides``: arguments
        of ``module_class`` (run-time options such as DeepLab's ``eval_scales``, or saved ones to
        change, such as SSDLite's ``score_threshold``). The ImageNet weights a run started from
        are not needed."""
        checkpoint = read_checkpoint(path)
        module = load_module_checkpoint(cls.module_class, str(path), **overrides)
        names = checkpoint_class_names(checkpoint, len(module.class_names()))
        data_hparams = checkpoint.get("datamodule_hyper_parameters")
        return cls(module, class_names=names, data_hparams=data_hparams, batch_size=batch_size, device=device)

    # --- what a task implements ----------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, dict[str, Any]]:
        """The network input (uint8 ``3 x h x w``) of an ``H x W x 3`` uint8 RGB image and its
        meta for ``predict_batch`` (``orig_size`` and ``size``): ``datamodules.predict.predict_input``."""
        raise NotImplementedError

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """One image's ``predict_batch`` result (CPU tensors) as handed back; e.g. with class names."""
        return result

    # --- calling ---------------------------------------------------------------------------------
    def __call__(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """The result of one image, or the list of results of a list (or tuple) of images."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        size = batch_size or self.batch_size
        results: list[dict[str, Any]] = []
        with torch.inference_mode():
            for start in range(0, len(items), size):
                results += self._predict_chunk(items[start : start + size])
        return results[0] if single else results

    def _predict_chunk(self, items: Sequence[ImageInput]) -> list[dict[str, Any]]:
        samples = [self.prepare(rgb_array(item)) for item in items]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (image, _) in enumerate(samples):
            padded = tuple(math.ceil(s / self.size_divisor) * self.size_divisor for s in image.shape[-2:])
            groups.setdefault(padded, []).append(index)
        collate = PredictCollate(self.size_divisor, self.fill)
        results: list[dict[str, Any]] = [{} for _ in samples]
        for indices in groups.values():
            images, metas = collate([samples[i] for i in indices])
            outputs = self.module.predict_batch(self.model, images.to(self.device), metas)
            for index, output in zip(indices, outputs):
                output = {key: v.cpu() if isinstance(v, torch.Tensor) else v for key, v in output.items()}
                results[index] = self.finish(output)
        return results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.module_class.__name__}, {len(self.class_names)} classes, "
            f"batch_size={self.batch_size}, device={self.device})"
        )
