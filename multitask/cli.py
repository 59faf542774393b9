"""``multitask fit|validate|test|predict --config configs/multitask_*.yaml`` (LightningCLI) and
``multitask export`` (``multitask.export``: one ONNX graph, both tasks' outputs, onnxruntime
parity check): ``engine.run_task_cli``."""

from __future__ import annotations

from typing import Any

from engine import run_task_cli

from .export import MultiTaskExport
from .module import MultiTaskModule


def main(args: list[str] | None = None) -> Any:
    return run_task_cli(MultiTaskModule, MultiTaskExport(), "multitask", args)


if __name__ == "__main__":
    main()
