"""Training step (batch 16) of ours vs the peer under each host-memory policy of our command line.

How the C library hands out and takes back tensor memory moves a CPU training step by up to
2x (``backbone.host_memory``), and a policy is a property of the process: each runs in a fresh
process (``python -m benchmarks.host_memory_training POLICY THREADS REPEATS MIN_SECONDS``)
that applies it before the models are built, then times ours and the peer interleaved in it,
so both get it. The ``training`` row of the benchmark process itself uses glibc's default.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from backbone.host_memory import POLICIES, apply_host_memory_policy
from benchmarks.harness import Row

POLICY_NOTES = {
    "lean": "lean (task CLI default): freed tensor memory back to the OS at once",
    "fast": "fast: freed tensor memory kept for the next step",
}


def measure(policy: str, repeats: int, min_seconds: float, batch: int = 16) -> dict[str, float]:
    from benchmarks.harness import time_interleaved
    from benchmarks.models import ours_train_step, peer_train_step

    apply_host_memory_policy(policy)
    ours, peer = ours_train_step(batch), peer_train_step(batch)
    ours_s, peer_s = time_interleaved(ours, peer, warmup=2, min_repeats=repeats, min_seconds=min_seconds)
    return {"ours_s": ours_s, "peer_s": peer_s}


def host_memory_training_rows(repeats: int, min_seconds: float, batch: int = 16) -> list[Row]:
    from benchmarks.models import training_row

    rows = []
    for policy in POLICIES:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.host_memory_training", policy, str(torch.get_num_threads()),
             str(repeats), str(min_seconds)],
            check=True, capture_output=True, text=True,
        )
        timed = json.loads(out.stdout.strip().splitlines()[-1])
        row = training_row(batch, 0, timed["ours_s"], timed["peer_s"])
        row.name += f", host memory {policy}"
        row.target = ""
        row.settings["host memory (both)"] = POLICY_NOTES[policy]
        rows.append(row)
    return rows


if __name__ == "__main__":
    policy, threads, repeats, min_seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    torch.set_num_threads(threads)
    print(json.dumps(measure(policy, repeats, min_seconds)))
