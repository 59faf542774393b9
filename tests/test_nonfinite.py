"""Non-finite training steps (``engine.nonfinite.NonFiniteGuard``, wired into both modules):
a NaN loss or a NaN forward pass is skipped with a warning and changes no weight or BN statistic;
``max_nonfinite_steps`` of them in a row stop training; no checkpoint holds a non-finite tensor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from engine.checkpoint_checks import NonFiniteCheckpointError
from engine.nonfinite import NonFiniteGuard, NonFiniteStepWarning, nonfinite_entries
from deeplab_mobile import DeepLabModule
from ssdlite.cli import main as ssdlite_main

REPO = Path(__file__).resolve().parents[1]
TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
SIZE = 64


def segmentation_loader(count: int = 8) -> DataLoader:
    images = torch.rand(count, 3, SIZE, SIZE)
    masks = torch.randint(0, 3, (count, SIZE, SIZE))
    return DataLoader(TensorDataset(images, masks), batch_size=2)


class NaNLossDeepLab(DeepLabModule):
    """DeepLabModule whose loss is NaN at the given global steps (its forward pass is fine)."""

    def __init__(self, nan_loss_steps: list[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_loss_steps = set(nan_loss_steps)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step in self.nan_loss_steps else loss


class NaNImages(L.Callback):
    """Fills the images of the batches at the given global steps (all from ``start`` on) with NaN:
    the forward pass itself goes non-finite, BN running statistics included."""

    def __init__(self, steps: list[int] | None = None, start: int | None = None) -> None:
        self.steps, self.start = set(steps or []), start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.steps or (self.start is not None and step >= self.start):
            batch[0].fill_(float("nan"))


class StateAroundSteps(L.Callback):
    """The module's state dict (weights and buffers) before and after each training step."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _copy(module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = self._copy(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = self._copy(pl_module)


def changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in before if not torch.equal(before[k], after[k])]


def saved_nonfinite(folder: Path) -> dict[str, list[str]]:
    """Every checkpoint in ``folder`` with the names of its non-finite tensors."""
    return {p.name: nonfinite_entries(torch.load(p, weights_only=True)["state_dict"]) for p in folder.glob("*.ckpt")}


def test_nonfinite_steps_are_skipped_and_training_goes_on(tmp_path):
    """DeepLab through a Trainer (SSDLite runs the same guard in the command test below)."""
    module = NaNLossDeepLab([1], num_classes=3, width_mult=0.35)  # step 1: NaN loss; step 2: NaN images
    states = StateAroundSteps()
    checkpoints = ModelCheckpoint(tmp_path, every_n_train_steps=1, save_top_k=-1, save_last=True)
    trainer = L.Trainer(max_steps=4, callbacks=[NaNImages([2]), states, checkpoints], **TRAINER)
    with pytest.warns(NonFiniteStepWarning) as warned:
        trainer.fit(module, segmentation_loader())

    messages = [str(w.message) for w in warned if w.category is NonFiniteStepWarning]
    assert len(messages) == 2, messages
    assert messages[0].startswith("global step 1: loss nan, non-finite gradients in"), messages[0]
    assert "skipped the optimizer step (weights and BN statistics unchanged), 1 in a row of at most 5" in messages[0]
    assert messages[1].startswith("global step 2: loss nan") and "non-finite BN statistics" in messages[1]
    for step in (1, 2):  # weights, BN statistics and batch counters exactly as before the step
        assert not changed_keys(states.before[step], states.after[step]), step
    for step in (0, 3):  # the finite steps around them train
        assert changed_keys(states.before[step], states.after[step])
    guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
    assert trainer.global_step == 4 and guard.skipped_steps == [1, 2] and guard.consecutive == 0
    assert not nonfinite_entries(module.state_dict())
    written = saved_nonfinite(tmp_path)
    assert "last.ckpt" in written and len(written) == 5 and not any(written.values()), written


def test_nonfinite_steps_in_a_row_stop_training_from_the_config(shapes_root, tmp_path, monkeypatch, capsys):
    """``--model.max_nonfinite_steps 2`` through the command: NaN images from step 1 on stop it
    at step 2 with one error line; the checkpoints written before are finite."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        ssdlite_main(
            ["fit", f"--config={REPO / 'configs' / 'ssdlite_shapes.yaml'}", f"--data.root={shapes_root / 'coco'}",
             "--data.num_workers=0", "--data.batch_size=4", "--data.image_size=64",
             "--model.width_mult=0.35", "--model.pretrained_backbone=false", "--model.max_nonfinite_steps=2",
             "--trainer.max_steps=6", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
             "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
             f"--trainer.callbacks.dirpath={tmp_path / 'every_step'}", "--trainer.callbacks.every_n_train_steps=1",
             "--trainer.callbacks.save_top_k=-1",
             "--trainer.callbacks+=test_nonfinite.NaNImages", "--trainer.callbacks.start=1"]
        )  # fmt: skip
    message = str(stopped.value.code)
    assert message.startswith("error: training stopped at global step 2: 2 optimizer steps in a row were not finite"), message
    assert "max_nonfinite_steps=2" in message and "learning rate" in message and "precision" in message
    written = saved_nonfinite(tmp_path / "every_step")
    assert sorted(written) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"] and not any(written.values()), written


def test_a_checkpoint_with_nonfinite_weights_is_refused(tmp_path):
    module = DeepLabModule(num_classes=3, width_mult=0.35)
    trainer = L.Trainer(max_steps=1, default_root_dir=tmp_path, **TRAINER)
    trainer.fit(module, segmentation_loader(count=2))
    good = tmp_path / "good.ckpt"
    trainer.save_checkpoint(good)
    good_bytes = good.read_bytes()

    with torch.no_grad():
        module.model.classifier.bias[0] = float("inf")
    with pytest.raises(NonFiniteCheckpointError, match=r"not saving a checkpoint at global step 1: model\.classifier\.bias hold"):
        trainer.save_checkpoint(good)
    with pytest.raises(NonFiniteCheckpointError):
        trainer.save_checkpoint(tmp_path / "new.ckpt", weights_only=True)  # weights-only saves too
    assert good.read_bytes() == good_bytes and not (tmp_path / "new.ckpt").exists()


def test_under_ddp_a_nan_on_one_process_is_skipped_by_all(tmp_path):
    """Rank 1 alone sees a NaN loss (finite gradients): both ranks skip the same steps, keep
    identical weights, and stop together at the second skip in a row, without a hang."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "nonfinite_ddp.py"), str(tmp_path)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [1, 3, 5, 6]
    assert ranks[0]["checksums"] == ranks[1]["checksums"] and len(ranks[0]["checksums"]) == 6
    after = {int(step): value for step, value in ranks[0]["checksums"].items()}  # by global step after it
    assert all(after[s + 1] == after[s] for s in (1, 3, 5)) and all(after[s + 1] != after[s] for s in (2, 4))
    for rank in ranks:
        assert rank["stopped"].startswith("training stopped at global step 6: 2 optimizer steps in a row")
    assert "the last one had loss nan" in ranks[1]["stopped"]
    assert "a non-finite value on another process (here: loss " in ranks[0]["stopped"]
