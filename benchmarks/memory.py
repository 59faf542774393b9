"""Peak memory of a training step (batch 32, 320x320): ours vs torchvision's SSDLite.

Each side runs in a fresh process (``python -m benchmarks.memory {ours,peer} BATCH THREADS``)
so that neither inherits the other's allocations; the figure is the process's peak resident
set (``VmHWM``) over two steps (the second holds the optimizer's momentum buffers),
Python and the libraries included, beside the resident set before the first step.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.harness import Row


def peak_rss_mb() -> float:
    """This process's peak resident set, MB: ``VmHWM`` (reset by exec, unlike ``ru_maxrss``,
    which a child inherits from the benchmark process that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB, may be inherited


def measure(side: str, batch: int) -> dict[str, float]:
    from benchmarks.models import ours_train_step, peer_train_step

    step = (ours_train_step if side == "ours" else peer_train_step)(batch)
    before = peak_rss_mb()
    for _ in range(2):
        step()
    return {"before_mb": before, "peak_mb": peak_rss_mb()}


def memory_rows(batch: int = 32) -> list[Row]:
    result = {}
    for side in ("ours", "peer"):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", side, str(batch), str(torch.get_num_threads())],
            check=True, capture_output=True, text=True,
        )
        result[side] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, peer = result["ours"]["peak_mb"], result["peer"]["peak_mb"]
    return [
        Row(
            name=f"training step peak memory, batch {batch}",
            ours="MobileNetV2 SSDLite (channels-last weights)",
            peer="torchvision ssdlite320_mobilenet_v3_large train mode",
            ours_ms=ours,
            peer_ms=peer,
            ratio=ours / peer,
            unit="MB",
            target="<= 4096",
            target_on="ours",
            settings={
                "batch": batch,
                "size": 320,
                "measure": "peak RSS of a fresh process over 2 steps",
                "ours RSS before step MB": round(result["ours"]["before_mb"]),
                "peer RSS before step MB": round(result["peer"]["before_mb"]),
            },
        )
    ]


if __name__ == "__main__":
    side, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    print(json.dumps(measure(side, batch)))
