"""Checkpoint writes are atomic (``engine.checkpoint_io.AtomicCheckpointIO``, the CLI's default):
a process killed in the middle of writing ``last.ckpt`` leaves the previous one whole."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoint_io import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[1]

# Writes half of the checkpoint's bytes into the file being written, then SIGKILLs itself: no
# exception handler or cleanup runs, as when a job is killed by its scheduler.
KILLED_IN_THE_WRITE = """
import io, os, signal, sys
import torch
from engine.checkpoint_io import AtomicCheckpointIO

real_save = torch.save

def save_half_then_die(obj, file):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_half_then_die
AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((500, 500), 2.0)}}, sys.argv[1])
"""


def previous_checkpoint(path: Path) -> dict:
    checkpoint = {"state_dict": {"w": torch.ones(500, 500)}, "global_step": 7}
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    return checkpoint


def test_a_kill_during_the_write_leaves_the_previous_last_ckpt(tmp_path):
    last = tmp_path / "last.ckpt"
    previous = previous_checkpoint(last)
    before = last.read_bytes()

    killed = subprocess.run([sys.executable, "-c", KILLED_IN_THE_WRITE, str(last)], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    assert last.read_bytes() == before
    loaded = AtomicCheckpointIO().load_checkpoint(last)
    assert torch.equal(loaded["state_dict"]["w"], previous["state_dict"]["w"]) and loaded["global_step"] == 7
    (partial,) = tmp_path.glob(".last.ckpt.*.tmp")  # the cut write, under a name no *.ckpt glob matches
    assert 0 < partial.stat().st_size < len(before)
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    last = tmp_path / "last.ckpt"
    previous_checkpoint(last)
    before = last.read_bytes()

    def failing_save(obj, file):
        file.write(b"PK\x03\x04 a beginning")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, last)
    assert last.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
