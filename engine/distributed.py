"""The DDP evaluation rule every task follows: each image counts once.

The datamodules here shard evaluation sets without repeats
(``datamodules.UnpaddedDistributedSampler``). A ``DistributedSampler`` that does not drop the
tail (what Lightning injects for another datamodule's loaders) repeats a few samples so every
process gets the same number; counting them would weigh those images twice, so tasks pass
``unrepeated_samples`` to their metric, which leaves the repeats out.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler, Sampler


def unrepeated_samples(sampler: Sampler | None, first: int, count: int) -> torch.Tensor:
    """Which of this process's samples ``first .. first + count - 1`` are not padding.

    Process ``rank`` of ``R`` takes global positions ``rank, rank + R, ...``; a position past
    the dataset length is a repeat. Any other sampler repeats nothing. Returns a bool tensor
    of length ``count``.
    """
    local = torch.arange(first, first + count)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return torch.ones(count, dtype=torch.bool)
    return sampler.rank + sampler.num_replicas * local < len(sampler.dataset)
