"""A batch sampler that makes data order *and* per-sample randomness a pure function of position.

Exact resumption and "N processes equal one process" both need the data stream to depend only on
(seed, epoch, position), never on which process or worker read it, or on how many batches an
iterator has already produced. :class:`ResumableBatchSampler` therefore

* permutes the dataset once per epoch with a generator seeded by ``(seed, epoch)``;
* cuts the permutation into *global* batches of ``global_batch_size`` (dropping the incomplete
  tail) and gives rank ``r`` the ``r``-th contiguous slice of each, so concatenating the ranks'
  batches in rank order is exactly the single-process batch;
* yields :class:`SampleKey` ``(index, seed)`` pairs whose seed is derived from
  ``(seed, epoch, position in the epoch)``: datasets draw their crops and augmentations from it, so a
  sample looks the same whatever the number of ranks or DataLoader workers;
* starts an epoch at any batch (:meth:`set_position`) without reading the skipped data.

Datasets accept either a plain ``int`` index or a :class:`SampleKey` (see :func:`unpack_key`).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
from torch.utils.data import Sampler

from s1s2_encoders.errors import ConfigError


class SampleKey(NamedTuple):
    """What a dataset's ``__getitem__`` receives from :class:`ResumableBatchSampler`."""

    index: int
    seed: int


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the sample at ``position`` of ``epoch`` (stable across platforms)."""
    zigzag = [2 * v if v >= 0 else -2 * v - 1 for v in (int(seed), int(epoch), int(position))]  # any sign
    ss = np.random.SeedSequence([*zigzag, 0x51515])
    high, low = (int(v) for v in ss.generate_state(2, dtype=np.uint32))
    return ((high << 32) | low) & ((1 << 63) - 1)


def unpack_key(key: int | SampleKey | tuple[int, int]) -> tuple[int, int]:
    """``(index, seed)`` from a sampler key; a plain index gets a seed derived from the index."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    index = int(key)
    return index, sample_seed(0, -1, index)


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of the dataset in ``epoch``."""
    if not shuffle:
        return np.arange(n)
    rng = np.random.default_rng([int(seed) % (1 << 63), int(epoch), 0x5EED])
    return rng.permutation(n)


class ResumableBatchSampler(Sampler[list[SampleKey]]):
    """Per-rank batches of :class:`SampleKey`, resumable at any batch.

    Args:
        dataset_size: number of samples.
        global_batch_size: samples per optimizer step over all ranks.
        rank, world_size: this process's place in the job.
        seed: data seed (order and per-sample randomness).
        shuffle: permute every epoch (otherwise dataset order).
    """

    def __init__(self, dataset_size: int, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if global_batch_size % world_size:
            raise ConfigError(
                f"the global batch size {global_batch_size} is not divisible by the {world_size} processes"
            )
        if dataset_size < global_batch_size:
            raise ConfigError(
                f"the dataset has {dataset_size} samples, fewer than one global batch of {global_batch_size}"
            )
        self.dataset_size = int(dataset_size)
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // world_size
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """Complete global batches per epoch (the tail is dropped)."""
        return self.dataset_size // self.global_batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration yields ``epoch`` from batch ``start_batch`` on."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[SampleKey]]:
        order = epoch_permutation(self.dataset_size, self.seed, self.epoch, self.shuffle)
        for b in range(self.start_batch, self.batches_per_epoch):
            first = b * self.global_batch_size + self.rank * self.local_batch_size
            yield [
                SampleKey(int(order[p]), sample_seed(self.seed, self.epoch, p))
                for p in range(first, first + self.local_batch_size)
            ]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch,
                "global_batch_size": self.global_batch_size, "dataset_size": self.dataset_size}
