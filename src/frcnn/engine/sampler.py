"""The order in which a run sees its training images, fixed in advance per iteration."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import chain, count, islice
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data.batching import grouped_batches

_SEED_MIX = 1_000_003


class IterationBatchSampler:
    """Item keys for iterations ``start``, ``start + 1``, ... without end.

    Each epoch visits the images in a permutation drawn from (seed, epoch) and cuts it into
    batches of images of one group (``groups[i]``, e.g. landscape or portrait, so that a batch
    pads little); incomplete batches are dropped. Iteration i takes batch ``i mod E`` of epoch
    ``i div E`` (E iterations per epoch), and in a distributed run rank r takes the r-th of
    ``world_size`` consecutive batches. When the groups cannot fill one batch per rank, the
    permutation is repeated and cut without regard to groups.

    A key is (image index, item seed), the seed a function of (seed, iteration, rank, slot), for
    ``SeededItems``. What an iteration sees is thus fixed in advance, whether the run was
    resumed or not and however many loader workers there are.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if len(groups) < 1:
            raise ValueError("the training set is empty")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        grouped_batches = sum(count // batch_size for count in Counter(groups).values())
        if grouped_batches >= world_size:
            self.groups = list(groups)
            self.iterations_per_epoch = grouped_batches // world_size
        else:
            self.groups = [0] * len(groups)
            self.iterations_per_epoch = max(1, len(groups) // (batch_size * world_size))
        self._epoch = -1
        self._batches: list[list[int]] = []

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of an epoch, enough for every rank's iterations: ``grouped_batches`` of
        permutations drawn one after another from the epoch's generator."""
        generator = torch.Generator().manual_seed(self.seed * _SEED_MIX + epoch)
        permutations = (torch.randperm(len(self.groups), generator=generator).tolist() for _ in count())
        batches = grouped_batches(chain.from_iterable(permutations), self.groups, self.batch_size)
        return list(islice(batches, self.iterations_per_epoch * self.world_size))

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """The (index, item seed) keys of this rank's batch at ``iteration``."""
        epoch, step = divmod(iteration, self.iterations_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self.epoch_batches(epoch)
        first_slot = (iteration * self.world_size + self.rank) * self.batch_size
        indices = self._batches[step * self.world_size + self.rank]
        return [(index, (self.seed * _SEED_MIX + first_slot + offset) % 2**63)
                for offset, index in enumerate(indices)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start
        while True:
            yield self.batch(iteration)
            iteration += 1


class SeededItems(Dataset):
    """``dataset`` indexed by (index, seed) keys: the item is made with torch's global generator
    seeded by the key's seed, and the generator's state is restored afterwards, so the
    augmentation's draws repeat and the caller's random stream is left alone."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
