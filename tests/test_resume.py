"""Kill and resume, exact: a training run SIGKILLed in the middle of an epoch and resumed with
``--ckpt_path last`` ends with the weights and the validation metric of the uninterrupted run.

Each task runs its real command in subprocesses (tiny model and data, deterministic, one
thread, a checkpoint after every step): run A trains 2 epochs of 3 steps straight through; run
B is the same command killed by ``kill_switch.SigkillInStep`` inside step 4 (the second of
epoch 1, after backward), then run again with ``--ckpt_path last``. A and B's first part run
side by side. SSDLite loads with one worker, DeepLab in the main process; DeepLab's head holds
dropout, so the random state has to be restored too. A quick test checks the loader itself:
batches independent of the number of workers, and a resumed epoch that decodes only what is
left.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from datamodules import CocoDetectionDataModule
from datamodules.datasets import DetectionDataset
from datamodules.shapes import generate_shapes

REPO = Path(__file__).resolve().parents[1]
KILL_IN_STEP = 4  # 0-based: epoch 1, batch 1 (12 training images in batches of 4)
TOLERANCE = 1e-6

TASKS = {
    "ssdlite": {
        "module": "ssdlite",
        "config": REPO / "configs" / "ssdlite_shapes.yaml",
        "monitor": "val/map",
        "overrides": lambda data: [
            f"--data.root={data / 'coco'}", "--data.image_size=64", "--data.num_workers=1",
            "--model.warmup_steps=2",
            "--model.predictions_json=null",
        ],
    },
    "deeplab": {
        "module": "deeplab_mobile",
        "config": REPO / "configs" / "deeplab_shapes.yaml",
        "monitor": "val/mIoU",
        "overrides": lambda data: [
            f"--data.root={data}", "--data.crop_size=64", "--data.num_workers=0", "--trainer.max_steps=-1",
        ],
    },
    "multitask": {
        "module": "multitask",
        "config": REPO / "configs" / "multitask_shapes.yaml",
        "monitor": "val/score",
        "overrides": lambda data: [
            f"--data.root={data}", "--data.image_size=64", "--data.num_workers=1", "--model.warmup_steps=2",
        ],
    },
}
COMMON = [
    "--data.batch_size=4", "--model.width_mult=0.35", "--model.pretrained_backbone=false",
    "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1", "--trainer.num_sanity_val_steps=0",
    "--trainer.deterministic=true", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("tiny_shapes"), num_train=12, num_val=4, seed=0, min_size=64, max_size=96)


def fit(task: str, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    """Start ``<task> fit`` writing checkpoints (every step, ``last.ckpt``) and CSV logs to ``out``."""
    out.mkdir(exist_ok=True)
    run_config = out / "run.yaml"
    run_config.write_text(yaml.safe_dump({"trainer": {
        "default_root_dir": str(out),
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out), "name": "logs"}},
        "callbacks": [{
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(out / "checkpoints"), "monitor": None, "save_last": True,
                          "every_n_train_steps": 1, "save_top_k": 0},
        }],
    }}))
    spec = TASKS[task]
    command = [sys.executable, "-m", spec["module"], "fit", f"--config={spec['config']}", f"--config={run_config}",
               *COMMON, *spec["overrides"](data), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def last_checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def final_metric(out: Path, name: str) -> float:
    """The last value of ``name`` in the newest CSV log of ``out``."""
    newest = max((out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    return [float(row[name]) for row in csv.DictReader(newest.open()) if row.get(name)][-1]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)


@pytest.mark.parametrize("task", list(TASKS))
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(task: str, tiny_shapes: Path, tmp_path: Path) -> None:
    straight = fit(task, tiny_shapes, tmp_path / "A")
    killed = fit(task, tiny_shapes, tmp_path / "B",
                 "--trainer.callbacks+=kill_switch.SigkillInStep", f"--trainer.callbacks.init_args.step={KILL_IN_STEP}")
    (code_a, log_a), (code_b, log_b) = finish(straight), finish(killed)
    assert code_a == 0, log_a[-3000:]
    assert code_b == -signal.SIGKILL, log_b[-3000:]
    assert last_checkpoint(tmp_path / "B")["global_step"] == KILL_IN_STEP

    code, log = finish(fit(task, tiny_shapes, tmp_path / "B", "--ckpt_path=last"))
    assert code == 0, log[-3000:]
    assert "Restored all states" in log and "not resumable" not in log, log[-3000:]

    a, b = last_checkpoint(tmp_path / "A"), last_checkpoint(tmp_path / "B")
    assert a["global_step"] == b["global_step"] == 6
    difference = max_difference(a["state_dict"], b["state_dict"])
    monitor = TASKS[task]["monitor"]
    metric_a, metric_b = final_metric(tmp_path / "A", monitor), final_metric(tmp_path / "B", monitor)
    print(f"{task}: max weight difference {difference:.3g}, final {monitor} {metric_a:.6f} / {metric_b:.6f}")
    assert difference <= TOLERANCE
    assert metric_a == pytest.approx(metric_b, abs=TOLERANCE)


def test_training_batches_do_not_depend_on_workers_and_resuming_skips_without_decoding(
    tiny_shapes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def epoch_batches(num_workers: int, resume: dict[str, int] | None = None) -> list[torch.Tensor]:
        dm = CocoDetectionDataModule(str(tiny_shapes / "coco"), image_size=64, batch_size=4, num_workers=num_workers)
        dm.setup("fit")
        loader = dm.train_dataloader()
        if resume is not None:
            loader.load_state_dict(resume)
        loader.sampler.set_epoch(1)  # as Lightning does before the epoch
        return [images for images, _ in loader]

    in_process, in_worker = epoch_batches(0), epoch_batches(1)
    assert len(in_process) == 3 and all(torch.equal(a, b) for a, b in zip(in_process, in_worker, strict=True))

    decoded: list[int] = []
    load = DetectionDataset.load

    def counting_load(self: DetectionDataset, index: int):
        decoded.append(index)
        return load(self, index)

    monkeypatch.setattr(DetectionDataset, "load", counting_load)
    resumed = epoch_batches(0, resume={"epoch": 1, "batches": 2})
    assert len(resumed) == 1 and torch.equal(resumed[0], in_process[2]) and len(decoded) == 4
    assert epoch_batches(0, resume={"epoch": 0, "batches": 2})[0].equal(in_process[0])  # another epoch's state: no skip
