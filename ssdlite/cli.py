"""``ssdlite fit|validate|test|predict --config configs/ssdlite_*.yaml`` (LightningCLI) and
``ssdlite export`` (``ssdlite.export``: ONNX + onnxruntime parity check): ``engine.run_task_cli``."""

from __future__ import annotations

from typing import Any

from engine import run_task_cli

from .export import SSDLiteExport
from .module import SSDLiteModule


def main(args: list[str] | None = None) -> Any:
    return run_task_cli(SSDLiteModule, SSDLiteExport(), "ssdlite", args)


if __name__ == "__main__":
    main()
