"""The resumable training loader on its own: seeded epochs, mid-epoch resume, epoch boundaries."""

from __future__ import annotations

import pytest
import torch

from lit_align.data.loader import ResumableLoader


def _epoch(loader: ResumableLoader, epoch: int) -> list[list[int]]:
    loader.epoch_sampler.set_epoch(epoch)
    return [batch.tolist() for batch in loader]


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    a, b = (
        ResumableLoader(torch.arange(10), seed=3, batch_size=2),
        ResumableLoader(torch.arange(10), seed=3, batch_size=2),
    )
    torch.rand(5)  # the global RNG plays no part
    first = _epoch(a, 0)
    assert first == _epoch(b, 0) and sorted(i for batch in first for i in batch) == list(range(10))
    assert _epoch(a, 1) != first and _epoch(ResumableLoader(torch.arange(10), seed=4, batch_size=2), 0) != first


def test_a_loader_resumed_mid_epoch_serves_the_rest_of_that_epoch():
    loader = ResumableLoader(torch.arange(10), seed=0, batch_size=2)
    loader.epoch_sampler.set_epoch(2)
    served = iter(loader)
    head = [next(served).tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 3, "of": 5, "rows": 10}
    resumed = ResumableLoader(torch.arange(10), seed=0, batch_size=2)
    resumed.load_state_dict(state)
    rest = [batch.tolist() for batch in resumed]
    assert head + rest == _epoch(ResumableLoader(torch.arange(10), seed=0, batch_size=2), 2)
    assert resumed.state_dict()["batches"] == 5  # counts from where it resumed: a second resume is right too
    assert len(resumed) == 5 and [b.tolist() for b in resumed] == _epoch(resumed, 2)  # then whole epochs


def test_at_an_epoch_boundary_any_rows_start_afresh_but_mid_epoch_they_must_match():
    boundary = {"epoch": 1, "batches": 5, "of": 5, "rows": 10}
    loader = ResumableLoader(torch.arange(6), seed=0, batch_size=2)  # a new rollout of another size
    loader.load_state_dict(boundary)
    assert len([*loader]) == 3
    with pytest.raises(ValueError, match="stopped mid-epoch over 10 training rows, this run has 6"):
        loader.load_state_dict({"epoch": 1, "batches": 2, "of": 5, "rows": 10})


def test_ranks_split_each_batch_of_the_single_process_order():
    whole = _epoch(ResumableLoader(torch.arange(8), seed=0, batch_size=4), 0)
    ranks = [_epoch(ResumableLoader(torch.arange(8), seed=0, batch_size=2, num_replicas=2, rank=r), 0) for r in (0, 1)]
    for step, batch in enumerate(whole):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
