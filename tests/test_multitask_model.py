"""The joint model: one backbone pass, both outputs, per-sample loss masking, the logit geometry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backbone import list_backbones
from deeplab_mobile.resize import resize_bilinear, upsample_cells
from multitask import LossWeighting, build_multitask

REGISTRY = [name for name in list_backbones() if not name.startswith("timm:")] + ["timm:mobilenetv3_large_100"]


@pytest.mark.parametrize("backbone", REGISTRY)
def test_one_backbone_pass_gives_boxes_and_masks(backbone):
    if backbone.startswith("timm:"):
        pytest.importorskip("timm", reason="the timm extra is not installed")
    width = 0.35 if backbone == "mobilenet_v2" else 1.0
    model = build_multitask(num_det_classes=4, num_seg_classes=5, backbone=backbone, width_mult=width, image_size=128)
    model.eval()
    stem = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    calls = []
    stem.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    with torch.no_grad():
        output = model(torch.rand(2, 3, 128, 128))
    assert len(calls) == 1 and calls[0][0] == 2  # the whole batch, once
    assert output["segmentation"].shape == (2, 5, 128, 128)
    assert len(output["detections"]) == 2
    for detections in output["detections"]:
        assert detections["boxes"].shape[1] == 4 and len(detections["scores"]) == len(detections["labels"])
        assert detections["labels"].max().item() < 4 if len(detections["labels"]) else True


def _targets(size: int, with_boxes: bool, with_mask: bool) -> list[dict]:
    targets = []
    for i in range(2):
        mask = torch.zeros(size, size, dtype=torch.int64)
        mask[10:40, 20 + i : 60] = 2
        targets.append({
            "boxes": torch.tensor([[20.0 + i, 10.0, 60.0, 40.0]]) if with_boxes else torch.zeros(0, 4),
            "labels": torch.tensor([1]) if with_boxes else torch.zeros(0, dtype=torch.int64),
            "has_boxes": torch.tensor(with_boxes),
            "mask": mask if with_mask else torch.full((size, size), 255),
            "has_mask": torch.tensor(with_mask),
        })  # fmt: skip
    return targets


def _gradient_norms(model, images, targets) -> dict[str, float]:
    model.zero_grad()
    sum(model(images, targets).values()).backward()
    parts = {"detection head": model.detector.head, "extras": model.detector.features.extras,
             "segmentation head": model.segmenter}  # fmt: skip
    return {
        name: sum(p.grad.abs().sum().item() for p in part.parameters() if p.grad is not None)
        for name, part in parts.items()
    }


def test_single_label_batches_train_only_their_head():
    torch.manual_seed(0)
    model = build_multitask(num_det_classes=3, num_seg_classes=4, width_mult=0.35, image_size=96).train()
    images = torch.rand(2, 3, 96, 96)
    detection_only = _gradient_norms(model, images, _targets(96, with_boxes=True, with_mask=False))
    assert detection_only["segmentation head"] == 0.0
    assert detection_only["detection head"] > 0 and detection_only["extras"] > 0
    segmentation_only = _gradient_norms(model, images, _targets(96, with_boxes=False, with_mask=True))
    assert segmentation_only["detection head"] == 0.0 and segmentation_only["extras"] == 0.0
    assert segmentation_only["segmentation head"] > 0
    both = _gradient_norms(model, images, _targets(96, with_boxes=True, with_mask=True))
    assert all(value > 0 for value in both.values())
    losses = model(images, _targets(96, with_boxes=False, with_mask=False))
    assert set(losses) == {"bbox_regression", "classification", "segmentation"}
    assert all(value.item() == 0.0 for value in losses.values())  # no labels: zero, not NaN


def test_learned_weighting_adds_its_term_and_learns():
    weighting = LossWeighting({"detection": 1.0, "segmentation": 0.5}, learned=True)
    torch.testing.assert_close(torch.stack(list(weighting.weights().values())), torch.tensor([1.0, 0.5]))
    losses = weighting({"detection": {"a": torch.tensor(2.0)}, "segmentation": {"b": torch.tensor(4.0)}})
    assert set(losses) == {"a", "b", "uncertainty"}
    torch.testing.assert_close(losses["b"], torch.tensor(2.0))
    sum(losses.values()).backward()
    assert weighting.log_variance.grad.abs().min() > 0
    with pytest.raises(ValueError, match="positive"):
        LossWeighting({"detection": 0.0})


@pytest.mark.parametrize("size", [(96, 96), (100, 83), (33, 65)])
def test_upsampled_cells_sit_on_their_pixels(size):
    """Cell i of a stride-s grid (symmetric-padded stride-2 convs, any input size) sits on pixel
    s * i: a one-hot cell upsamples to a peak exactly there, at every input size."""
    stride = 16
    cells = (-(-size[0] // stride), -(-size[1] // stride))
    for i, j in [(0, 0), (cells[0] - 1, cells[1] - 1), (cells[0] // 2, 1)]:
        grid = torch.zeros(1, 1, *cells)
        grid[..., i, j] = 1.0
        up = upsample_cells(grid, size, stride)
        assert up.shape[-2:] == size
        # Up to the cell (past the last one the grid is extended by replication), the only peak.
        before = up[0, 0, : stride * i + 1, : stride * j + 1]
        assert before[-1, -1] == 1.0 and (before == 1.0).sum() == 1
    # The real backbone agrees: an impulse at input pixel (16 i, 16 j) is the centre of cell (i, j).
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    nn.init.ones_(conv.weight)
    impulse = torch.zeros(1, 1, *size)
    impulse[..., 32, 16] = 1.0
    x = impulse
    for _ in range(4):
        x = conv(x)
    assert x.shape[-2:] == cells and x[0, 0].argmax().item() == 2 * cells[1] + 1


def test_upsample_cells_is_align_corners_on_aligned_sizes():
    grid = torch.rand(1, 3, 5, 7)
    torch.testing.assert_close(upsample_cells(grid, (65, 97), 16), resize_bilinear(grid, (65, 97), align_corners=True))
    with pytest.raises(ValueError, match="covers at most"):
        upsample_cells(grid, (90, 90), 16)
