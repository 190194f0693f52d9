"""ResumableBatchSampler: deterministic epochs, rank sharding, O(1) resume."""

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
