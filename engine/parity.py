"""Export checks shared by every task's ``export``: run a written file in its runtime on a real
image and compare its outputs with PyTorch's (float exports), or with the float graph's under a
looser rule (int8: ``compare_detection_matches``, ``compare_label_maps`` at 98%).

Every task checks the same way: load one image upright as RGB (``datamodules.image_io``), resize
it to the export size, run a batch of two (the image and its mirror, so a dynamic batch axis
is exercised; an ExecuTorch program runs them one at a time) through PyTorch and the runtime,
and compare with a task rule: ``compare_top_detections`` or ``compare_label_maps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class Parity:
    """Outcome of an ONNX-vs-PyTorch comparison: ``passed`` and a one-line ``summary``."""

    passed: bool
    summary: str


def image_tensor(image_path: str | Path, image_size: tuple[int, int]) -> torch.Tensor:
    """``3 x H x W`` float32 in [0, 1]: the image at ``path`` (upright RGB) resized to
    ``image_size = (H, W)``, as an exported graph takes it; ``DataProblem`` when unreadable."""
    from datamodules.image_io import read_image  # datamodules pulls in Lightning: only when checking

    height, width = image_size
    image = cv2.resize(read_image(image_path), (width, height), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255)


def load_parity_batch(image_path: str | Path, image_size: tuple[int, int]) -> torch.Tensor:
    """``2 x 3 x H x W`` float32 in [0, 1]: the image at ``path`` resized to ``image_size = (H, W)``
    and its left-right mirror (two different images, so a batch mix-up would show)."""
    tensor = image_tensor(image_path, image_size)
    return torch.stack([tensor, tensor.flip(-1)])


def run_onnx(path: str | Path, images: torch.Tensor) -> list[np.ndarray]:
    """Outputs of the ONNX file at ``path`` on ``images`` (its only input), with onnxruntime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})


def compare_top_detections(
    torch_boxes: torch.Tensor,
    torch_scores: torch.Tensor,
    onnx_boxes: np.ndarray,
    onnx_scores: np.ndarray,
    top_k: int = 20,
    rtol: float = 1e-3,
) -> Parity:
    """Compare decoded detections (before NMS) at PyTorch's ``top_k`` (anchor, class) pairs of each image.

    Boxes ``N x A x 4`` xyxy in input pixels, scores ``N x A x C``. Passes when every top box
    coordinate agrees within ``rtol`` relative (``|d| / max(|x|, 1 px)``, so coordinates at the
    image edge do not divide by zero) and every top score within ``rtol`` absolute.
    """
    onnx_boxes_t, onnx_scores_t = torch.from_numpy(onnx_boxes), torch.from_numpy(onnx_scores)
    if onnx_boxes_t.shape != torch_boxes.shape or onnx_scores_t.shape != torch_scores.shape:
        return Parity(False, f"shape mismatch: onnx {tuple(onnx_boxes_t.shape)}/{tuple(onnx_scores_t.shape)} "
                             f"vs torch {tuple(torch_boxes.shape)}/{tuple(torch_scores.shape)}")
    num_classes = torch_scores.shape[-1]
    top = torch_scores.flatten(1).topk(min(top_k, torch_scores[0].numel()), dim=1).indices  # N x k
    anchors = top // num_classes
    rows = torch.arange(len(top))[:, None]
    box_ref, box_onnx = torch_boxes[rows, anchors], onnx_boxes_t[rows, anchors]
    box_rel = ((box_onnx - box_ref).abs() / box_ref.abs().clamp_min(1.0)).max().item()
    score_abs = (onnx_scores_t.flatten(1).gather(1, top) - torch_scores.flatten(1).gather(1, top)).abs().max().item()
    passed = box_rel <= rtol and score_abs <= rtol
    return Parity(
        passed,
        f"top {top.shape[1]} boxes of {len(top)} images: max relative box difference {box_rel:.2e}, "
        f"max score difference {score_abs:.2e} (limit {rtol:g}): {'OK' if passed else 'FAILED'}",
    )


def compare_label_maps(torch_labels: torch.Tensor, onnx_labels: np.ndarray, min_agreement: float = 0.999) -> Parity:
    """Fraction of pixels with the same label in two ``N x H x W`` label maps; passes above ``min_agreement``."""
    onnx_labels_t = torch.from_numpy(onnx_labels).long()
    if onnx_labels_t.shape != torch_labels.shape:
        return Parity(False, f"shape mismatch: onnx {tuple(onnx_labels_t.shape)} vs torch {tuple(torch_labels.shape)}")
    agreement = (onnx_labels_t == torch_labels.long()).double().mean().item()
    passed = agreement > min_agreement
    return Parity(
        passed,
        f"same label on {agreement:.6%} of {torch_labels.numel()} pixels in {len(torch_labels)} images "
        f"(need > {min_agreement:.1%}): {'OK' if passed else 'FAILED'}",
    )


def compare_detection_matches(
    reference: Sequence[dict[str, torch.Tensor]],
    detections: Sequence[dict[str, torch.Tensor]],
    top_k: int = 10,
    min_iou: float = 0.9,
    min_matched: int = 8,
) -> Parity:
    """Match each image's ``top_k`` best reference detections (dicts of ``boxes`` ``K x 4`` xyxy,
    ``scores`` ``K`` descending, ``labels`` ``K``, as ``ssdlite.postprocess.select_detections``
    gives) to detections of the same class at IoU >= ``min_iou``; passes when every image
    matches at least ``min_matched`` of ``top_k`` (the same share when it has fewer)."""
    from torchvision.ops import box_iou

    lines, passed = [], True
    for ref, det in zip(reference, detections):
        count = min(top_k, len(ref["scores"]))
        if count == 0:
            continue
        iou = box_iou(ref["boxes"][:count], det["boxes"]) if len(det["boxes"]) else torch.zeros(count, 0)
        same_class = ref["labels"][:count, None] == det["labels"][None, :]
        matched = int(((iou >= min_iou) & same_class).any(dim=1).sum())
        needed = -(-min_matched * count // top_k)  # ceil
        passed &= matched >= needed
        lines.append(f"{matched}/{count}")
    return Parity(
        passed,
        f"top {top_k} detections matched at IoU >= {min_iou:g} (same class) per image: {', '.join(lines) or 'none'} "
        f"(need {min_matched} of {top_k}): {'OK' if passed else 'FAILED'}",
    )


def describe_export(path: Path, input_shape: Sequence[int], outputs: Sequence[str]) -> str:
    """One line naming the written file, its size, input shape (``N`` dynamic) and outputs."""
    megabytes = path.stat().st_size / 2**20
    return f"wrote {path} ({megabytes:.1f} MB): images N x {' x '.join(map(str, input_shape))} -> {', '.join(outputs)}"
