"""ResumableBatchSampler: deterministic epochs, rank sharding, O(1) resume."""

import pytest

from medlab.engine.sampler import ResumableBatchSampler


def _batches(**kw):
    s = ResumableBatchSampler(**kw)
    return list(s)


def test_epochs_are_permutations_that_differ_and_repeat_with_the_seed():
    a = ResumableBatchSampler(10, 3, seed=1)
    e0 = [i for b in a for i in b]
    a.set_position(1)
    e1 = [i for b in a for i in b]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    b = ResumableBatchSampler(10, 3, seed=1)
    assert [i for x in b for i in x] == e0


def test_two_ranks_together_see_the_single_process_batches():
    single = _batches(num_samples=16, batch_size=8, seed=3)
    r0 = _batches(num_samples=16, batch_size=4, seed=3, rank=0, world_size=2)
    r1 = _batches(num_samples=16, batch_size=4, seed=3, rank=1, world_size=2)
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(x) for x in single]


def test_padding_wraps_and_no_padding_partitions():
    padded = [_batches(num_samples=5, batch_size=10, shuffle=False, rank=r, world_size=2) for r in range(2)]
    assert padded == [[[0, 2, 4]], [[1, 3, 0]]]  # equal lengths: row 0 counted twice
    exact = [_batches(num_samples=5, batch_size=10, shuffle=False, rank=r, world_size=2, pad=False) for r in range(2)]
    assert exact == [[[0, 2, 4]], [[1, 3]]]


def test_resume_position_slices_without_replaying():
    s = ResumableBatchSampler(20, 4, seed=0)
    full = list(s)
    s.set_position(0, 3)
    assert list(s) == full[3:] and len(s) == 2


def test_length_grouped_batches_cover_each_sample_once_and_resume_exactly():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in range(103)]
    s = ResumableBatchSampler(103, 8, seed=3, lengths=lengths, group_chunks=4)
    epoch0 = list(s)
    flat = [i for b in epoch0 for i in b]
    assert sorted(flat) == list(range(103)) and len(epoch0) == s.batches_per_epoch()
    for b in epoch0:  # within a batch: longest first (sorted mega-chunks cut into batches)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    plain = ResumableBatchSampler(103, 8, seed=3)
    spread = lambda bs: sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert spread(epoch0) < spread(list(plain)) / 2  # far less padding than random batches
    s.set_position(0, 5)
    assert list(s) == epoch0[5:]  # resume slices the same batch list
    s.set_position(1, 0)
    assert list(s) != epoch0  # a new epoch reshuffles
    with pytest.raises(ValueError, match="lengths"):
        ResumableBatchSampler(10, 2, lengths=[1, 2])


@pytest.mark.parametrize("n,bs,ws,pad", [(5, 2, 1, True), (8, 4, 1, True), (3, 4, 1, True), (11, 3, 2, True),
                                         (11, 3, 2, False)])
def test_last_batch_size_is_the_last_batch_the_sampler_yields(n, bs, ws, pad):
    for rank in range(ws):
        s = ResumableBatchSampler(n, bs, shuffle=True, seed=3, rank=rank, world_size=ws, pad=pad)
        batches = list(s)
        assert s.per_rank() == sum(len(b) for b in batches)
        assert s.last_batch_size() == len(batches[-1])
        s.drop_last = True
        assert all(len(b) == bs for b in s) and len(list(s)) == s.per_rank() // bs
