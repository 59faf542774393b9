"""What a checkpoint holds, checked against the module that loads it, and against NaN on save.

``CheckedCheckpoints`` (a ``LightningModule`` mixin) stamps each saved checkpoint with the
module's classes, refuses to save weights or buffers that are not finite, and on load (a
Trainer's ``ckpt_path`` or ``load_from_checkpoint``) rejects a checkpoint of another task or of
other shapes in one sentence instead of PyTorch's key-by-key size-mismatch report.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from lightning import LightningModule

from backbone.weights import shape_mismatches, shorten

from .checkpoint_io import CheckpointError, read_checkpoint
from .nonfinite import nonfinite_entries

MODULE_CLASSES_KEY = "module_classes"


class CheckpointMismatchError(CheckpointError):
    """A checkpoint that does not fit the module loading it (another task, other shapes)."""


class NonFiniteCheckpointError(CheckpointError):
    """A checkpoint was about to be saved with NaN or infinite weights or buffers."""


def task_classes(module_class: type[LightningModule]) -> list[str]:
    """Qualified names of ``module_class`` and its task bases, most derived first: a checkpoint
    of a subclass (a test's, a user's) still loads into its task's class. Bases every task shares
    (``LightningModule``, ``engine.task.TaskModule``) name no task, so they are left out."""
    shared = {"lightning.pytorch.core.module.LightningModule", "engine.task.TaskModule"}
    names = (f"{cls.__module__}.{cls.__qualname__}" for cls in module_class.__mro__ if issubclass(cls, LightningModule))
    return [name for name in names if name not in shared]


def _short(qualified_name: str) -> str:
    return qualified_name.rsplit(".", 1)[-1]


def check_module_class(checkpoint: Mapping[str, Any], module_class: type[LightningModule], source: str) -> None:
    """Raise ``CheckpointMismatchError`` when ``checkpoint`` was written by another task's module.

    Checkpoints stamped by ``CheckedCheckpoints`` name their classes; older ones are judged by
    their hyperparameters, which must all be arguments of ``module_class``."""
    name = module_class.__name__
    saved = checkpoint.get(MODULE_CLASSES_KEY)
    if saved is not None:
        if not set(saved) & set(task_classes(module_class)):
            raise CheckpointMismatchError(f"{source} is a {_short(saved[0])} checkpoint, not {name}")
        return
    hparams = checkpoint.get("hyper_parameters") or {}
    arguments = inspect.signature(module_class.__init__).parameters
    foreign = sorted(k for k in hparams if not k.startswith("_") and k not in arguments)
    if foreign:
        raise CheckpointMismatchError(
            f"{source} is not a {name} checkpoint: its hyperparameters {shorten(foreign)} are not {name} arguments"
        )


def check_shapes_fit(checkpoint: Mapping[str, Any], module: LightningModule, source: str) -> None:
    """Raise ``CheckpointMismatchError`` when a tensor of ``checkpoint`` has another shape than the
    module's, leading with the class count when that is what differs (the model's comes from the
    datamodule under the CLI, so another dataset's checkpoint shows up here)."""
    mismatched = shape_mismatches(module.state_dict(), checkpoint["state_dict"])
    if not mismatched:
        return
    saved = (checkpoint.get("hyper_parameters") or {}).get("num_classes")
    ours = getattr(module.hparams, "num_classes", None)
    if saved is not None and ours is not None and saved != ours:
        raise CheckpointMismatchError(
            f"{source} has {saved} classes, the model {ours} (model.num_classes comes from the datamodule's "
            f"num_classes): shapes differ at {shorten(mismatched)}"
        )
    raise CheckpointMismatchError(f"{source} does not fit {type(module).__name__}: shapes differ at {shorten(mismatched)}")


class CheckedCheckpoints:
    """Mixin for a task's ``LightningModule`` (list it before ``LightningModule``): checkpoints
    saved finite and stamped with the module's classes, loaded only into a module they fit.

    Saving refuses (``NonFiniteCheckpointError``) rather than writing the last finite state:
    weights that went non-finite despite the step guard mean the run is broken, and the last
    good checkpoint on disk is that state already."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = nonfinite_entries(checkpoint["state_dict"])
        if bad:
            raise NonFiniteCheckpointError(
                f"not saving a checkpoint at global step {checkpoint.get('global_step')}: "
                f"{shorten(bad)} hold NaN or infinite values"
            )
        checkpoint[MODULE_CLASSES_KEY] = task_classes(type(self))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = getattr(self, "_trainer", None)  # None under load_from_checkpoint
        source = str(trainer.ckpt_path) if trainer is not None and trainer.ckpt_path else "the checkpoint"
        check_module_class(checkpoint, type(self), source)
        check_shapes_fit(checkpoint, self, source)


def load_module_checkpoint(module_class: type[LightningModule], path: str, **overrides: Any) -> LightningModule:
    """``module_class.load_from_checkpoint(path, **overrides)`` on the CPU with ``weights_only=True``,
    after checking the file is readable and of this task (``CheckpointError`` naming it if not).

    The checkpoint holds every weight, so a module taking ``pretrained_backbone`` is built
    without the ImageNet weights it started from (none need to be on this machine)."""
    check_module_class(read_checkpoint(path), module_class, path)
    if "pretrained_backbone" in inspect.signature(module_class.__init__).parameters:
        overrides.setdefault("pretrained_backbone", False)
    return module_class.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
