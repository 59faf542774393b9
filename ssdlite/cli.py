"""``ssdlite fit|validate|test|predict --config configs/ssdlite_*.yaml`` (LightningCLI).

The datamodule is any ``LightningDataModule`` given by class path in the config; its
``num_classes`` sets the model's (linked at instantiation, so it cannot be overridden).
"""

from __future__ import annotations

from lightning import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .module import SSDLiteModule


class SSDLiteCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: list[str] | None = None) -> SSDLiteCLI:
    return SSDLiteCLI(
        SSDLiteModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
