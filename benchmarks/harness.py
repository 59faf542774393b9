"""Timing core shared by every benchmark: ours and a peer, same process, interleaved.

Absolute times on shared machines are noise; ratios of medians taken in alternation are not.
Each case is warmed up, then ours and the peer run in turn until both have at least
``min_repeats`` samples and ``min_seconds`` have passed; the row reports both medians and
ours / peer.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Row:
    """One comparison. ``ratio`` = ours / peer for times (lower is better).

    ``unit`` names what ``ours_ms`` / ``peer_ms`` hold when they are not milliseconds (e.g.
    "MB", "GMAdd/s"); ``target_on="ours"`` checks ``target`` against ``ours_ms`` (an absolute
    bound such as "<= 4096" MB) instead of the ratio.
    """

    name: str
    ours: str
    peer: str
    ours_ms: float
    peer_ms: float
    ratio: float
    target: str = ""
    settings: dict = field(default_factory=dict)
    unit: str = "ms"
    target_on: str = "ratio"

    @classmethod
    def timed(cls, name: str, ours: str, peer: str, ours_s: float, peer_s: float, **fields: object) -> "Row":
        """A time comparison from two medians in seconds: shown in ms, ratio ours / peer."""
        return cls(
            name=name, ours=ours, peer=peer, ours_ms=1000 * ours_s, peer_ms=1000 * peer_s, ratio=ours_s / peer_s, **fields
        )

    @property
    def met(self) -> str:
        if not self.target:
            return ""
        op, value = self.target.split()
        checked = self.ours_ms if self.target_on == "ours" else self.ratio
        return "yes" if (checked <= float(value) if op == "<=" else checked >= float(value)) else "NO"


def time_interleaved(
    ours: Callable[[], object],
    peer: Callable[[], object],
    *,
    warmup: int = 3,
    min_repeats: int = 10,
    min_seconds: float = 5.0,
    block: int = 1,
) -> tuple[float, float]:
    """Median seconds per call of ``ours`` and ``peer``, measured in alternation.

    ``block`` > 1 alternates runs of ``block`` calls and drops the first call of each run: for
    two different runtimes (onnxruntime vs torch), whose idle worker threads keep spinning on
    the cores for a while after a call and slow the other's next call by 2x; inside one
    runtime the call-by-call alternation (``block=1``) is the fair one.
    """
    for _ in range(warmup):
        ours()
        peer()
    samples: tuple[list[float], list[float]] = ([], [])
    start = time.perf_counter()
    while len(samples[0]) < min_repeats or time.perf_counter() - start < min_seconds:
        for fn, out in ((ours, samples[0]), (peer, samples[1])):
            for call in range(block):
                t0 = time.perf_counter()
                fn()
                if call > 0 or block == 1:
                    out.append(time.perf_counter() - t0)
    return statistics.median(samples[0]), statistics.median(samples[1])


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows, with the core count."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} logical CPUs)"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_report(rows: list[Row], out_dir: Path, title: str) -> Path:
    """Write ``<title>.md`` (a table) and ``<title>.json`` into ``out_dir``; return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    lines = [
        f"# {title}",
        "",
        f"Machine: {info['processor']}, {info['platform']}, torch {info['torch']}, {info['threads']} threads.",
        "",
        "| case | ours | peer | ours | peer | unit | ours / peer | target | met | settings |",
        "|---|---|---|---:|---:|---|---:|---|---|---|",
    ]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items())
        target = f"ours {r.target} {r.unit}" if r.target and r.target_on == "ours" else r.target
        lines.append(
            f"| {r.name} | {r.ours} | {r.peer} | {r.ours_ms:.2f} | {r.peer_ms:.2f} | {r.unit} | {r.ratio:.3f} | "
            f"{target} | {r.met} | {settings} |"
        )
    markdown = out_dir / f"{title}.md"
    markdown.write_text("\n".join(lines) + "\n")
    payload = {"machine": info, "rows": [asdict(r) | {"met": r.met} for r in rows]}
    (out_dir / f"{title}.json").write_text(json.dumps(payload, indent=2))
    return markdown
