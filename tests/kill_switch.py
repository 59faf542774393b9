"""A test-only callback that kills its own training process, for the kill-and-resume tests
(``--trainer.callbacks+=kill_switch.SigkillInStep`` with this folder on ``PYTHONPATH``)."""

from __future__ import annotations

import os
import signal

from lightning import Callback, LightningModule, Trainer


class SigkillInStep(Callback):
    """SIGKILLs the process in the middle of optimizer step ``step`` (0-based): after its
    backward pass, before the optimizer steps. A ``ModelCheckpoint`` with
    ``every_n_train_steps=1`` has by then written the checkpoint of the ``step`` steps done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
