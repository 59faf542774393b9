"""CPU fine-tuning: ``ssdlite fit`` with its defaults vs a minimal plain training loop of the same
model on the same data (320 x 320, batch 8, SGD, the whole network trained, 2 threads).

The command runs in a fresh process as a user types it (the README's custom-data command with
``--data.image_size 320 --model.freeze_backbone false --data.batch_size 8``), with a callback
that stamps every optimizer step; the plain loop (``python -m benchmarks.finetune plain ...``) is
what a torchvision-style script does: ``build_ssdlite`` on ImageNet weights, a DataLoader over
the same dataset and SSD augmentation, ``loss.backward()``, ``SGD.step()``. Each side reports the
median seconds per step after its warm-up steps.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer

from benchmarks.harness import Row

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3


class StepClock(Callback):
    """Writes the wall time of every optimizer step's end to ``$FINETUNE_CLOCK`` (json list)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.times.append(time.perf_counter())
        Path(os.environ["FINETUNE_CLOCK"]).write_text(json.dumps(self.times))


def median_step(stamps: list[float]) -> float:
    steps = [b - a for a, b in zip(stamps, stamps[1:])][WARMUP_STEPS:]
    return statistics.median(steps)


def cli_step_seconds(coco_root: Path, steps: int, out: Path) -> float:
    clock = out / "cli_clock.json"
    command = [
        sys.executable, "-m", "ssdlite", "fit", f"--config={REPO / 'configs' / 'ssdlite_shapes.yaml'}",
        f"--data.root={coco_root}", "--data.image_size=320", "--model.freeze_backbone=false", "--data.batch_size=8",
        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false", "--trainer.logger=false", "--trainer.callbacks=benchmarks.finetune.StepClock",
        f"--trainer.default_root_dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "FINETUNE_CLOCK": str(clock), "PYTHONPATH": str(REPO)}
    subprocess.run(command, check=True, env=env, cwd=out, capture_output=True)
    return median_step(json.loads(clock.read_text()))


def plain_step_seconds(coco_root: Path, steps: int, threads: int) -> float:
    """The minimal loop, in this process (run it fresh: ``python -m benchmarks.finetune plain``)."""
    from datamodules import CocoDetectionDataModule, detection_collate
    from ssdlite import build_ssdlite

    torch.set_num_threads(threads)
    data = CocoDetectionDataModule(str(coco_root), image_size=320, batch_size=8, num_workers=2, zoom_out=False, photometric=False)
    data.setup("fit")
    loader = torch.utils.data.DataLoader(
        data.datasets["train"], batch_size=8, shuffle=True, num_workers=2, collate_fn=detection_collate, drop_last=True
    )
    model = build_ssdlite(num_classes=data.num_classes, image_size=320, pretrained_backbone=True).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    stamps: list[float] = []
    while len(stamps) < steps:
        for images, targets in loader:
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            stamps.append(time.perf_counter())
            if len(stamps) == steps:
                break
    return median_step(stamps)


def finetune_rows(coco_root: Path, out: Path, steps: int = 15, threads: int = 2) -> list[Row]:
    coco_root, out = coco_root.resolve(), out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cli_s = cli_step_seconds(coco_root, steps, out)
    plain = subprocess.run(
        [sys.executable, "-m", "benchmarks.finetune", "plain", str(coco_root), str(steps), str(threads)],
        check=True, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    plain_s = float(plain.stdout.strip().splitlines()[-1])
    return [
        Row(
            name="fine-tuning step, ssdlite fit defaults vs a plain loop",
            ours="ssdlite fit (README custom-data command, 320 px, batch 8, whole network)",
            peer="plain PyTorch loop, same model and data, 2 loader workers",
            ours_ms=1000 * cli_s,
            peer_ms=1000 * plain_s,
            ratio=cli_s / plain_s,
            target="<= 0.8",
            settings={"batch": 8, "size": 320, "steps": steps, "warm-up steps": WARMUP_STEPS, "threads": threads},
        )
    ]


if __name__ == "__main__":
    if sys.argv[1] == "plain":
        print(plain_step_seconds(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    else:
        for row in finetune_rows(Path(sys.argv[1]), Path(sys.argv[2])):
            print(json.dumps(row.__dict__, default=str))
