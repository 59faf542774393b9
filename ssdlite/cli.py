"""``ssdlite fit|validate|test|predict --config configs/ssdlite_*.yaml`` (LightningCLI) and
``ssdlite export`` (``ssdlite.export_cli``: ONNX + onnxruntime parity check).

The datamodule is any ``LightningDataModule`` given by class path in the config; its
``num_classes`` sets the model's (linked at instantiation, so it cannot be overridden).
"""

from __future__ import annotations

from typing import Any

from backbone.task_cli import run_task_cli

from .module import SSDLiteModule


def main(args: list[str] | None = None) -> Any:
    """``fit|validate|test|predict`` on LightningCLI, ``export`` on ``ssdlite.export_cli``."""
    from .export_cli import main as export_main

    return run_task_cli(SSDLiteModule, export_main, args)


if __name__ == "__main__":
    main()
