"""Memory stays flat over a long run: 25 epochs of the embedded dataset, validated every epoch
(so the metric states fill and reset 25 times), through each task's command line in-process.

Two measures at every epoch end, after garbage collection (``probes.MemoryRecorder``):

- live tensors: exactly as many at the last epoch as at epoch ``SETTLED`` -- any tensor kept
  across epochs (metric state not reset, predictions or losses piling up in a list, a cache
  keyed by image size) adds to the count, however small;
- resident set size: the median of the last ``WINDOW`` epochs at most ``RSS_GROWTH_MB`` above
  that of epochs ``SETTLED`` .. ``SETTLED + WINDOW``, which catches native memory the tensor
  count does not see (allocator pools, caches outside Python). Measured on this machine, both
  tasks: single epochs scatter over 5 to 11 MB as the allocator reuses and trims memory (DeepLab
  alternates between two levels 10 MB apart), window medians differ by at most 5.3 MB, and the
  tensor count is constant from the second epoch on. 20 MB over the 16 epochs between the
  windows' middles flags a leak above ~1.3 MB per epoch.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any

import pytest
import torch
import yaml

from datamodules.shapes import generate_shapes
from deeplab_mobile.cli import main as deeplab_main
from probes import MemoryRecorder
from ssdlite.cli import main as ssdlite_main

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 25
SETTLED = 5  # epochs before lazily built state (optimizer buffers, kernels' workspaces) is in place
WINDOW = 5
RSS_GROWTH_MB = 20.0
TRAINER = {
    "max_epochs": EPOCHS, "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
    "enable_progress_bar": False, "enable_model_summary": False,
}  # fmt: skip


def overrides(task: str, shapes: Path) -> dict[str, Any]:
    """The shapes config made tiny: 64-pixel inputs, width 0.35 from scratch, batches of 8,
    no worker processes (so that the datasets live, and would leak, in this process)."""
    tiny_data = {"batch_size": 8, "eval_batch_size": 8, "num_workers": 0}
    if task == "ssdlite":
        return {"trainer": TRAINER,
                "model": {"width_mult": 0.35, "pretrained_backbone": False, "warmup_steps": 2},
                "data": {"init_args": {"root": str(shapes / "coco"), "image_size": 64, **tiny_data}}}  # fmt: skip
    return {"trainer": {**TRAINER, "max_steps": -1},
            "model": {"width_mult": 0.35, "pretrained_backbone": False, "eval_scales": [1.0]},
            "data": {"init_args": {"root": str(shapes), "crop_size": 64, "scales": [1.0], **tiny_data}}}  # fmt: skip


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training and 8 validation images of 64 to 80 pixels."""
    return generate_shapes(tmp_path_factory.mktemp("shapes"), num_train=16, num_val=8, seed=0, min_size=64, max_size=80)


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on two shared cores the OpenMP
    threads contend (8x slower steps measured under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("task, main", [("ssdlite", ssdlite_main), ("deeplab", deeplab_main)])
def test_memory_flat_over_epochs(task: str, main, small_shapes: Path, tmp_path: Path, monkeypatch, one_thread) -> None:
    monkeypatch.chdir(tmp_path)  # the config's relative runs/ (logs, checkpoints) land here
    settings = tmp_path / "overrides.yaml"
    settings.write_text(yaml.safe_dump(overrides(task, small_shapes)))
    cli = main(["fit", "--config", str(REPO / "configs" / f"{task}_shapes.yaml"), "--config", str(settings),
                "--trainer.callbacks+=probes.MemoryRecorder"])  # fmt: skip
    (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, MemoryRecorder)]
    rss, tensors = recorder.rss_mb, recorder.tensors
    growth = median(rss[-WINDOW:]) - median(rss[SETTLED : SETTLED + WINDOW])
    print(f"{task} RSS MB per epoch:", " ".join(f"{mb:.1f}" for mb in rss))
    print(f"{task} live tensors per epoch:", tensors, f"RSS growth {growth:+.1f} MB")
    assert len(rss) == EPOCHS
    assert tensors[SETTLED:] == [tensors[SETTLED]] * (EPOCHS - SETTLED)
    assert growth < RSS_GROWTH_MB
