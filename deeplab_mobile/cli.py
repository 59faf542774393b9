"""``deeplab-mobile`` / ``python -m deeplab_mobile``: LightningCLI over ``DeepLabModule``.

    deeplab-mobile fit --config configs/deeplab_shapes.yaml
    deeplab-mobile validate --config configs/deeplab_shapes.yaml --ckpt_path CKPT
    deeplab-mobile predict --config configs/deeplab_shapes.yaml --ckpt_path CKPT --model.prediction_dir out/

Any ``LightningDataModule`` can be the ``data`` (``class_path`` in the config); its
``num_classes`` becomes ``model.num_classes`` (a linked argument: set it on the data side).
"""

from __future__ import annotations

from lightning import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from .module import DeepLabModule


class DeepLabCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: ArgsType = None) -> None:
    DeepLabCLI(
        DeepLabModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
