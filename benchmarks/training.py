"""Training step (batch 16, 320x320) of ours vs the peer, every case in a fresh process.

How the C library hands out and takes back tensor memory moves a CPU training step by up to
2x (``engine.host_memory``), and what it does depends on the process's history: in the
benchmark process, after the inference rows, the same step measured 0.77x the peer's speed in
one run and 1.05x in another. So each case runs in a fresh process (``python -m
benchmarks.training POLICY RECOMPUTATION BATCH THREADS REPEATS MIN_SECONDS``) that applies its host-memory
policy before the models are built (both get it: it is a property of the process), then times
ours and the peer interleaved. Policies: ``glibc`` (none applied: a user's own training loop),
and the task command line's ``lean`` (its default) and ``fast``. ``RECOMPUTATION`` names what
our backward pass recomputes (``benchmarks.models.RECOMPUTATION``): the default, or nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from engine.host_memory import apply_host_memory_policy
from benchmarks.harness import Row, time_interleaved
from benchmarks.models import RECOMPUTATION, ours_train_step, peer_train_step

POLICY_NOTES = {
    "glibc": "glibc default (no policy applied)",
    "lean": "lean (task CLI default): freed tensor memory back to the OS at once",
    "fast": "fast: freed tensor memory kept for the next step",
}
# (policy, what our backward pass recomputes) of each row
CASES = (
    ("glibc", "default"), ("glibc", "none"), ("lean", "default"), ("lean", "none"), ("fast", "default"), ("fast", "none"),
)


def measure(policy: str, recomputation: str, batch: int, repeats: int, min_seconds: float) -> dict[str, float]:
    if policy != "glibc":
        apply_host_memory_policy(policy)
    ours, peer = ours_train_step(batch, recomputation=recomputation), peer_train_step(batch)
    ours_s, peer_s = time_interleaved(ours, peer, warmup=2, min_repeats=repeats, min_seconds=min_seconds)
    return {"ours_s": ours_s, "peer_s": peer_s}


def training_row(batch: int, policy: str, recomputation: str, ours_s: float, peer_s: float) -> Row:
    """A training-step row: img/s ratio (ours / peer) from the seconds per step of each."""
    return Row(
        name=f"training step, batch {batch}, host memory {policy}",
        ours=RECOMPUTATION[recomputation][1],
        peer="torchvision ssdlite320_mobilenet_v3_large train mode",
        ours_ms=1000 * ours_s,
        peer_ms=1000 * peer_s,
        ratio=peer_s / ours_s,
        target=">= 1.0",
        settings={
            "batch": batch,
            "size": 320,
            "dtype": "float32",
            "optimizer": "SGD momentum 0.9",
            "ratio is": "ours img/s / peer img/s",
            "ours img/s": round(batch / ours_s, 2),
            "peer img/s": round(batch / peer_s, 2),
            "host memory (both)": POLICY_NOTES[policy],
            "process": "fresh, both models interleaved in it",
        },
    )


def training_rows(repeats: int, min_seconds: float, batch: int = 16) -> list[Row]:
    rows = []
    for policy, recomputation in CASES:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.training", policy, recomputation, str(batch), str(torch.get_num_threads()),
             str(repeats), str(min_seconds)],
            check=True, capture_output=True, text=True,
        )
        timed = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(training_row(batch, policy, recomputation, timed["ours_s"], timed["peer_s"]))
    return rows


if __name__ == "__main__":
    policy, recomputation, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    repeats, min_seconds = int(sys.argv[5]), float(sys.argv[6])
    torch.set_num_threads(threads)
    print(json.dumps(measure(policy, recomputation, batch, repeats, min_seconds)))
