"""Calibration images for int8 quantization: training images of a run's datamodule, prepared
as the exported graph's callers prepare its input (upright RGB, resized to the export size,
float in [0, 1]), with unreadable files skipped and counted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lightning import LightningDataModule

from .parity import image_tensor


@dataclass
class CalibrationSet:
    """``images`` ``K x 3 x H x W`` float32 in [0, 1]; ``skipped``: one line per unreadable file
    (its path and the problem); ``requested``: the images asked for."""

    images: torch.Tensor
    skipped: list[str]
    requested: int

    def summary(self) -> str:
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return f"{len(self.images)} calibration images of {self.requested} requested{skipped}"


def training_image_paths(datamodule: LightningDataModule) -> list[Path]:
    """The image files of ``datamodule``'s training split, in its order (set up for ``fit``)."""
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    return [Path(dataset.image_path(i)) for i in range(len(dataset))]


def calibration_set(datamodule: LightningDataModule, count: int, image_size: tuple[int, int]) -> CalibrationSet:
    """``count`` training images of ``datamodule``, spread evenly over its training split (all
    of them when it holds fewer), resized to ``image_size = (H, W)``. Unreadable images are
    skipped and listed; a ``ValueError`` names the datamodule when none is readable."""
    from datamodules.problems import DataProblem

    paths = training_image_paths(datamodule)
    if count < 1:
        raise ValueError(f"--calibration_images must be at least 1, got {count}")
    if not paths:
        raise ValueError(f"{type(datamodule).__name__} has no training images to calibrate on")
    picks = sorted(set(torch.linspace(0, len(paths) - 1, min(count, len(paths))).round().long().tolist()))
    images, skipped = [], []
    for index in picks:
        try:
            images.append(image_tensor(paths[index], image_size))
        except DataProblem as problem:
            skipped.append(str(problem))
    if not images:
        raise ValueError(
            f"none of the {len(picks)} calibration images of {type(datamodule).__name__} is readable: {skipped[0]}"
        )
    return CalibrationSet(torch.stack(images), skipped, len(picks))
