"""Training that survives a non-finite loss: ``NonFiniteGuard`` skips such steps and stops after
too many in a row; ``nonfinite_entries`` names the tensors of a state dict that are not finite.

The guard lets backward run (returning ``None`` from ``training_step`` is not safe under DDP:
the other processes would wait in the gradient all-reduce) and decides in
``on_before_optimizer_step``, where the gradients are already all-reduced and, under AMP,
unscaled. A bad step loses its gradients (``.grad = None``: SGD, RMSprop and Adam then leave
those parameters, and their momentum, untouched) and gets back the BatchNorm statistics it had
before its forward pass, so it changes nothing.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn.utils import get_total_norm


class NonFiniteStepWarning(UserWarning):
    """An optimizer step was skipped because its loss, gradients or BN statistics were not finite."""


class NonFiniteTrainingError(RuntimeError):
    """Too many optimizer steps in a row were not finite: training stops."""


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor, True when every element of every tensor is finite (no host sync).

    The max-norm is NaN or inf exactly when some element is, and, unlike the 2-norm, never
    overflows on large finite values (fp16 gradients)."""
    return get_total_norm(tensors, norm_type=math.inf).isfinite()


def nonfinite_entries(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all())
    ]


class NonFiniteGuard(Callback):
    """Skips every optimizer step whose loss, gradients or BN statistics are not finite, with a
    ``NonFiniteStepWarning`` naming the step and the loss; raises ``NonFiniteTrainingError``
    after ``max_consecutive`` such steps in a row. A finite step resets the count.

    Under DDP the decision is reduced over processes (any process bad: all skip), so every
    process skips, counts and stops together. Under fp16 AMP the gradient scaler already skips
    steps with non-finite gradients while it searches its scale: there only the loss counts.
    Automatic optimization only (manual optimization steps its optimizers itself).
    """

    def __init__(self, max_consecutive: int = 5) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_steps: list[int] = []
        self._losses: list[torch.Tensor] = []
        self._buffers_before: list[torch.Tensor] | None = None
        self._buffers_saved = False

    # BN statistics move in the forward pass, before the loss is known: keep a copy to go back to.
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._buffers_saved:  # accumulating gradients: the copy from the window's first batch holds
            return
        buffers = list(pl_module.buffers())
        if self._buffers_before is None or len(self._buffers_before) != len(buffers):
            self._buffers_before = [b.detach().clone() for b in buffers]
        elif buffers:
            torch._foreach_copy_(self._buffers_before, buffers)  # one fused copy, not one per buffer
        self._buffers_saved = True

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        losses, self._losses = self._losses, []
        self._buffers_saved = False
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        buffers = [b for b in pl_module.buffers() if b.is_floating_point()]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        checked = losses + buffers + (grads if scaler is None else [])
        local_ok = bool(all_finite(checked)) if checked else True  # the step's one host sync
        if trainer.strategy.reduce_boolean_decision(local_ok, all=True):
            self.consecutive = 0
            return

        what = self._describe(losses, grads if scaler is None else [], buffers)
        if local_ok:
            what = f"a non-finite value on another process (here: {what})"
        for param in params:
            param.grad = None
        if self._buffers_before is not None:
            torch._foreach_copy_(list(pl_module.buffers()), self._buffers_before)
        self.consecutive += 1
        step = trainer.global_step
        self.skipped_steps.append(step)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"training stopped at global step {step}: {self.consecutive} optimizer steps in a row were "
                f"not finite (max_nonfinite_steps={self.max_consecutive}); the last one had {what}. Check the "
                "learning rate (too high, or too short a warm-up), the data (`python -m datamodules.check "
                "CONFIG` lists broken images, boxes and masks) and mixed precision (try precision=32-true or "
                "bf16-mixed)."
            )
        rank_zero_warn(
            f"global step {step}: {what}; skipped the optimizer step (weights and BN statistics unchanged), "
            f"{self.consecutive} in a row of at most {self.max_consecutive}",
            category=NonFiniteStepWarning,
        )

    @staticmethod
    def _describe(losses: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor]) -> str:
        """The loss and what was not finite on this process."""
        loss = ", ".join(f"{float(v):.4g}" for v in losses) or "none"
        problems = [f"loss {loss}"]
        bad_grads = sum(not bool(g.isfinite().all()) for g in grads)
        if bad_grads:
            problems.append(f"non-finite gradients in {bad_grads} of {len(grads)} parameters")
        bad_buffers = sum(not bool(b.isfinite().all()) for b in buffers)
        if bad_buffers:
            problems.append(f"non-finite BN statistics in {bad_buffers} buffers")
        return ", ".join(problems)
