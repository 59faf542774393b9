"""What ``ssdlite predict`` writes per image with ``prediction_dir`` set: the detections as
json and drawn for people (boxes with class names and scores on the original image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from PIL import ImageFont
from torchvision.utils import draw_bounding_boxes

from engine.prediction_writer import save_picture

# Distinct, saturated colours; class k gets colour k mod len.
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990", "#9a6324")
# A scalable font when the system has it; otherwise Pillow's small built-in bitmap font.
CAPTION_FONT = "DejaVuSans.ttf"


def _caption_font() -> str | None:
    try:
        ImageFont.truetype(CAPTION_FONT, 10)
        return CAPTION_FONT
    except OSError:
        return None


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
    longer_side = max(image.shape[-2:])
    font = _caption_font()
    return draw_bounding_boxes(
        image, boxes.float(), captions, colors=colours, width=max(1, round(longer_side / 200)),
        font=font, font_size=max(10, round(longer_side / 35)) if font else None,
        fill_labels=True, label_colors="white",  # white captions on the box colour stay readable on any image
    )


def write_prediction_files(
    image: torch.Tensor,
    path: str | Path,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    out_dir: str | Path,
    class_names: Sequence[str] | None = None,
    min_score: float = 0.3,
) -> tuple[Path, Path]:
    """For the image ``image`` (uint8 ``3 x H x W``, upright) read from ``path``: ``<stem>.json``
    with every detection and ``<stem>_boxes.jpg`` with those scoring at least ``min_score`` drawn
    (``draw_detections``); returns both paths.

    ``boxes`` ``K x 4`` xyxy are in the image's pixels. The json holds ``file``, ``width``,
    ``height`` and ``detections``: ``box_xyxy``, ``score``, ``label`` (0-based object class) and
    ``class_name``; unlike a COCO results file it needs no image ids, so it works for any
    folder of images.
    """
    out_dir = Path(out_dir)
    stem = Path(path).stem
    boxes, scores, labels = boxes.cpu(), scores.cpu(), labels.cpu()
    picture = save_picture(draw_detections(image, boxes, scores, labels, class_names, min_score), out_dir / f"{stem}_boxes.jpg")
    detections = {"boxes": boxes, "scores": scores, "labels": labels}
    return write_detections_json(path, image.shape[-2:], detections, out_dir / f"{stem}.json", class_names), picture


def write_detections_json(
    path: str | Path,
    image_size: Sequence[int],
    detections: dict[str, torch.Tensor],
    out: str | Path,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``out``: the ``detections`` (``boxes`` ``K x 4`` xyxy in the pixels of the image at
    ``path``, of ``image_size`` (h, w); ``scores``; ``labels``) as ``write_prediction_files``
    describes; returns ``out``."""
    height, width = (int(v) for v in image_size)
    boxes, scores, labels = (detections[k].cpu().tolist() for k in ("boxes", "scores", "labels"))
    records = [
        {"box_xyxy": [round(v, 2) for v in box], "score": round(score, 5), "label": label,
         "class_name": class_names[label] if class_names is not None else str(label)}
        for box, score, label in zip(boxes, scores, labels)
    ]  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"file": str(path), "width": width, "height": height, "detections": records}, indent=1))
    return out
