"""A batch sampler whose position is two integers, so resume restores it instead of replaying data.

Each epoch is a permutation drawn from ``seed + epoch`` (identical on every rank), padded by wrapping
around so it divides evenly among ranks (as ``DistributedSampler`` does; ``pad=False`` leaves the
shards uneven instead, e.g. for validation), then rank ``r`` takes every ``world_size``-th index. Batches are consecutive slices of the rank's shard. Resuming at
``(epoch, start_batch)`` slices the list: O(1) in the data size, no iteration over skipped data.

``lengths`` (one number per sample) turns on length-grouped batching: the rank's shard is cut into
mega-chunks of ``batch_size * group_chunks`` samples, each sorted by length (longest first) and split
into batches, and the batch order is then shuffled with the epoch's seed. Batches hold similar
lengths, so padding (and wasted compute) shrinks, while every epoch still sees every sample once in a
random-enough order. The batch list is a pure function of (seed, epoch, rank), so resume stays exact.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False, pad: bool = True,
                 lengths=None, group_chunks: int = 50):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start_batch = 0, 0
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_samples} samples")
        self.lengths, self.group_chunks = (list(lengths) if lengths is not None else None), group_chunks

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def shard(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.pad:
            total = math.ceil(self.num_samples / self.world_size) * self.world_size
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.world_size]

    def per_rank(self) -> int:
        """Samples this rank sees per epoch."""
        if self.pad:
            return math.ceil(self.num_samples / self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))

    def last_batch_size(self) -> int:
        """The size of an epoch's last batch on this rank without ``drop_last`` (``batch_size`` if it is full)."""
        return self.per_rank() % self.batch_size or min(self.batch_size, self.per_rank())

    def batches_per_epoch(self) -> int:
        per_rank = self.per_rank()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start_batch, 0)

    def batches(self, epoch: int) -> list[list[int]]:
        shard = self.shard(epoch)
        n = self.batches_per_epoch()
        if self.lengths is None:
            return [shard[b * self.batch_size : (b + 1) * self.batch_size] for b in range(n)]
        usable = shard[: n * self.batch_size] if self.drop_last else shard
        mega = self.batch_size * self.group_chunks
        out = []
        for start in range(0, len(usable), mega):
            chunk = sorted(usable[start : start + mega], key=lambda i: -self.lengths[i])
            out += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed + epoch) * 7919 + self.rank)
            out = [out[i] for i in torch.randperm(len(out), generator=g).tolist()]
        return out[:n]

    def __iter__(self):
        yield from self.batches(self.epoch)[self.start_batch :]
