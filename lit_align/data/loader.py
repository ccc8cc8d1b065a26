"""The training DataLoader, whose position survives a restart.

Lightning saves a training loader's ``state_dict()`` in every checkpoint and hands it back to
``load_state_dict`` on resume (any loader with both methods). Ours is ``(epoch, batches served
this epoch)``: an epoch's order is a permutation seeded by ``(seed, epoch)`` alone, so nothing
else that draws random numbers (evaluation, sampling, a longer or shorter validation) can change
it, and a resumed loader skips the batches its epoch already served.

Why not torchdata's ``StatefulDataLoader``: it would be a dependency for these few lines, and it
counts what its iterator yielded, which is what we count too only because Lightning does not
prefetch from a loader that has a length (``tests/test_resume.py`` checks the trajectories).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler``'s order (a permutation seeded by ``seed + epoch``, rank ``r`` of
    ``n`` taking every n-th index) that can start ``start`` indices into the epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0  # consumed by the next __iter__

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableLoader(DataLoader):
    """A shuffling DataLoader over this rank's shard, with Lightning's ``state_dict`` interface.

    Lightning sees an `EpochSampler` (a ``DistributedSampler``) and neither replaces it under
    DDP nor forgets to call its ``set_epoch``; ``num_replicas`` and ``rank`` come from the
    trainer. ``len()`` is always the whole epoch, as Lightning counts a resumed epoch's batches
    from where it stopped.
    """

    def __init__(self, dataset: Any, *, seed: int, num_replicas: int = 1, rank: int = 0, **kwargs: Any) -> None:
        self.epoch_sampler = EpochSampler(dataset, num_replicas, rank, seed)
        # Worker seeds are drawn from this generator, not the global RNG (see the module note).
        super().__init__(dataset, sampler=self.epoch_sampler, generator=torch.Generator().manual_seed(seed), **kwargs)
        self.served = 0  # batches of the current epoch handed out
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        self.served, self._resume_at = self._resume_at, 0
        self.epoch_sampler.start = self.served * (self.batch_size or 1)
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch_sampler.epoch, "batches": self.served, "of": len(self), "rows": len(self.dataset)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch_sampler.set_epoch(state["epoch"])  # Lightning sets it again before iterating
        if state["batches"] >= state["of"]:
            # Saved after an epoch's last batch: the next epoch starts from its beginning, on
            # whatever rows it has (online sampling may have drawn a buffer of another size).
            self._resume_at = 0
            return
        if state["rows"] != len(self.dataset):
            raise ValueError(
                f"the checkpoint stopped mid-epoch over {state['rows']} training rows, this run has "
                f"{len(self.dataset)}: resume with the data settings of the run that wrote it"
            )
        self._resume_at = state["batches"]
