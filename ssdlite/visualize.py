"""Detections drawn for people: boxes with class names and scores on the original image."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torchvision.io import write_jpeg
from torchvision.utils import draw_bounding_boxes

# Distinct, saturated colours; class k gets colour k mod len.
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990", "#9a6324")


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str] | None = None,
    min_score: float = 0.3,
) -> torch.Tensor:
    """``image`` uint8 ``3 x H x W`` with the detections scoring at least ``min_score`` drawn.

    ``boxes`` ``K x 4`` xyxy in the image's pixels, ``scores`` ``K``, ``labels`` ``K`` in
    ``0..C-1`` (object classes, no background) named by ``class_names`` (default: the index).
    Each box is captioned ``"<class> <score>"``; line width grows with the image.
    """
    keep = scores >= min_score
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep].tolist()
    names = [class_names[k] if class_names is not None else str(k) for k in labels]
    captions = [f"{name} {score:.2f}" for name, score in zip(names, scores.tolist())]
    colours = [CLASS_COLOURS[k % len(CLASS_COLOURS)] for k in labels]
    width = max(1, round(max(image.shape[-2:]) / 200))
    return draw_bounding_boxes(image, boxes.float(), captions, colors=colours, width=width)


def save_detection_picture(
    path: str | Path,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    out: str | Path,
    class_names: Sequence[str] | None = None,
    min_score: float = 0.3,
) -> Path:
    """Read the image at ``path`` (upright RGB, see ``datamodules.io``), draw ``boxes`` (xyxy in its
    pixels) as ``draw_detections`` does, and write the picture as JPEG at ``out``."""
    from datamodules.io import read_image

    image = torch.from_numpy(read_image(path)).permute(2, 0, 1)
    picture = draw_detections(image, boxes.cpu(), scores.cpu(), labels.cpu(), class_names, min_score)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(picture, str(out), quality=90)
    return out
