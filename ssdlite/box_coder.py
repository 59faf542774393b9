"""The SSD / Faster R-CNN box encoding with scale factors (10, 10, 5, 5), batched.

``t_x = wx (x - x_a) / w_a``, ``t_y = wy (y - y_a) / h_a``, ``t_w = ww log(w / w_a)``,
``t_h = wh log(h / h_a)`` on centres and sizes; boxes are xyxy in pixels. Every function
broadcasts over leading dimensions, so a whole batch ``N x A x 4`` encodes or decodes at once.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import box_convert

# exp() of larger log-size offsets overflows; the bound torchvision uses (a box 62x its anchor).
_MAX_LOG_SCALE = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes against anchors and decodes regression outputs back to boxes."""

    def __init__(self, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        self.weights = tuple(float(w) for w in weights)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``... x 4`` xyxy boxes and (broadcastable) xyxy anchors -> ``... x 4`` offsets."""
        weights = boxes.new_tensor(self.weights)
        box = box_convert(boxes, "xyxy", "cxcywh")
        anchor = box_convert(anchors, "xyxy", "cxcywh")
        centre = (box[..., :2] - anchor[..., :2]) / anchor[..., 2:]
        size = torch.log(box[..., 2:] / anchor[..., 2:])
        return torch.cat([centre, size], dim=-1) * weights

    def decode(self, offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``... x 4`` offsets and (broadcastable) xyxy anchors -> ``... x 4`` xyxy boxes."""
        offsets = offsets / offsets.new_tensor(self.weights)
        anchor = box_convert(anchors, "xyxy", "cxcywh")
        centre = anchor[..., :2] + offsets[..., :2] * anchor[..., 2:]
        size = anchor[..., 2:] * torch.exp(offsets[..., 2:].clamp(max=_MAX_LOG_SCALE))
        return box_convert(torch.cat([centre, size], dim=-1), "cxcywh", "xyxy")
