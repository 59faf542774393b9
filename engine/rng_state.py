"""The global random state in checkpoints (``RestoreRNGState``), for exact resume.

Resuming from a checkpoint, Lightning restores the weights, optimizers, LR schedulers, loop
counters, callback and datamodule states and stateful training loaders, but not the global
random generators (torch, CUDA, numpy, Python) that dropout and any other random op draw from.
``RestoreRNGState`` saves them in each checkpoint and puts them back right before the first
training batch after a resume: the uninterrupted run had that state there too, since nothing
draws from the global generators between saving after a batch (or after validation) and the
next training batch (the datamodules' loaders seed their workers from their own generators).

Under DDP only rank 0 writes checkpoints: every rank gets rank 0's state (with
``seed_everything`` all ranks start from the same seed and draw alike).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states


class RestoreRNGState(Callback):
    """Saves the global random states in checkpoints; restores them before the first training
    batch of a resumed run."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        # numpy's key array as a list of ints: checkpoints load with weights_only=True.
        name, keys, position, has_gauss, cached_gauss = states["numpy"]
        states["numpy"] = (name, keys.tolist(), position, has_gauss, cached_gauss)
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = dict(state_dict)
        if not torch.cuda.is_available():  # a GPU run resumed on CPU: no CUDA generators to set
            self._to_restore.pop("torch.cuda", None)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._to_restore is not None:
            _set_rng_states(self._to_restore)
            self._to_restore = None
