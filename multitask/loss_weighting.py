"""How the joint model's task losses add up: fixed weights, or weights learned from each task's
homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

import torch
from torch import nn


class LossWeighting(nn.Module):
    """``{task: {name: loss}}`` -> ``{name: weighted loss}``, whose sum is the training loss.

    Fixed (``learned=False``): every loss of task ``t`` is multiplied by ``weights[t]``.
    Learned: each task has a log-variance ``s_t`` (a parameter, initialised to
    ``-log(weights[t])``), its losses are multiplied by ``exp(-s_t)`` and ``"uncertainty"``
    adds ``sum_t s_t``, which keeps the weights from collapsing to zero (Kendall et al.'s
    classification form, the one TF and torchmtl implementations use for every task).
    """

    def __init__(self, weights: dict[str, float], learned: bool = False) -> None:
        super().__init__()
        if any(w <= 0 for w in weights.values()):
            raise ValueError(f"task loss weights must be positive, got {weights}")
        self.tasks = list(weights)
        self.learned = learned
        initial = torch.tensor([float(weights[t]) for t in self.tasks])
        if learned:
            self.log_variance = nn.Parameter(-initial.log())
        else:
            self.register_buffer("fixed", initial, persistent=False)

    def weights(self) -> dict[str, torch.Tensor]:
        """The current weight of each task's losses."""
        values = torch.exp(-self.log_variance) if self.learned else self.fixed
        return dict(zip(self.tasks, values))

    def forward(self, losses: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        weights = self.weights()
        weighted = {name: weights[task] * loss for task, parts in losses.items() for name, loss in parts.items()}
        if self.learned:
            weighted["uncertainty"] = self.log_variance.sum()
        return weighted
