"""``deeplab-mobile`` / ``python -m deeplab_mobile``: LightningCLI over ``DeepLabModule``.

    deeplab-mobile fit --config configs/deeplab_shapes.yaml
    deeplab-mobile validate --config configs/deeplab_shapes.yaml --ckpt_path CKPT
    deeplab-mobile predict --config configs/deeplab_shapes.yaml --ckpt_path CKPT --model.prediction_dir out/
    deeplab-mobile export --ckpt_path CKPT --output deeplab.onnx --image photo.jpg  (deeplab_mobile.export_cli)

Any ``LightningDataModule`` can be the ``data`` (``class_path`` in the config); its
``num_classes`` becomes ``model.num_classes`` (a linked argument: set it on the data side).
"""

from __future__ import annotations

import sys

from lightning import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from backbone.onnx_parity import Parity

from .module import DeepLabModule


class DeepLabCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: list[str] | None = None) -> DeepLabCLI | Parity | None:
    """Run ``args`` (default: the command line); ``export`` goes to ``deeplab_mobile.export_cli``.

    Returns the finished CLI (or the export's ``Parity``) when given ``args``, and None when
    run from the command line, so that the console script's ``sys.exit(main())`` exits 0.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:  # LightningCLI's subcommands all need a Trainer; export does not
        from .export_cli import main as export_main

        result = export_main(argv[1:])
    else:
        result = DeepLabCLI(
            DeepLabModule,
            LightningDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    return result if args is not None else None


if __name__ == "__main__":
    main()
