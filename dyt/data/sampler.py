"""Where a run is in its data and what its random augmentation draws, both pure functions of the run's position.

- `ShardedSampler`: the data position of a run is just a sample count; epoch ``e`` is one seeded permutation.
- `SeededSamples`: sample ``i`` of epoch ``e`` is produced under RNGs seeded by ``(seed, e, i)``, so its augmentation
  (crop, flip, RandAugment, erasing, shift...) is the same whichever rank, data worker or resumed process loads it,
  and two ranks never share draws (they load different sample indices).
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, TensorDataset, get_worker_info


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

    def _indices(self) -> torch.Tensor:
        """This rank's share of the epoch as an int64 tensor: a Table 4 epoch has ~49M sequences, which as a
        Python list would cost ~1.8 GB per rank (8 bytes a tensor element instead)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        if self.drop_last:
            perm = perm[: self.n // self.world * self.world]
        return perm[self.rank :: self.world]

    def __iter__(self):
        for chunk in self._indices()[self.start :].split(1 << 16):  # Python ints a chunk at a time
            yield from chunk.tolist()

    def __len__(self) -> int:  # arithmetic: no permutation drawn
        n = self.n // self.world * self.world if self.drop_last else self.n
        return max(0, len(range(self.rank, n, self.world)) - self.start)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for sample ``index`` of ``epoch`` (SeedSequence: well mixed, no overlap between keys)."""
    words = np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(2, np.uint32)
    return int(words[0]) << 32 | int(words[1])


def seed_rngs(seed: int) -> None:
    """Seed the RNGs that transforms draw from: torch's CPU generator, ``random``, NumPy's legacy global (never
    the CUDA generators)."""
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """`seed_rngs` for the block, then the previous states back: in the main process (``num_workers=0``) loading
    data must not move the training RNG (dropout, drop path, mixup). About 0.3 ms, mostly NumPy's state copies."""
    torch_state, py_state, np_state = torch.random.default_generator.get_state(), random.getstate(), np.random.get_state()
    seed_rngs(seed)
    try:
        yield
    finally:
        torch.random.default_generator.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def draws_randomly(ds: Dataset) -> bool:
    """Whether loading `ds` may draw random numbers (augmentation). Plain tensors and datasets that say
    ``deterministic = True`` (packed token sequences) do not, and are loaded without seeding."""
    return not (isinstance(ds, TensorDataset) or getattr(ds, "deterministic", False))


class SeededSamples(Dataset):
    """``ds[i]`` of one epoch, loaded under RNGs seeded by ``(seed, epoch, i)`` (see the module docstring)."""

    def __init__(self, ds: Dataset, seed: int, epoch: int):
        self.ds, self.seed, self.epoch = ds, seed, epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        seed = sample_seed(self.seed, self.epoch, int(i))
        if get_worker_info() is not None:  # a data worker's RNGs serve only its samples: no state to restore
            seed_rngs(seed)
            return self.ds[i]
        with seeded_rngs(seed):
            return self.ds[i]
