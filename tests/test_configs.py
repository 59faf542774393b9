"""Every config in ``configs/`` parses with its task's command line (``fit --print_config``),
alone or with the overlays made for it, and so do the SLURM scripts' ``srun`` commands; the
resolved trainer settings hold what multi-GPU training needs: sync BN on GPUs (and never on
CPU, where torch's SyncBatchNorm has no kernel), DDP, and node and process counts that match
the launcher's."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from deeplab_mobile.cli import main as deeplab_main
from multitask.cli import main as multitask_main
from ssdlite.cli import main as ssdlite_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MAINS = {"ssdlite": ssdlite_main, "deeplab": deeplab_main, "multitask": multitask_main}
CONSOLE_SCRIPTS = {"ssdlite": "ssdlite", "deeplab-mobile": "deeplab"}
# Overlays add to a task's config (``--config task.yaml --config overlay.yaml``): the tasks they fit.
OVERLAYS = {"multinode.yaml": ("ssdlite", "deeplab", "multitask"), "deeplab_8gpu.yaml": ("deeplab",)}
TASK_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in OVERLAYS)


def task_of(config: str) -> str:
    return config.split("_", 1)[0]


def resolved(task: str, args: list[str], capsys: pytest.CaptureFixture) -> dict[str, Any]:
    """The full config ``<task> fit <args> --print_config`` prints (the command must parse)."""
    with pytest.raises(SystemExit) as printed:
        MAINS[task](["fit", *args, "--print_config"])
    assert printed.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def trains(trainer: dict[str, Any]) -> bool:
    return trainer["max_epochs"] is not None or trainer["max_steps"] != -1


def configs_args(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--config", str(CONFIGS / name))]


@pytest.mark.parametrize("config", TASK_CONFIGS)
def test_config_parses_with_sync_bn_on_gpu_only(config: str, capsys) -> None:
    trainer = resolved(task_of(config), configs_args(config), capsys)["trainer"]
    if trainer["accelerator"] in ("cpu", "auto"):  # CPU configs, and the one-device fine-tuning ones
        assert not trainer["sync_batchnorm"] and trainer["devices"] == 1
    elif trains(trainer):
        assert trainer["accelerator"] == "gpu" and trainer["sync_batchnorm"], trainer


@pytest.mark.parametrize(
    "config, overlay",
    [(c, o) for o, tasks in OVERLAYS.items() for c in TASK_CONFIGS if task_of(c) in tasks and "mobilenetv2" in c],
)
def test_overlay_parses_over_paper_config(config: str, overlay: str, capsys) -> None:
    settings = resolved(task_of(config), configs_args(config, overlay), capsys)
    trainer = settings["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer["strategy"]) == ("gpu", 8, "ddp")
    assert trainer["sync_batchnorm"] and trainer["precision"] == "16-mixed"
    if overlay == "multinode.yaml":
        assert trainer["num_nodes"] == 2
    if overlay == "deeplab_8gpu.yaml":  # the paper's global batch of 16
        assert settings["data"]["init_args"]["batch_size"] * trainer["devices"] == 16


def sbatch_settings(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines as ``{key: value}``."""
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script, flags=re.M))


def srun_command(script: str) -> list[str]:
    """The words of the script's ``srun`` command, continuation lines joined."""
    (line,) = [line for line in script.replace("\\\n", " ").splitlines() if line.startswith("srun ")]
    return shlex.split(line)[1:]


@pytest.mark.parametrize("script", sorted(p.name for p in (CONFIGS / "slurm").glob("*.sbatch")))
def test_slurm_script_matches_its_trainer(script: str, capsys, monkeypatch) -> None:
    text = (CONFIGS / "slurm" / script).read_text()
    slurm = sbatch_settings(text)
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", slurm["nodes"])  # what SLURM sets in the job
    tool, step, *args = [os.path.expandvars(word) for word in srun_command(text)]
    assert step == "fit"
    args = [str(CONFIGS.parent / a) if a.startswith("configs/") else a for a in args]
    trainer = resolved(CONSOLE_SCRIPTS[tool], args, capsys)["trainer"]
    assert trainer["num_nodes"] == int(slurm["nodes"])
    assert trainer["devices"] == int(slurm["ntasks-per-node"]) == int(slurm["gres"].rsplit(":", 1)[1])
    assert trainer["strategy"] == "ddp" and trainer["sync_batchnorm"]
