"""Activation (gradient) checkpointing for the memory-heavy early blocks of a backbone.

A training step keeps every block's activations for the backward pass; in MobileNetV2 the
blocks at strides 2 and 4 hold most of them (high resolution, 6x expansion) while costing a
small share of the multiply-adds. ``checkpointed`` runs such a block without keeping its
activations and recomputes it in the backward pass.

BatchNorm makes the recomputation impure: in training mode it would update the running
statistics a second time. The recomputation therefore runs with the statistics restored
afterwards (the batch statistics it normalises with are the same as the first time, since
the input is), so a checkpointed model trains exactly as the plain one does.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextmanager
def running_stats_restored(module: nn.Module) -> Iterator[None]:
    """Run ``module`` with its BatchNorm running statistics put back as they were on exit."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[buffer.clone() for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` whose activations are recomputed in the backward pass instead of kept.

    Plain ``block(x)`` when no gradient is being recorded (evaluation, ``torch.no_grad``).
    """
    records_grad = x.requires_grad or any(p.requires_grad for p in block.parameters())
    if not (torch.is_grad_enabled() and records_grad):
        return block(x)
    return checkpoint(
        block, x, use_reentrant=False, context_fn=lambda: (nullcontext(), running_stats_restored(block))
    )
