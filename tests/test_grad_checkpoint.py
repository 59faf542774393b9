"""Gradient checkpointing: the same training step as without it, fewer activations kept."""

from __future__ import annotations

import copy

import pytest
import torch

import core.grad_checkpoint as grad_checkpoint
from backbone import build_backbone
from deeplab_mobile import build_deeplab
from ssdlite import build_ssdlite


def saved_bytes(step) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of ``step()``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


@pytest.mark.parametrize("blocks", [3, 5])
def test_checkpointed_step_equals_plain_step_and_keeps_less(blocks: int) -> None:
    torch.manual_seed(0)
    plain = build_ssdlite(num_classes=3, width_mult=0.35, image_size=96, grad_checkpointing=0).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.features.backbone.set_grad_checkpointing(blocks)
    images = torch.rand(4, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])} for _ in range(4)]

    losses = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        loss = sum(model(images, targets).values())
        loss.backward()
        losses[name] = loss.item()
    assert losses["plain"] == pytest.approx(losses["checkpointed"], rel=1e-6)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    # BN statistics are updated once, not again by the recomputation.
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)

    def step(model):
        return lambda: sum(model(images, targets).values())

    assert saved_bytes(step(checkpointed)) < (0.8 if blocks == 3 else 0.75) * saved_bytes(step(plain))


def test_mobilenet_v2_recomputes_its_stride_2_blocks_by_default() -> None:
    """Both tasks train MobileNetV2 with ``features.0-2`` recomputed unless told otherwise."""
    assert build_backbone("mobilenet_v2", width_mult=0.35).grad_checkpointing == 3
    assert build_ssdlite(num_classes=3, width_mult=0.35).features.backbone.grad_checkpointing == 3
    assert build_deeplab(num_classes=3, width_mult=0.35).backbone.grad_checkpointing == 3
    assert build_ssdlite(num_classes=3, width_mult=0.35, grad_checkpointing=0).features.backbone.grad_checkpointing == 0
    assert build_deeplab(num_classes=3, width_mult=0.35, grad_checkpointing=5).backbone.grad_checkpointing == 5
    build_ssdlite(num_classes=3, backbone="resnet18")  # backbones without checkpointing keep building


def test_checkpointing_is_off_in_evaluation_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    recompute = grad_checkpoint.checkpoint
    monkeypatch.setattr(grad_checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or recompute(*a, **k))
    backbone = build_backbone("mobilenet_v2", width_mult=0.35, taps=["features.14.conv.0", "features.18"])
    backbone.set_grad_checkpointing(5)
    with torch.no_grad():
        backbone.eval()(torch.rand(1, 3, 64, 64))
    assert calls == []  # evaluation runs the blocks plainly
    taps = backbone.train()(torch.rand(2, 3, 64, 64))
    assert len(calls) == 5  # training recomputes the five blocks
    sum(t.sum() for t in taps.values()).backward()
    with pytest.raises(ValueError, match="0..14"):
        backbone.set_grad_checkpointing(15)
    with pytest.raises(NotImplementedError, match="mobilenet_v2"):
        build_backbone("resnet18").set_grad_checkpointing(2)
