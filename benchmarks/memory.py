"""Peak memory of a training step (batch 32, 320x320): ours vs torchvision's SSDLite.

Each case runs in a fresh process (``python -m benchmarks.memory {ours,peer} BATCH THREADS
RECOMPUTATION``) so that none inherits another's allocations; the figure is the
process's peak resident set (``VmHWM``) over two steps (the second holds the optimizer's
momentum buffers), Python and the libraries included, beside the resident set before the
first step. Every process first fixes glibc's mmap threshold as our command line does
(``engine.host_memory``): it is a property of the process, not of a model, so the peer
gets it too.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from engine.host_memory import release_freed_tensors_to_os
from benchmarks.harness import Row

TARGET_MB = 4096


def peak_rss_mb() -> float:
    """This process's peak resident set, MB: ``VmHWM`` (reset by exec, unlike ``ru_maxrss``,
    which a child inherits from the benchmark process that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB, may be inherited


def measure(side: str, batch: int, recomputation: str) -> dict[str, float]:
    from benchmarks.models import ours_train_step, peer_train_step

    release_freed_tensors_to_os()
    if side == "ours":
        step = ours_train_step(batch, recomputation=recomputation)
    else:
        step = peer_train_step(batch)
    before = peak_rss_mb()
    for _ in range(2):
        step()
    return {"before_mb": before, "peak_mb": peak_rss_mb()}


def _measure_in_fresh_process(side: str, batch: int, recomputation: str = "default") -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", side, str(batch), str(torch.get_num_threads()), recomputation],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_rows(batch: int = 32) -> list[Row]:
    """Ours as trained by default and with nothing recomputed, each against the peer."""
    from benchmarks.models import RECOMPUTATION

    peer = _measure_in_fresh_process("peer", batch)
    rows = []
    for recomputation, (_, label) in RECOMPUTATION.items():
        ours = _measure_in_fresh_process("ours", batch, recomputation)
        rows.append(
            Row(
                name=f"training step peak memory, batch {batch}",
                ours=label,
                peer="torchvision ssdlite320_mobilenet_v3_large train mode",
                ours_ms=ours["peak_mb"],
                peer_ms=peer["peak_mb"],
                ratio=ours["peak_mb"] / peer["peak_mb"],
                unit="MB",
                target="" if recomputation == "none" else f"<= {TARGET_MB}",  # "none" opts out of the saving
                target_on="ours",
                settings={
                    "batch": batch,
                    "size": 320,
                    "measure": "peak RSS of a fresh process over 2 steps, glibc mmap threshold 1 MB",
                    "ours RSS before step MB": round(ours["before_mb"]),
                    "peer RSS before step MB": round(peer["before_mb"]),
                },
            )
        )
    return rows


if __name__ == "__main__":
    side, batch, threads, recomputation = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(threads)
    print(json.dumps(measure(side, batch, recomputation)))
