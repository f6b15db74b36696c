"""A deterministic, rank-sharded, resumable sampler: the data position of a run is just a batch count."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ShardedSampler(Sampler[int]):
    """Epoch ``e`` is one permutation seeded by ``(seed, e)``; rank ``r`` of ``w`` takes ``perm[r::w]``.

    With a global batch of ``B = w * b`` the ranks' ``k``-th batches together hold ``perm[k*B:(k+1)*B]``, so a
    run on ``w`` ranks sees the same global batches as a single process. ``start`` skips that many samples of
    this rank's share (resuming mid-epoch). Training drops the tail so every rank has the same length.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, drop_last: bool = True, start: int = 0):
        self.n, self.rank, self.world = n, rank, world
        self.seed, self.epoch, self.shuffle, self.drop_last, self.start = seed, epoch, shuffle, drop_last, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        if self.drop_last:
            perm = perm[: self.n // self.world * self.world]
        return perm[self.rank :: self.world]

    def __iter__(self):
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)
