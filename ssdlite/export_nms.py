"""``ssdlite export --nms``: a detector graph with NMS inside, padded detections out.

The graph is ``select_detections`` in tensor form, from the same decoded boxes and scores:
each class's ``topk_per_class`` best anchors, class-wise greedy NMS at the model's
``nms_threshold``, those above its ``score_threshold``, the ``detections_per_image`` best by
descending score. The thresholds and counts are the checkpoint's model settings, constants of
the graph. NMS is one ``torchvision.ops.nms`` call, which ONNX exports as ``NonMaxSuppression``:
it is made class- and image-aware by shifting each class's boxes along x and each image's along
y by more than the image's size, so boxes of different classes or images never overlap.

Outputs (``D = min(detections_per_image, C * topk_per_class)``): ``boxes`` ``N x D x 4`` xyxy
in input pixels, ``scores`` ``N x D`` descending, ``labels`` ``N x D`` int64 in ``0..C-1``,
``num_detections`` ``N`` int64; rows past an image's ``num_detections`` are padding (boxes and
scores 0, label -1). Written for onnxruntime; ExecuTorch has no NMS kernel.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

from engine import Parity

from .model import SSDLite

OUTPUTS = {
    "boxes": "N x D x 4 (xyxy px, padded)",
    "scores": "N x D (descending, padded with 0)",
    "labels": "N x D (int64, padded with -1)",
    "num_detections": "N (int64)",
}


def select_padded(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_size: tuple[int, int],
    score_threshold: float = 0.001,
    nms_threshold: float = 0.6,
    topk_per_class: int = 100,
    detections_per_image: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ssdlite.postprocess.select_detections`` with static shapes (traceable): the same
    detections in the same order, padded (see the module docstring for the outputs).

    ``boxes`` ``N x A x 4`` xyxy in pixels of an ``image_size = (h, w)`` input, clipped to it;
    ``scores`` ``N x A x C``."""
    num_images, num_anchors, num_classes = scores.shape
    height, width = image_size
    k = min(topk_per_class, num_anchors)
    top_scores, top_anchors = scores.transpose(1, 2).topk(k, dim=2)  # N x C x k, as select_detections
    candidate_boxes = boxes.gather(1, top_anchors.flatten(1)[..., None].expand(-1, -1, 4))  # N x Ck x 4
    top_scores = top_scores.flatten(1)  # N x Ck
    # Clipped boxes lie in [0, w] x [0, h]: shifts of (w + 1) per class and (h + 1) per image keep groups apart.
    shift_x = torch.arange(num_classes, device=boxes.device).repeat_interleave(k).to(boxes.dtype) * (width + 1)
    shift_y = torch.arange(num_images, device=boxes.device).to(boxes.dtype) * (height + 1)
    shift = torch.stack(torch.broadcast_tensors(shift_x[None, :], shift_y[:, None]), dim=-1).repeat(1, 1, 2)
    # Candidates under the score threshold rank after every candidate above it, so they suppress none of
    # those; they are dropped after NMS.
    keep = nms((candidate_boxes + shift).flatten(0, 1), top_scores.flatten(), nms_threshold)
    kept = torch.zeros(top_scores.numel(), dtype=torch.bool, device=boxes.device).index_put((keep,), torch.tensor(True))
    kept = kept.view_as(top_scores) & (top_scores > score_threshold)
    count = min(detections_per_image, top_scores.shape[1])
    best_scores, best = top_scores.masked_fill(~kept, -1.0).topk(count, dim=1)  # N x D, descending
    valid = kept.gather(1, best)
    best_boxes = candidate_boxes.gather(1, best[..., None].expand(-1, -1, 4)) * valid[..., None]
    labels = torch.where(valid, best // k, -1)
    return best_boxes, best_scores * valid, labels, valid.sum(dim=1)


class DetectionsWithNMS(nn.Module):
    """``images`` ``N x 3 x H x W`` float in [0, 1] -> padded detections (``select_padded``)
    with ``model``'s thresholds and counts: ``SSDLite.decode`` then NMS, one graph."""

    def __init__(self, model: SSDLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores = self.model.decode(images)
        model = self.model
        return select_padded(
            boxes, scores, tuple(images.shape[-2:]), model.score_threshold, model.nms_threshold,
            model.topk_per_class, model.detections_per_image,
        )  # fmt: skip


def unpad_detections(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, num_detections: torch.Tensor
) -> list[dict[str, torch.Tensor]]:
    """The padded outputs as ``select_detections`` gives them: per image ``boxes`` ``K x 4``,
    ``scores`` ``K`` and ``labels`` ``K`` int64, ``K = num_detections``."""
    return [
        {"boxes": b[:n], "scores": s[:n], "labels": l[:n].long()}
        for b, s, l, n in zip(boxes, scores, labels, num_detections.tolist())
    ]


def compare_selected_detections(
    reference: Sequence[dict[str, torch.Tensor]], exported: Sequence[dict[str, torch.Tensor]], rtol: float = 1e-3
) -> Parity:
    """The same detections per image: equal counts, and each reference detection matched, in
    order, to an unmatched exported one of its label with every box coordinate within ``rtol``
    relative (``|d| / max(|x|, 1 px)``) and its score within ``rtol`` absolute. Detections of
    equal scores may come in either order (runtimes break ties differently)."""
    box_rel = score_abs = 0.0
    lines, passed = [], True
    for ref, det in zip(reference, exported):
        count = len(ref["labels"])
        matched = 0
        if count == len(det["labels"]) and count:
            box_diff = ((det["boxes"][None] - ref["boxes"][:, None]).abs() / ref["boxes"][:, None].abs().clamp_min(1.0)).amax(-1)
            score_diff = (det["scores"][None] - ref["scores"][:, None]).abs()
            close = (box_diff <= rtol) & (score_diff <= rtol) & (det["labels"][None] == ref["labels"][:, None])
            free = torch.ones(count, dtype=torch.bool)
            for i in range(count):
                j = int((close[i] & free).float().argmax())
                if close[i, j] and free[j]:
                    free[j] = False
                    matched += 1
                    box_rel, score_abs = max(box_rel, box_diff[i, j].item()), max(score_abs, score_diff[i, j].item())
        passed &= count == len(det["labels"]) == matched
        lines.append(f"{matched}/{count}" if count == len(det["labels"]) else f"{count} vs {len(det['labels'])}")
    return Parity(
        passed,
        f"detections matched per image: {', '.join(lines)} (max relative box difference {box_rel:.2e}, max score "
        f"difference {score_abs:.2e}, limit {rtol:g}): {'OK' if passed else 'FAILED'}",
    )


def as_detections(outputs: Sequence[torch.Tensor | np.ndarray]) -> list[dict[str, torch.Tensor]]:
    """``unpad_detections`` of a graph's four outputs, tensors or a runtime's arrays."""
    return unpad_detections(*(torch.as_tensor(output) for output in outputs))
