"""``ssdlite fit|validate|test|predict --config configs/ssdlite_*.yaml`` (LightningCLI) and
``ssdlite export`` (``ssdlite.export_cli``: ONNX + onnxruntime parity check).

The datamodule is any ``LightningDataModule`` given by class path in the config; its
``num_classes`` sets the model's (linked at instantiation, so it cannot be overridden).
"""

from __future__ import annotations

import sys

from lightning import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from backbone.onnx_parity import Parity

from .module import SSDLiteModule


class SSDLiteCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: list[str] | None = None) -> SSDLiteCLI | Parity | None:
    """Run ``args`` (default: the command line); ``export`` goes to ``ssdlite.export_cli``.

    Returns the finished CLI (or the export's ``Parity``) when given ``args``, and None when
    run from the command line, so that the console script's ``sys.exit(main())`` exits 0.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:  # LightningCLI's subcommands all need a Trainer; export does not
        from .export_cli import main as export_main

        result = export_main(argv[1:])
    else:
        result = SSDLiteCLI(
            SSDLiteModule,
            LightningDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    return result if args is not None else None


if __name__ == "__main__":
    main()
