"""DistributedSampler: each rank's disjoint share of a data set's indices.

torch.utils.data.distributed.DistributedSampler's contract: every epoch all
ranks draw the same permutation (from seed + epoch, so no communication is
needed), pad it by repeating its head until it divides evenly (or drop the tail
with drop_last), and rank r takes every num_replicas-th index from r on.

>>> s = DistributedSampler(10, num_replicas=2, rank=1, shuffle=False)
>>> list(s), len(s)
([1, 3, 5, 7, 9], 5)
>>> a = DistributedSampler(10, num_replicas=2, rank=0, seed=3)
>>> b = DistributedSampler(10, num_replicas=2, rank=1, seed=3)
>>> sorted(list(a) + list(b)) == list(range(10))
True
>>> a.set_epoch(1); list(a) != list(DistributedSampler(10, 2, 0, seed=3))
True
"""
import math

import numpy as np


class DistributedSampler:
    """Indices of one rank's shard of `dataset` (a length, or anything with len())."""

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None or rank is None:
            from .collectives import get_rank, get_world_size
            num_replicas = get_world_size() if num_replicas is None else num_replicas
            rank = get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank {rank} is not in [0, {num_replicas})")
        self.n = dataset if isinstance(dataset, int) else len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = self.n // num_replicas
        else:
            self.num_samples = math.ceil(self.n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch):
        """Reshuffle: call at the start of every epoch, with the same epoch on every rank."""
        self.epoch = epoch

    def indices(self):
        """This rank's indices for the current epoch, as an int64 array."""
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.total_size > self.n:                           # pad by repeating the head
            reps = math.ceil(self.total_size / max(self.n, 1))
            order = np.tile(order, reps)
        order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples
