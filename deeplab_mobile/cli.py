"""``deeplab-mobile`` / ``python -m deeplab_mobile``: LightningCLI over ``DeepLabModule``
(``engine.run_task_cli``), and ``export`` (``deeplab_mobile.export``).

    deeplab-mobile fit --config configs/deeplab_shapes.yaml
    deeplab-mobile validate --config configs/deeplab_shapes.yaml --ckpt_path CKPT
    deeplab-mobile predict --config configs/deeplab_shapes.yaml --ckpt_path CKPT --model.prediction_dir out/
    deeplab-mobile export --ckpt_path CKPT --output deeplab.onnx --image photo.jpg
"""

from __future__ import annotations

from typing import Any

from engine import run_task_cli

from .export import DeepLabExport
from .module import DeepLabModule


def main(args: list[str] | None = None) -> Any:
    return run_task_cli(DeepLabModule, DeepLabExport(), "deeplab-mobile", args)


if __name__ == "__main__":
    main()
