"""``deeplab-mobile`` / ``python -m deeplab_mobile``: LightningCLI over ``DeepLabModule``.

    deeplab-mobile fit --config configs/deeplab_shapes.yaml
    deeplab-mobile validate --config configs/deeplab_shapes.yaml --ckpt_path CKPT
    deeplab-mobile predict --config configs/deeplab_shapes.yaml --ckpt_path CKPT --model.prediction_dir out/
    deeplab-mobile export --ckpt_path CKPT --output deeplab.onnx --image photo.jpg  (deeplab_mobile.export_cli)

Any ``LightningDataModule`` can be the ``data`` (``class_path`` in the config); its
``num_classes`` becomes ``model.num_classes`` (a linked argument: set it on the data side).
"""

from __future__ import annotations

from typing import Any

from backbone.task_cli import run_task_cli

from .module import DeepLabModule


def main(args: list[str] | None = None) -> Any:
    """``fit|validate|test|predict`` on LightningCLI, ``export`` on ``deeplab_mobile.export_cli``."""
    from .export_cli import main as export_main

    return run_task_cli(DeepLabModule, export_main, args)


if __name__ == "__main__":
    main()
