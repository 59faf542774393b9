"""SSD anchors as the TF Object Detection API builds them for ``ssdlite_mobilenet_v2_coco``.

Layer ``k`` of ``num_layers`` has scale ``s_k = min_scale + (max_scale - min_scale) k / (L - 1)``
(relative to the image side); it gets one box per aspect ratio ``a`` with width ``s_k sqrt(a)``
and height ``s_k / sqrt(a)``, plus one extra square box of scale ``sqrt(s_k s_{k+1})``
(``s_L = 1``). The first layer instead has the three boxes ``first_layer_boxes``
(TF's ``reduce_boxes_in_lowest_layer``). Centres are the cell centres. Per map, anchors are
ordered row by row, cell by cell, box by box: the order the head flattens its outputs in.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

# (scale, aspect ratio) of the lowest layer's three boxes, as in TF's reduce_boxes_in_lowest_layer.
FIRST_LAYER_BOXES: tuple[tuple[float, float], ...] = ((0.1, 1.0), (0.2, 2.0), (0.2, 0.5))


class SSDAnchorGenerator(nn.Module):
    """Anchors in input pixels, ``A x 4`` xyxy, for an image size and its feature map sizes.

    Anchors depend only on the sizes, so they are computed once per (image size, map sizes,
    device, dtype) and cached.
    """

    def __init__(
        self,
        num_layers: int = 6,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
        first_layer_boxes: Sequence[tuple[float, float]] | None = FIRST_LAYER_BOXES,
        interpolated_scale_aspect_ratio: float | None = 1.0,
        clip: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.scales = [
            min_scale + (max_scale - min_scale) * k / max(num_layers - 1, 1) for k in range(num_layers)
        ] + [1.0]
        self.clip = clip
        self.boxes_per_layer: list[list[tuple[float, float]]] = []  # (width, height) relative to the image
        for k in range(num_layers):
            if k == 0 and first_layer_boxes is not None:
                pairs = list(first_layer_boxes)
            else:
                pairs = [(self.scales[k], a) for a in aspect_ratios]
                if interpolated_scale_aspect_ratio is not None:
                    pairs.append((math.sqrt(self.scales[k] * self.scales[k + 1]), interpolated_scale_aspect_ratio))
            self.boxes_per_layer.append([(s * math.sqrt(a), s / math.sqrt(a)) for s, a in pairs])
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def num_anchors_per_location(self) -> list[int]:
        return [len(boxes) for boxes in self.boxes_per_layer]

    def forward(
        self,
        image_size: tuple[int, int],
        feature_sizes: Sequence[tuple[int, int]],
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``A x 4`` xyxy anchors in pixels of an ``image_size = (h, w)`` input.

        ``feature_sizes`` are the ``(h, w)`` of the maps the head predicts on, in order.
        """
        if len(feature_sizes) != self.num_layers:
            raise ValueError(f"got {len(feature_sizes)} feature maps for {self.num_layers} anchor layers")
        key = (tuple(image_size), tuple(map(tuple, feature_sizes)), str(device), dtype)
        if key not in self._cache:
            self._cache[key] = self._build(image_size, feature_sizes).to(device=device, dtype=dtype)
        return self._cache[key]

    def _build(self, image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        height, width = image_size
        per_layer = []
        for (fh, fw), boxes in zip(feature_sizes, self.boxes_per_layer):
            cy = (torch.arange(fh, dtype=torch.float64) + 0.5) / fh
            cx = (torch.arange(fw, dtype=torch.float64) + 0.5) / fw
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # fh x fw
            wh = torch.tensor(boxes, dtype=torch.float64)  # B x 2
            centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # fh*fw x 1 x 2
            half = wh.reshape(1, -1, 2) / 2
            xyxy = torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4)
            per_layer.append(xyxy)
        anchors = torch.cat(per_layer) * torch.tensor([width, height, width, height], dtype=torch.float64)
        if self.clip:
            anchors[:, 0::2] = anchors[:, 0::2].clamp(0, width)
            anchors[:, 1::2] = anchors[:, 1::2].clamp(0, height)
        return anchors.float()
