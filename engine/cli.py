"""The command line every task shares: LightningCLI for ``fit|validate|test|predict`` plus an
``export`` subcommand (``engine.export.run_export``, which needs no Trainer).

The datamodule is any ``LightningDataModule`` given by class path in the config. The model
takes ``num_classes`` (and the task's other ``LINKED_FROM_DATA``, e.g. SSDLite's
``image_size``) from it, and the datamodule pads with the mean colour of the model's backbone
(``data.image_mean`` from ``model.backbone``): linked values are set on their source side only.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from backbone import backbone_mean

from .checkpoint_checks import check_module_class
from .checkpoint_io import CheckpointError, read_checkpoint
from .export import TaskExport, run_export
from .host_memory import apply_host_memory_policy, training_default
from .legacy import install_moved_module_aliases
from .nonfinite import NonFiniteTrainingError
from .task import TaskModule

# Every command writes checkpoints atomically (a kill mid-write keeps the previous last.ckpt);
# a config's own trainer.plugins replaces this default.
TRAINER_DEFAULTS = {"plugins": {"class_path": "engine.checkpoint_io.AtomicCheckpointIO"}}
# Configs and checkpoints written before the runtime moved to engine/ name its old modules.
install_moved_module_aliases()


class TaskCLI(LightningCLI):
    """LightningCLI whose model takes ``LINKED_FROM_DATA`` from the datamodule and whose
    datamodule takes its padding colour from the model's backbone (linked, so each is set on
    its source side and cannot be overridden), whose Trainer writes checkpoints atomically,
    and which checks a ``--ckpt_path`` file before using it."""

    def __init__(
        self,
        *args: Any,
        trainer_defaults: dict[str, Any] | None = None,
        parser_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # allow_abbrev=False: a misspelt option that happens to be a prefix of a real one
        # (--trainer.max_step) is an error, not silently that option (jsonargparse 5's default).
        super().__init__(
            *args,
            trainer_defaults={**TRAINER_DEFAULTS, **(trainer_defaults or {})},
            parser_kwargs={"allow_abbrev": False, **(parser_kwargs or {})},
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in self.model_class.LINKED_FROM_DATA:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        if "backbone" in inspect.signature(self.model_class.__init__).parameters:
            parser.link_arguments("model.backbone", "data.init_args.image_mean", compute_fn=backbone_mean)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then check a ``--ckpt_path`` file: LightningCLI next applies its hyperparameters
        to the model's arguments, where a cut file or another task's checkpoint would fail with
        a torch or parser error that does not say so."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        # The command line refuses a value for a link target; a config file's is dropped silently.
        for name in self.model_class.LINKED_FROM_DATA:
            if name in config.get("model", {}):
                parser.error(f"model.{name} comes from the datamodule (data.{name}): remove it from the config")
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():  # "last", "best" and URLs are Lightning's to resolve
            check_module_class(read_checkpoint(ckpt_path), self.model_class, str(ckpt_path))


def run_task_cli(
    module_class: type[TaskModule],
    export: TaskExport,
    prog: str,
    args: Sequence[str] | None = None,
) -> Any:
    """Run ``args`` (default: the command line) as the ``prog`` command of ``module_class``'s task;
    ``export`` hands over to ``run_export(export, ...)``.

    Returns the finished CLI (or the export's result) when given ``args``, and None when run
    from the command line, so that a console script's ``sys.exit(main())`` exits 0.
    """
    argv = sys.argv[1:] if args is None else list(args)
    finished = False
    try:
        if argv[:1] == ["export"]:  # LightningCLI's subcommands all need a Trainer; export does not
            result = run_export(export, f"{prog} export", argv[1:])
        else:
            # Training keeps freed tensors for the next step where memory allows (``fast``), else
            # gives them back at once (``lean``). Inference (validate, test, predict) keeps
            # glibc's default unless asked: it holds little memory, and ``lean`` slows it down.
            try:
                apply_host_memory_policy(default=training_default() if argv[:1] == ["fit"] else None)
            except ValueError as err:
                raise SystemExit(f"error: {err}") from err
            result = TaskCLI(
                module_class,
                LightningDataModule,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                args=None if args is None else list(args),
            )
        finished = True
    except (CheckpointError, NonFiniteTrainingError) as err:  # their message says it all: no traceback
        raise SystemExit(f"error: {err}") from err
    finally:
        # Lightning leaves the DDP process group up (a script may run the Trainer again); a
        # command ends here, and a gloo group still up at interpreter exit can abort the process.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if finished:  # no rank tears the group down while another still talks through it
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    return result if args is not None else None
