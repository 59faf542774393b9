"""The task base class is enough for a new task: which classes an image shows (multi-label
presence, from the shapes segmentation masks) is a model, a loss and a metric on
``engine.TaskModule``, and runs fit / validate / predict / export through the shared CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MultilabelAccuracy

from backbone import build_backbone
from engine import Parity, TaskExport, TaskModule, run_task_cli
from engine.parity import compare_label_maps


class Presence(nn.Module):
    """MobileNetV2 (width 0.35) features, global pooling, one logit per class."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone("mobilenet_v2", width_mult=0.35, taps=["features.18"])
        self.classifier = nn.Linear(self.backbone.info("features.18").channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.backbone.normalize(images))["features.18"]
        return self.classifier(features.mean(dim=(2, 3)))


def present(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``N x C`` 0/1: which classes a ``N x H x W`` mask shows (255 ignored)."""
    return F.one_hot(masks.clamp(max=num_classes), num_classes + 1)[..., :num_classes].amax(dim=(1, 2))


class PresenceModule(TaskModule):
    def __init__(self, num_classes: int = 2, lr: float = 0.01, prediction_dir: str | None = None) -> None:
        super().__init__(Presence(num_classes), prediction_dir=prediction_dir)

    def training_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        images, masks = batch
        return {"bce": F.binary_cross_entropy_with_logits(self.model(images), present(masks, self.hparams.num_classes).float())}

    def make_metric(self) -> nn.Module:
        return MultilabelAccuracy(self.hparams.num_classes)

    def update_metric(self, metric: nn.Module, batch: Any, keep: torch.Tensor) -> None:
        images, masks = batch
        metric.update(self.model(images[keep]), present(masks[keep], self.hparams.num_classes))

    def compute_metric(self, metric: nn.Module) -> dict[str, torch.Tensor]:
        return {"accuracy": metric.compute()}

    def predict_batch(self, model: nn.Module, images: torch.Tensor, metas: Sequence[dict]) -> list[dict[str, Any]]:
        return [{"present": (logits > 0).nonzero().flatten()} for logits in model(images)]

    def write_prediction(self, result: dict[str, Any], meta: dict[str, Any], directory: Path) -> None:
        names = self.class_names()
        directory.mkdir(parents=True, exist_ok=True)
        record = {"present": [names[i] for i in result["present"].tolist()], "image_size": list(meta["image"].shape[1:])}
        (directory / f"{Path(meta['path']).stem}.json").write_text(json.dumps(record))


class PresenceExport(TaskExport):
    module_class = PresenceModule

    def image_size(self, module: TaskModule, args: argparse.Namespace) -> tuple[int, int]:
        return 64, 64

    def graph(self, module: TaskModule, args: argparse.Namespace) -> nn.Module:
        return module.model

    def output_names(self, args: argparse.Namespace) -> dict[str, str]:
        return {"logits": "N x C"}

    def parity(self, reference: Sequence[torch.Tensor], exported: Sequence[Any], args: argparse.Namespace) -> Parity:
        return compare_label_maps((reference[0] > 0)[:, None], exported[0][:, None] > 0)


def presence_main(args: list[str]) -> Any:
    return run_task_cli(PresenceModule, PresenceExport(), "presence", args)


def test_a_third_task_needs_only_model_loss_and_metric(shapes_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = ["--data=datamodules.VOCSegmentationDataModule", f"--data.root={shapes_root}",
            "--data.class_names=[circle, square, triangle, star, hexagon]", "--data.crop_size=64",
            "--data.batch_size=4", "--data.num_workers=0", "--trainer.enable_progress_bar=false",
            "--trainer.logger=false", "--trainer.accelerator=cpu"]  # fmt: skip
    cli = presence_main(["fit", *data, "--trainer.max_steps=4", "--trainer.limit_val_batches=2",
                         "--trainer.val_check_interval=4", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert cli.model.hparams.num_classes == 6  # from the datamodule: background + 5 shapes
    assert cli.model.model.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert "val/accuracy" in cli.trainer.callback_metrics and "train/loss" in cli.trainer.callback_metrics
    checkpoint = next(tmp_path.rglob("*.ckpt"))

    validated = presence_main(["validate", *data, f"--ckpt_path={checkpoint}", "--trainer.limit_val_batches=2"])
    assert 0.0 <= float(validated.trainer.callback_metrics["val/accuracy"]) <= 1.0

    photos = shapes_root / "coco" / "val2017"
    presence_main(["predict", *data, f"--ckpt_path={checkpoint}", f"--data.predict_path={photos}",
                   f"--model.prediction_dir={tmp_path / 'out'}"])  # fmt: skip
    written = sorted((tmp_path / "out").glob("*.json"))
    assert len(written) == len(list(photos.glob("*.jpg")))
    record = json.loads(written[0].read_text())
    assert set(record["present"]) <= {"background", "circle", "square", "triangle", "star", "hexagon"}

    image = next(photos.glob("*.jpg"))
    assert presence_main(["export", f"--ckpt_path={checkpoint}", "--output=presence.onnx", f"--image={image}"]).passed


def test_bf16_on_a_cpu_that_emulates_it_is_named(shapes_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("engine.task.cpu_computes_bf16", lambda: False)
    args = ["fit", "--data=datamodules.VOCSegmentationDataModule", f"--data.root={shapes_root}", "--data.crop_size=64",
            "--data.batch_size=4", "--data.num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
            "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed", "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false"]  # fmt: skip
    with pytest.warns(UserWarning, match=r"without AVX512-BF16 or AMX: bf16 is emulated .* --trainer.precision 32-true"):
        presence_main(args)
