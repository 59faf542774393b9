"""One ``scripts/demo.py --tiny`` run per test session, shared by the demo, export and predict
tests: the run trains each task once (seconds), so the tests reuse its checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
_RUNS: dict[str, dict[str, Any]] = {}


def tiny_demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``summary.json`` of the session's tiny demo (run on first use), as a dict."""
    if "tiny" not in _RUNS:
        out = tmp_path_factory.mktemp("demo")
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "demo.py"), "--tiny", "--out", str(out)],
            cwd=out, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, f"demo --tiny failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        _RUNS["tiny"] = {**json.loads((out / "summary.json").read_text()), "stdout": done.stdout}
    return _RUNS["tiny"]
