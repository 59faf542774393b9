"""The datamodules' DataLoaders: training resumable mid-epoch, bad data reported from workers.

Resuming. A training run killed in the middle of an epoch and resumed from its last
checkpoint gets exactly the batches the uninterrupted run got, because the training data is a
pure function of (seed, epoch, position):

- ``EpochSampler`` orders epoch ``e`` by a permutation drawn from ``seed + e`` and gives rank
  ``r`` of ``R`` every ``R``-th index (it is a ``DistributedSampler``, which Lightning keeps
  under DDP instead of replacing); each index travels with the seed of its augmentation,
  ``sample_seed(seed, epoch, index)``, which the dataset's ``fetch`` uses, so samples do not
  depend on the number of workers or on which worker drew them;
- ``ResumableDataLoader`` is "stateful" for Lightning (``state_dict`` / ``load_state_dict``,
  saved in every checkpoint, and carried by the datamodule's state too: see
  ``BaseDataModule.state_dict``): its state is the epoch and the number of batches yielded in
  it, and a loaded state makes the next iteration of that epoch start after those batches,
  which are not decoded again.

Bad data. Datasets skip bad samples inside the worker processes. ``ReportingCollate`` sends the
problems, and the conversions of odd images, to the main process with the batch, where
``ReportingDataLoader`` strips them off into the run's ``ProblemLog``, which logs each once.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .datasets import Fetched, SampleKey, _SkippingDataset
from .problems import DataProblem, ProblemLog


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded with ``seed``
    (hashed: neighbouring triples give unrelated streams)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class EpochSampler(DistributedSampler):
    """Training order: ``SampleKey(index, augmentation seed)`` for rank ``rank`` of ``num_replicas``.

    Epoch ``e`` is ``DistributedSampler``'s shuffle (a permutation drawn from ``seed + e``,
    padded with repeats to a multiple of the ranks; Lightning calls ``set_epoch``). ``start``
    leaves out that many positions of this rank's share (``ResumableDataLoader`` sets it).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[SampleKey]:
        for index in itertools.islice(super().__iter__(), self.start, None):
            yield SampleKey(index, sample_seed(self.seed, self.epoch, index))


class _Fetching(Dataset):
    """A skipping dataset seen through its ``fetch``: items are ``Fetched``, keyed by an index
    or a ``SampleKey``."""

    def __init__(self, dataset: _SkippingDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | SampleKey) -> Fetched:
        return self.dataset.fetch(*key) if isinstance(key, SampleKey) else self.dataset.fetch(key)


class ReportingCollate:
    """``[Fetched]`` -> ``(collate(kept samples), problems, conversions)``: what was skipped or
    converted in a worker process leaves it with the batch."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[Fetched]) -> tuple[Any, list[DataProblem], list[tuple[str, str]]]:
        problems = [item.problem for item in items if item.problem is not None]
        notes = [note for item in items for note in item.notes]
        return self.collate([item.sample for item in items if item.problem is None]), problems, notes


class ReportingDataLoader(DataLoader):
    """A DataLoader over a skipping dataset whose skips and image conversions, met in any
    worker process, are recorded (and logged once) in ``problem_log``, in the main process.

    Batches are what ``collate_fn`` makes of the samples kept (possibly none).
    """

    def __init__(
        self, dataset: _SkippingDataset, problem_log: ProblemLog, *, collate_fn: Callable[[list[Any]], Any], **kwargs: Any
    ) -> None:
        super().__init__(_Fetching(dataset), collate_fn=ReportingCollate(collate_fn), **kwargs)
        self.problem_log = problem_log

    def __iter__(self) -> Iterator[Any]:
        for batch, problems, notes in super().__iter__():
            self.problem_log.record(problems, notes)
            yield batch


class ResumableDataLoader(ReportingDataLoader):
    """The training loader, which Lightning resumes mid-epoch: its state (saved in checkpoints)
    is ``{"epoch", "batches"}``, the batches yielded so far in that epoch.

    After ``load_state_dict``, the next iteration, when the sampler is at the saved epoch,
    starts that many batches in (the sampler leaves their samples out). The body of
    ``__iter__`` runs at the first ``next()``, after Lightning's ``set_epoch``: a state saved
    after an epoch's last batch therefore resumes at the start of the next epoch.
    """

    def __init__(self, dataset: _SkippingDataset, problem_log: ProblemLog, *, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, problem_log, sampler=sampler, **kwargs)
        self._epoch = 0
        self._batches = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        if isinstance(self.sampler, EpochSampler):
            self._epoch = self.sampler.epoch
            self._batches = resume["batches"] if resume is not None and resume["epoch"] == self._epoch else 0
            self.sampler.start = self._batches * self.batch_size
        else:  # Lightning's SequentialSampler for overfit_batches: one order, nothing to resume
            self._epoch = self._batches = 0
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the training data stands: the epoch and the batches yielded in it."""
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from ``state`` at the next iteration, if it is of the saved epoch."""
        self._resume = dict(state)
