"""Lightning DDP on CPU (2 processes, gloo, no sync BN) through the real command lines.

Per task: ``fit`` a few steps under DDP, then ``validate`` its last checkpoint under DDP and
in one process. The 7 validation images split unevenly: rank 0 evaluates images 0, 2, 4, 6
and rank 1 images 1, 3, 5 (``datamodules.UnpaddedDistributedSampler``), in batches of
different counts. mAP and mIoU must equal the single-process evaluation exactly (no image
repeated or lost, no hang), on every rank, and equal the validation at the end of ``fit``.

Every command is a subprocess: Lightning's DDP launcher starts rank 1 by running the command
line again, so only a real command line tests what a user runs. ``probes.EvaluationRecord``,
appended to the callbacks, writes what each rank evaluated.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml

from datamodules.shapes import generate_shapes
from ssdlite.metrics import detection_metric

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
VAL_IMAGES = 7  # odd: the ranks hold 4 and 3 images
RANK_SHARES = {0: [0, 2, 4, 6], 1: [1, 3, 5]}
DDP = ["--trainer.accelerator=cpu", f"--trainer.devices={WORLD_SIZE}", "--trainer.strategy=ddp"]
ONE_PROCESS = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
COMMAND_TIMEOUT_S = 300  # a hang in a collective shows up as this timeout
# Launcher settings of an outer job (SLURM, torchrun) would make Lightning join that job instead.
OUTER_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")

COMMON_TRAINER = {
    "max_epochs": 1, "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
    "enable_progress_bar": False, "enable_model_summary": False,
}  # fmt: skip


@dataclass(frozen=True)
class Task:
    """A task's command, its shapes config and the overrides that make it a few-second run."""

    module: str
    config: str
    monitor: str
    overrides: dict[str, Any]


TASKS = {
    # Two steps from ImageNet MobileNetV2: already a non-zero mAP. Evaluation batches of 3 give
    # rank 0 two batches, rank 1 one.
    "ssdlite": Task("ssdlite", "configs/ssdlite_shapes.yaml", "val/map", {
        "model": {"warmup_steps": 1},
        "data": {"init_args": {"root": "{data}/coco", "image_size": 128, "batch_size": 4, "eval_batch_size": 3}},
    }),
    # A small learning rate keeps the model near its initialisation, where it predicts every
    # class, so every cell of the confusion matrix is exercised. Evaluation images one by one:
    # a batch pads its images to the largest, and the padding (seen by the image-pooling branch)
    # would make the predictions depend on which images share a batch, in one process or many.
    "deeplab": Task("deeplab_mobile", "configs/deeplab_shapes.yaml", "val/mIoU", {
        "model": {"lr": 0.001, "eval_scales": [1.0]},
        "data": {"init_args": {"root": "{data}", "crop_size": 64, "scales": [1.0], "batch_size": 4,
                               "eval_batch_size": 1}},
    }),
    # Both heads' metrics and their mean (the monitored score), gathered as the single tasks' are.
    "multitask": Task("multitask", "configs/multitask_shapes.yaml", "val/score", {
        "model": {"warmup_steps": 1},
        "data": {"init_args": {"root": "{data}", "image_size": 128, "batch_size": 4, "eval_batch_size": 3}},
    }),
}  # fmt: skip


def rendezvous_port() -> int:
    """A free TCP port below the kernel's ephemeral range, for the ranks' rendezvous.

    A port from ``bind(("", 0))`` lies inside that range, where the kernel also draws the local
    port of every outgoing connection: a rank that connects before the store listens can draw
    the store's own port and connect to itself (TCP simultaneous open), and any other process's
    connection can take the port before the store binds it. Below the range neither can happen."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 8192), low), 64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free TCP port in the 8192 below {low}")


def command_environment() -> dict[str, str]:
    """This environment for a command: its own rendezvous port, one thread per process (as in
    the single-process run, so that both compute alike), ``tests/`` importable, no outer
    launcher, and Python stacks dumped on SIGABRT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    for name in OUTER_LAUNCHER_VARIABLES:
        env.pop(name, None)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(rendezvous_port()),
        OMP_NUM_THREADS="1",
        PYTHONFAULTHANDLER="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "tests"), str(REPO), env.get("PYTHONPATH")])),
    )
    return env


def run_command(module: str, args: list[str], cwd: Path) -> None:
    """``python -m <module> <args>`` in ``cwd``; fails the test with the output's tail if it
    fails or outlives ``COMMAND_TIMEOUT_S``. A command that hangs gets SIGABRT, so that every
    process of its group (DDP ranks included) prints where it waits, then SIGKILL."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=cwd, env=command_environment(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
        hung = False
    except subprocess.TimeoutExpired:
        hung = True
    if hung:  # out of the except block: the report is the stacks, not the timeout's own traceback
        os.killpg(process.pid, signal.SIGABRT)  # faulthandler: each process prints its Python stacks
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{module} {args[0]} hung for {COMMAND_TIMEOUT_S} s:\n{stacks_first(output)}", pytrace=False)
    assert process.returncode == 0, f"{module} {' '.join(args)} failed:\n{output[-6000:]}"


def stacks_first(output: str, limit: int = 16000) -> str:
    """The tail of a hung command's output without faulthandler's "Extension modules" lists
    (one per process, thousands of characters each), which would push the stacks out of it."""
    # The processes write into one pipe, so a list can come in pieces: drop every line that is a
    # run of comma-separated names (a stack line has a quoted file name).
    kept = [line for line in output.splitlines() if line.count(", ") < 3 or '"' in line]
    return "\n".join(kept)[-limit:]


def evaluation_records(run_dir: Path, stage: str) -> dict[int, dict[str, Any]]:
    """Per rank, what ``probes.EvaluationRecord`` wrote in ``run_dir`` for ``stage``."""
    paths = sorted(run_dir.glob(f"evaluated_{stage}_rank*.json"))
    return {int(p.stem.rsplit("rank", 1)[1]): json.loads(p.read_text()) for p in paths}


def overlay(task: Task, data: Path) -> dict[str, Any]:
    """``task.overrides`` with the data root filled in and the common trainer settings."""
    text = yaml.safe_dump({"trainer": COMMON_TRAINER, **task.overrides}).replace("{data}", str(data))
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def odd_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training and 7 validation images of 96 to 128 pixels."""
    return generate_shapes(tmp_path_factory.mktemp("shapes"), num_train=16, num_val=VAL_IMAGES, seed=0,
                           min_size=96, max_size=128)  # fmt: skip


@pytest.fixture(scope="module", params=list(TASKS))
def ddp_runs(request, odd_shapes: Path, tmp_path_factory: pytest.TempPathFactory, pretrained_weights_available) -> dict:
    """One task's ``fit`` under DDP, then ``validate`` of its last checkpoint under DDP and in
    one process: ``{"task", "fit", "ddp", "single"}``, the last three the per-rank records."""
    task = TASKS[request.param]
    work = tmp_path_factory.mktemp(request.param)
    settings = work / "overrides.yaml"
    settings.write_text(yaml.safe_dump(overlay(task, odd_shapes)))
    configs = ["--config", str(REPO / task.config), "--config", str(settings),
               "--trainer.callbacks+=probes.EvaluationRecord"]  # fmt: skip

    run_command(task.module, ["fit", *configs, *DDP, f"--trainer.default_root_dir={work / 'fit'}"], work)
    (checkpoint,) = work.glob("runs/*/checkpoints/last.ckpt")  # the shapes config's relative dirpath
    for name, devices in (("ddp", DDP), ("single", ONE_PROCESS)):
        run_command(task.module, ["validate", *configs, *devices, f"--ckpt_path={checkpoint}",
                                  f"--trainer.default_root_dir={work / name}"], work)  # fmt: skip
    return {
        "task": task,
        "fit": evaluation_records(work / "fit", "fit"),
        "ddp": evaluation_records(work / "ddp", "validate"),
        "single": evaluation_records(work / "single", "validate"),
    }


# Sums over pixels that the processes add up in another order: equal up to rounding only.
ROUNDED_METRICS = ("val/loss",)


def assert_same_metrics(got: dict[str, float], expected: dict[str, float], where: str) -> None:
    """Equal to the bit, but for the ``ROUNDED_METRICS``."""
    exact = {k: v for k, v in got.items() if k not in ROUNDED_METRICS}
    assert exact == {k: v for k, v in expected.items() if k not in ROUNDED_METRICS}, where
    for key in set(ROUNDED_METRICS) & set(expected):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), f"{where}: {key}"


def test_ddp_validate_equals_single_process(ddp_runs: dict) -> None:
    (single,) = ddp_runs["single"].values()
    expected = single["metrics"]
    print(ddp_runs["task"].module, "one process:", expected)
    assert expected[ddp_runs["task"].monitor] > 0, expected  # all zeros would agree trivially
    assert sorted(ddp_runs["ddp"]) == list(range(WORLD_SIZE))
    for rank, record in ddp_runs["ddp"].items():
        assert_same_metrics(record["metrics"], expected, f"validate, rank {rank}")


def test_ddp_ranks_evaluate_each_image_once(ddp_runs: dict) -> None:
    (single,) = ddp_runs["single"].values()
    assert single["images"] == VAL_IMAGES
    for stage in ("fit", "ddp"):
        assert sorted(ddp_runs[stage]) == list(range(WORLD_SIZE))
        for rank, record in ddp_runs[stage].items():
            print(stage, "rank", rank, record["sampler"], record["indices"], record["images"], "images")
            assert record["sampler"] == "UnpaddedDistributedSampler"  # not replaced by Lightning's
            assert record["indices"] == RANK_SHARES[rank]
            assert record["images"] == len(RANK_SHARES[rank])


def test_fit_validation_under_ddp_equals_validate_of_its_checkpoint(ddp_runs: dict) -> None:
    (single,) = ddp_runs["single"].values()
    assert sorted(ddp_runs["fit"]) == list(range(WORLD_SIZE))
    for rank, record in ddp_runs["fit"].items():  # last.ckpt holds the weights validated at the end of fit
        assert_same_metrics(record["metrics"], single["metrics"], f"fit, rank {rank}")


# --- the detection metric's gather, in isolation ---------------------------------------------
def tied_detections(count: int) -> tuple[list[dict], list[dict]]:
    """``count`` images of two ground-truth boxes and detections near them, with scores
    rounded to 0.1 so that ties between images are common (their order then matters to COCOeval)."""
    generator = torch.Generator().manual_seed(0)
    predictions, targets = [], []
    for _ in range(count):
        corner = torch.rand(2, 2, generator=generator) * 50
        boxes = torch.cat([corner, corner + 15], dim=1)
        labels = torch.randint(0, 3, (2,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": torch.zeros(2, dtype=torch.int64)})
        extra = int(torch.randint(0, 4, (), generator=generator))
        detected = torch.cat([boxes, boxes[:1].repeat(extra, 1)]) + torch.rand(2 + extra, 4, generator=generator) * 6
        predictions.append({
            "boxes": detected,
            "scores": torch.rand(2 + extra, generator=generator).round(decimals=1),
            "labels": torch.cat([labels, torch.randint(0, 3, (extra,), generator=generator)]),
        })  # fmt: skip
    return predictions, targets


COUNTS = (VAL_IMAGES, 1)  # 1: rank 1 holds no image at all


def _gathered_map_worker(rank: int, world_size: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    results = {}
    for count in COUNTS:
        predictions, targets = tied_detections(count)
        metric = detection_metric("coco")
        share = range(rank, count, world_size)  # UnpaddedDistributedSampler's
        metric.update([predictions[i] for i in share], [targets[i] for i in share])
        results[count] = scalars(metric.compute())
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def scalars(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if v.ndim == 0}


def test_detection_metric_gathers_uneven_ranks_in_dataset_order(tmp_path: Path) -> None:
    """torchmetrics' own gather makes one collective per image, so ranks holding different
    numbers of images fall out of step; and a gather in rank order breaks score ties otherwise
    than one process does."""
    torch.multiprocessing.spawn(
        _gathered_map_worker, args=(WORLD_SIZE, rendezvous_port(), str(tmp_path)), nprocs=WORLD_SIZE
    )
    for count in COUNTS:
        single = detection_metric("coco")
        single.update(*tied_detections(count))
        expected = scalars(single.compute())
        assert expected["map"] > 0
        for rank in range(WORLD_SIZE):
            gathered = json.loads((tmp_path / f"rank{rank}.json").read_text())[str(count)]
            assert gathered == expected, f"{count} images, rank {rank}"
