"""Checkpoints written before the runtime moved to ``engine/`` (by main at a4b5b94: one training
step of each task on the shapes data, width 0.35, 64 px) still load and compute what they
computed then: through ``load_from_checkpoint``, the commands' ``--ckpt_path`` and ``export``;
and the old module paths a saved run config names still import."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from deeplab_mobile import DeepLabModule
from deeplab_mobile.cli import main as deeplab_main
from engine.checkpoint_io import AtomicCheckpointIO
from ssdlite import SSDLiteModule
from ssdlite.cli import main as ssdlite_main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "legacy_a4b5b94"
EXPECTED = json.loads((FIXTURES / "expected_outputs.json").read_text())
TINY = ["--model.width_mult=0.35", "--model.pretrained_backbone=false", "--data.num_workers=0",
        "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.limit_val_batches=1"]  # fmt: skip


def fixed_images(size: int) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_old_checkpoints_load_and_compute_as_before():
    """SSDLite's decoded outputs, and DeepLab's logits before their upsampling (whose geometry
    changed on purpose since: ``tests/test_alignment.py``), as main computed them."""
    ssdlite = SSDLiteModule.load_from_checkpoint(FIXTURES / "ssdlite.ckpt", map_location="cpu", pretrained_backbone=False)
    deeplab = DeepLabModule.load_from_checkpoint(FIXTURES / "deeplab.ckpt", map_location="cpu", pretrained_backbone=False)
    model = deeplab.eval().model
    with torch.no_grad():
        boxes, scores = ssdlite.eval().model.decode(fixed_images(64))
        features = model.backbone(model.backbone.normalize(fixed_images(65)))
        head_logits = model.classifier(model.aspp(features[model.head_tap]))
    torch.testing.assert_close(scores.flatten(1).topk(10, dim=1).values, torch.tensor(EXPECTED["ssdlite_top_scores"]))
    assert boxes.double().sum().item() == pytest.approx(EXPECTED["ssdlite_box_sum"], rel=1e-6)
    torch.testing.assert_close(head_logits, torch.tensor(EXPECTED["deeplab_head_logits"]), rtol=1e-4, atol=1e-5)


def test_old_checkpoints_run_through_the_commands(shapes_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = next((shapes_root / "coco" / "val2017").glob("*.jpg"))
    ssdlite = ssdlite_main(["validate", f"--config={REPO / 'configs' / 'ssdlite_shapes.yaml'}",
                            f"--data.root={shapes_root / 'coco'}", "--data.image_size=64", "--data.image_ids_from=null",
                            f"--ckpt_path={FIXTURES / 'ssdlite.ckpt'}", *TINY])  # fmt: skip
    assert "val/map" in ssdlite.trainer.callback_metrics
    deeplab = deeplab_main(["validate", f"--config={REPO / 'configs' / 'deeplab_shapes.yaml'}",
                            f"--data.root={shapes_root}", f"--ckpt_path={FIXTURES / 'deeplab.ckpt'}", *TINY])  # fmt: skip
    assert "val/mIoU" in deeplab.trainer.callback_metrics
    assert ssdlite_main(["export", f"--ckpt_path={FIXTURES / 'ssdlite.ckpt'}", "--output=s.onnx", f"--image={image}"]).passed
    assert deeplab_main(["export", f"--ckpt_path={FIXTURES / 'deeplab.ckpt'}", "--output=d.onnx", f"--image={image}",
                         "--image_size", "64", "64"]).passed  # fmt: skip


def test_old_module_paths_of_a_saved_run_config_still_import():
    import engine.cli  # noqa: F401  (installs the aliases, as every command does)

    for name in ("ssdlite_config.yaml", "deeplab_config.yaml"):
        plugin = yaml.safe_load((FIXTURES / name).read_text())["trainer"]["plugins"]["class_path"]
        assert plugin == "backbone.checkpoint_io.AtomicCheckpointIO"  # what main wrote
        module, _, cls = plugin.rpartition(".")
        assert getattr(importlib.import_module(module), cls) is AtomicCheckpointIO
