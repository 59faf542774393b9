"""CPU fine-tuning: ``ssdlite fit`` vs a minimal plain training loop of the same model on the
same data (320 x 320, batch 8, SGD, 2 threads): step time, and validation mAP@0.5 after the same
training wall time.

The commands run in fresh processes as a user types them, with a callback that stamps every
optimizer step (and, for the accuracy rows, stops training a fixed number of seconds after the
first step began and saves the model's weights). The same-recipe command trains as the plain
loop does (``configs/ssdlite_shapes.yaml``, whose augmentation is the plain loop's, at 320 px,
batch 8, the whole network trained, SGD lr 0.01; its 10-step warm-up and cosine schedule and no
weight decay on BN and biases are the CLI's own); the defaults command is
``configs/ssdlite_custom.yaml`` as shipped (backbone frozen up to stride 16, lr 0.1, full SSD
augmentation) at batch 8. The plain loop (``python -m benchmarks.finetune plain ...``) is what a
torchvision-style script does: ``build_ssdlite`` on ImageNet weights, a DataLoader over the same
dataset, ``loss.backward()``, ``SGD.step()`` at lr 0.01. Step time: the median seconds per step
after the warm-up steps. Accuracy: each side's weights through the same ``ssdlite validate``
path (``SSDLiteModule`` in a ``Trainer``, COCO mAP@0.5 on the validation images).
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
LR = 0.01  # the plain loop's; the same-recipe command uses it too (the whole network trains)


class StepClock(Callback):
    """Writes the wall time of every optimizer step's end to ``$FINETUNE_CLOCK`` (json list).
    With ``$FINETUNE_SECONDS``, stops training once that many seconds have passed since the
    first step began and saves the model's ``state_dict`` to ``$FINETUNE_WEIGHTS``."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.times.append(time.perf_counter())
        Path(os.environ["FINETUNE_CLOCK"]).write_text(json.dumps(self.times))
        budget = os.environ.get("FINETUNE_SECONDS")
        if budget is not None and self.times[-1] - self.start >= float(budget):
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "FINETUNE_WEIGHTS" in os.environ:
            torch.save(pl_module.model.state_dict(), os.environ["FINETUNE_WEIGHTS"])


def median_step(stamps: list[float]) -> float:
    steps = [b - a for a, b in zip(stamps, stamps[1:])][WARMUP_STEPS:]
    return statistics.median(steps)


def cli_command(coco_root: Path, out: Path, recipe: str) -> list[str]:
    """``ssdlite fit`` as a user runs it: ``recipe`` "same" (the plain loop's recipe) or
    "defaults" (``configs/ssdlite_custom.yaml`` as shipped), at 320 px, batch 8."""
    if recipe == "same":
        config = ["--config", str(REPO / "configs" / "ssdlite_shapes.yaml"), "--data.image_size=320",
                  "--model.freeze_backbone=false", f"--model.lr={LR}"]  # fmt: skip
    else:
        config = ["--config", str(REPO / "configs" / "ssdlite_custom.yaml")]
    return [
        sys.executable, "-m", "ssdlite", "fit", *config, f"--data.root={coco_root}", "--data.batch_size=8",
        "--trainer.max_epochs=1000", "--trainer.max_steps=-1", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false", "--trainer.logger=false",
        "--trainer.callbacks=benchmarks.finetune.StepClock", f"--trainer.default_root_dir={out}",
    ]  # fmt: skip


def run_cli(coco_root: Path, out: Path, recipe: str, steps: int | None = None, seconds: float | None = None) -> list[float]:
    """Step stamps of ``cli_command`` run for ``steps`` steps or ``seconds`` of training (then
    its weights are in ``out / f"cli_{recipe}.pt"``)."""
    clock = out / f"cli_{recipe}_clock.json"
    command = cli_command(coco_root, out, recipe)
    env = {**os.environ, "FINETUNE_CLOCK": str(clock), "PYTHONPATH": str(REPO)}
    if steps is not None:
        command.append(f"--trainer.max_steps={steps}")
    if seconds is not None:
        env.update(FINETUNE_SECONDS=str(seconds), FINETUNE_WEIGHTS=str(out / f"cli_{recipe}.pt"))
    subprocess.run(command, check=True, env=env, cwd=out, capture_output=True)
    return json.loads(clock.read_text())


def plain_training(
    coco_root: Path, threads: int, steps: int | None = None, seconds: float | None = None, weights: Path | None = None
) -> list[float]:
    """The minimal loop, in this process (run it fresh: ``python -m benchmarks.finetune plain``):
    ``steps`` steps, or training until ``seconds`` have passed since the first step began.
    Returns the step stamps; saves the model's ``state_dict`` to ``weights``."""
    from datamodules import CocoDetectionDataModule, detection_collate
    from ssdlite import build_ssdlite

    torch.set_num_threads(threads)
    data = CocoDetectionDataModule(str(coco_root), image_size=320, batch_size=8, num_workers=2, zoom_out=False, photometric=False)
    data.setup("fit")
    loader = torch.utils.data.DataLoader(
        data.datasets["train"], batch_size=8, shuffle=True, num_workers=2, collate_fn=detection_collate, drop_last=True
    )
    model = build_ssdlite(num_classes=data.num_classes, image_size=320, pretrained_backbone=True).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=4e-5)
    stamps: list[float] = []
    start = None
    while True:
        for images, targets in loader:
            start = start or time.perf_counter()
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            stamps.append(time.perf_counter())
            if len(stamps) == steps or (seconds is not None and stamps[-1] - start >= seconds):
                if weights is not None:
                    torch.save(model.state_dict(), weights)
                return stamps


def run_plain(
    coco_root: Path, threads: int, steps: int | None = None, seconds: float | None = None, weights: Path | None = None
) -> list[float]:
    """``plain_training`` in a fresh process; its step stamps."""
    command = [sys.executable, "-m", "benchmarks.finetune", "plain", str(coco_root), str(threads),
               str(steps or 0), str(seconds or 0), str(weights or "")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def val_map50(coco_root: Path, weights: Path) -> float:
    """COCO mAP@0.5 on the validation images of ``weights`` (an ``SSDLite`` state dict at 320
    px) through ``SSDLiteModule``'s validation, as ``ssdlite validate`` runs it."""
    from datamodules import CocoDetectionDataModule
    from ssdlite import SSDLiteModule

    data = CocoDetectionDataModule(str(coco_root), image_size=320, eval_batch_size=8, num_workers=0)
    data.setup("validate")
    module = SSDLiteModule(num_classes=data.num_classes, image_size=320)
    module.model.load_state_dict(torch.load(weights, weights_only=True))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    return float(trainer.validate(module, datamodule=data, verbose=False)[0]["val/map_50"])


def finetune_rows(coco_root: Path, out: Path, steps: int = 15, seconds: float = 150.0, threads: int = 2) -> list[Row]:
    """The step-time row (``steps`` steps each) and the accuracy rows (``seconds`` of training
    each: the same-recipe command and the shipped defaults, each against the plain loop)."""
    coco_root, out = coco_root.resolve(), out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"batch": 8, "size": 320, "threads": threads}
    cli_s = median_step(run_cli(coco_root, out, "same", steps=steps))
    plain_s = median_step(run_plain(coco_root, threads, steps=steps))
    rows = [
        Row.timed(
            "fine-tuning step, ssdlite fit vs a plain loop",
            "ssdlite fit (configs/ssdlite_shapes.yaml at 320 px, whole network, lr 0.01)",
            "plain PyTorch loop, same model, data and recipe, 2 loader workers",
            cli_s, plain_s, target="<= 0.8", settings={**settings, "steps": steps, "warm-up steps": WARMUP_STEPS},
        )  # fmt: skip
    ]
    plain_weights = out / "plain.pt"
    plain_steps = len(run_plain(coco_root, threads, seconds=seconds, weights=plain_weights))
    plain_map = val_map50(coco_root, plain_weights)
    recipes = {"same": "ssdlite fit, the plain loop's recipe", "defaults": "ssdlite fit, configs/ssdlite_custom.yaml"}
    for recipe, ours in recipes.items():
        cli_steps = len(run_cli(coco_root, out, recipe, seconds=seconds))
        cli_map = val_map50(coco_root, out / f"cli_{recipe}.pt")
        rows.append(
            Row(
                name=f"val mAP@0.5 after {seconds:.0f} s of fine-tuning",
                ours=ours, peer="plain PyTorch loop (whole network, lr 0.01)", ours_ms=cli_map, peer_ms=plain_map,
                ratio=cli_map / max(plain_map, 1e-6), target=">= 1", unit="mAP@0.5",
                settings={**settings, "seconds": seconds, "steps (ours / plain)": f"{cli_steps} / {plain_steps}"},
            )  # fmt: skip
        )
    return rows


if __name__ == "__main__":
    if sys.argv[1] == "plain":
        root, threads, steps, seconds, weights = sys.argv[2:7]
        stamps = plain_training(
            Path(root), int(threads), int(steps) or None, float(seconds) or None, Path(weights) if weights else None
        )
        print(json.dumps(stamps))
    else:
        for row in finetune_rows(Path(sys.argv[1]), Path(sys.argv[2])):
            print(json.dumps(row.__dict__, default=str))
