"""The command line both tasks share: LightningCLI for ``fit|validate|test|predict`` plus an
``export`` subcommand handed to the task's own exporter (it needs no Trainer)."""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# Every command writes checkpoints atomically (a kill mid-write keeps the previous last.ckpt);
# a config's own trainer.plugins replaces this default.
TRAINER_DEFAULTS = {"plugins": {"class_path": "backbone.checkpoint_io.AtomicCheckpointIO"}}


class TaskCLI(LightningCLI):
    """LightningCLI whose model takes ``num_classes`` from the datamodule (linked at
    instantiation, so it is set on the data side and cannot be overridden), and whose Trainer
    writes checkpoints atomically."""

    def __init__(self, *args: Any, trainer_defaults: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, trainer_defaults={**TRAINER_DEFAULTS, **(trainer_defaults or {})}, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def run_task_cli(
    module_class: type[LightningModule],
    export_main: Callable[[list[str]], Any],
    args: Sequence[str] | None = None,
) -> Any:
    """Run ``args`` (default: the command line).

    Returns the finished CLI (or the export's result) when given ``args``, and None when run
    from the command line, so that a console script's ``sys.exit(main())`` exits 0.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:  # LightningCLI's subcommands all need a Trainer; export does not
        result = export_main(argv[1:])
    else:
        result = TaskCLI(
            module_class,
            LightningDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=None if args is None else list(args),
        )
    return result if args is not None else None
