"""gpuad.utils.data: torch.utils.data's datasets, samplers and DataLoader.

Map-style datasets (`__getitem__`, `__len__`: Dataset, TensorDataset, Subset,
ConcatDataset, random_split) and iterable ones (IterableDataset); samplers
(SequentialSampler, RandomSampler, BatchSampler; gpuad.distributed.DistributedSampler
plugs in as `sampler=`); and DataLoader with batch_size, shuffle (seeded by a
gpuad.Generator, or the default generator: gpuad.manual_seed makes epochs repeat),
drop_last, collate_fn, num_workers (processes; batches come back in order) and a
progress bar for long epochs (progress=True, on stderr).

>>> import gpuad
>>> from gpuad.utils.data import TensorDataset, DataLoader
>>> ds = TensorDataset(gpuad.arange(10.0).reshape(5, 2), gpuad.tensor([0, 1, 0, 1, 1]))
>>> [(x.shape, y.tolist()) for x, y in DataLoader(ds, batch_size=2)]
[((2, 2), [0, 1]), ((2, 2), [0, 1]), ((1, 2), [1])]
"""
import bisect
import math
import sys

import numpy as np

from ..ops import composite as C
from ..random import Generator, default_generator
from ..tensor import Tensor

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "Subset", "ConcatDataset", "random_split",
           "Sampler", "SequentialSampler", "RandomSampler", "BatchSampler", "DataLoader", "default_collate"]


class Dataset:
    """A map-style dataset: subclasses define __getitem__ (and __len__)."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def __add__(self, other):
        return ConcatDataset([self, other])


class IterableDataset(Dataset):
    """A stream: subclasses define __iter__. With workers, each worker iterates its own copy
    (split the stream with get_worker_info(), as in torch)."""

    def __iter__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __iter__")


class TensorDataset(Dataset):
    """Samples are the i-th rows of the given tensors (all with the same first size)."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("gpuad.utils.data.TensorDataset: give at least one tensor")
        n = tensors[0].shape[0]
        for i, t in enumerate(tensors):
            if t.shape[0] != n:
                raise ValueError(f"gpuad.utils.data.TensorDataset: size mismatch between tensors: tensor 0 has "
                                 f"{n} rows, tensor {i} (shape {tuple(t.shape)}) has {t.shape[0]}")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self):
        return self.tensors[0].shape[0]


class Subset(Dataset):
    """dataset restricted to `indices`."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __getitem__(self, i):
        if isinstance(i, list):
            return [self.dataset[self.indices[j]] for j in i]
        return self.dataset[self.indices[i]]

    def __len__(self):
        return len(self.indices)


class ConcatDataset(Dataset):
    """The datasets one after another."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("gpuad.utils.data.ConcatDataset: datasets should not be an empty iterable")
        self.cumulative_sizes = list(np.cumsum([len(d) for d in self.datasets]))

    def __len__(self):
        return int(self.cumulative_sizes[-1])

    def __getitem__(self, i):
        if i < 0:
            if -i > len(self):
                raise IndexError("gpuad.utils.data.ConcatDataset: index out of range")
            i += len(self)
        d = bisect.bisect_right(self.cumulative_sizes, i)
        return self.datasets[d][i - (int(self.cumulative_sizes[d - 1]) if d else 0)]


def random_split(dataset, lengths, generator=None):
    """Disjoint random Subsets of the given lengths (or fractions summing to 1: the
    remainder goes round-robin to the first ones, as torch's).

    >>> import gpuad
    >>> a, b = random_split(list(range(10)), [0.7, 0.3], generator=gpuad.Generator(1))
    >>> len(a), len(b), sorted(list(a) + list(b)) == list(range(10))
    (7, 3, True)
    """
    n = len(dataset)
    lengths = list(lengths)
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        sizes = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(sizes)):
            sizes[i % len(sizes)] += 1
        lengths = sizes
    if sum(lengths) != n:
        raise ValueError(f"gpuad.utils.data.random_split: sum of input lengths {sum(lengths)} does not equal the "
                         f"length of the input dataset {n}")
    perm = _rng(generator).permutation(n).tolist()
    out, start = [], 0
    for k in lengths:
        out.append(Subset(dataset, perm[start:start + k]))
        start += k
    return out


def _rng(generator):
    g = generator if generator is not None else default_generator
    if not isinstance(g, Generator):
        raise TypeError(f"gpuad.utils.data: generator must be a gpuad.Generator, got {type(g).__name__}")
    return g.rng


class Sampler:
    """Yields dataset indices."""

    def __iter__(self):
        raise NotImplementedError


class SequentialSampler(Sampler):
    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


class RandomSampler(Sampler):
    """A new permutation at each iteration, drawn from `generator` (default: gpuad's)."""

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None):
        self.data_source, self.replacement, self.generator = data_source, replacement, generator
        self._num = num_samples

    @property
    def num_samples(self):
        return len(self.data_source) if self._num is None else self._num

    def __iter__(self):
        rng, n = _rng(self.generator), len(self.data_source)
        if self.replacement:
            return iter(rng.integers(0, n, self.num_samples).tolist())
        reps = -(-self.num_samples // max(n, 1))
        return iter(np.concatenate([rng.permutation(n) for _ in range(reps)])[:self.num_samples].tolist()
                    if n else [])

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Groups a sampler's indices into lists of batch_size (the last shorter unless drop_last)."""

    def __init__(self, sampler, batch_size, drop_last):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"gpuad.utils.data.BatchSampler: batch_size should be a positive integer, got "
                             f"{batch_size!r}")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self):
        batch = []
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def default_collate(batch):
    """torch's default_collate: a list of samples into one batch, structure kept: Tensors,
    numpy arrays and numbers stacked into a Tensor with a new first axis, tuples, lists
    and dicts collated field by field, strings kept as a list."""
    first = batch[0]
    if isinstance(first, Tensor):
        return C.stack(list(batch))
    if isinstance(first, np.ndarray):
        return Tensor._from(np.stack(batch))
    if isinstance(first, (bool, int, float, np.number)):
        return Tensor(np.asarray(batch))
    if isinstance(first, str):
        return list(batch)
    if isinstance(first, dict):
        return {k: default_collate([b[k] for b in batch]) for k in first}
    if isinstance(first, (tuple, list)):
        if any(len(b) != len(first) for b in batch):
            raise RuntimeError("gpuad.utils.data.default_collate: each element in list of batch should be of "
                               "equal size")
        out = [default_collate(list(field)) for field in zip(*batch)]
        return tuple(out) if isinstance(first, tuple) else out
    raise TypeError(f"gpuad.utils.data.default_collate: batch must contain tensors, numpy arrays, numbers, dicts "
                    f"or lists; found {type(first).__name__}")


# -- workers ------------------------------------------------------------------------------------

_worker = {}        # in a worker process: the dataset and collate_fn (inherited by fork), its id


def _worker_init(worker_id_queue, init_fn):
    _worker["id"] = worker_id_queue.get()
    if init_fn is not None:
        init_fn(_worker["id"])


def _load_batch(indices):
    ds, collate = _worker["dataset"], _worker["collate"]
    return collate([ds[i] for i in indices])


class DataLoader:
    """Batches of a dataset, as torch.utils.data.DataLoader.

    batch_size=None yields single samples; shuffle draws a new order each epoch from
    `generator` (or gpuad's default generator); `sampler` (DistributedSampler included) or
    `batch_sampler` choose the indices instead; num_workers > 0 loads batches in that
    many processes (forked: the dataset is not pickled), in order; progress=True prints
    a progress line to stderr as the epoch goes.
    """

    def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None, num_workers=0,
                 collate_fn=None, pin_memory=False, drop_last=False, timeout=0, worker_init_fn=None,
                 generator=None, prefetch_factor=None, persistent_workers=False, progress=False):
        self.dataset = dataset
        self.num_workers, self.timeout = int(num_workers), timeout
        self.worker_init_fn, self.progress = worker_init_fn, progress
        self.batch_size, self.drop_last = batch_size, drop_last
        self.iterable = isinstance(dataset, IterableDataset)
        if num_workers < 0:
            raise ValueError("gpuad.utils.data.DataLoader: num_workers option should be non-negative")
        if self.iterable and (shuffle or sampler is not None or batch_sampler is not None):
            raise ValueError("gpuad.utils.data.DataLoader: an IterableDataset takes no shuffle, sampler or "
                             "batch_sampler (it chooses its own order)")
        if sampler is not None and shuffle:
            raise ValueError("gpuad.utils.data.DataLoader: sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None and (batch_size != 1 or shuffle or sampler is not None or drop_last):
            raise ValueError("gpuad.utils.data.DataLoader: batch_sampler option is mutually exclusive with "
                             "batch_size, shuffle, sampler, and drop_last")
        if not self.iterable:
            if sampler is None:
                sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
            if batch_sampler is None and batch_size is not None:
                batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.sampler, self.batch_sampler = sampler, batch_sampler
        self.collate_fn = collate_fn if collate_fn is not None else (
            default_collate if batch_size is not None or batch_sampler is not None else (lambda x: x))
        self.generator = generator

    def __len__(self):
        if self.iterable:
            raise TypeError("gpuad.utils.data.DataLoader: an IterableDataset has no length")
        return len(self.batch_sampler) if self.batch_sampler is not None else len(self.sampler)

    def _index_batches(self):
        if self.batch_sampler is not None:
            return iter(self.batch_sampler)
        return ([i] for i in self.sampler)

    def __iter__(self):
        it = self._batches()
        if not self.progress:
            return it
        return _progress(it, None if self.iterable else len(self))

    def _batches(self):
        if self.iterable:
            yield from self._stream()
            return
        single = self.batch_sampler is None
        if self.num_workers == 0:
            for idx in self._index_batches():
                yield self.collate_fn(self.dataset[idx[0]]) if single else \
                    self.collate_fn([self.dataset[i] for i in idx])
            return
        yield from self._with_workers(single)

    def _with_workers(self, single):
        import multiprocessing as mp
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        _worker.update(dataset=self.dataset, collate=(lambda b: self.collate_fn(b[0])) if single
                       else self.collate_fn)
        ids = ctx.Queue()
        for i in range(self.num_workers):
            ids.put(i)
        try:
            with ctx.Pool(self.num_workers, initializer=_worker_init, initargs=(ids, self.worker_init_fn)) as pool:
                results = pool.imap(_load_batch, self._index_batches(), chunksize=1)
                while True:
                    try:
                        yield results.next(self.timeout or None)
                    except StopIteration:
                        return
                    except mp.TimeoutError:
                        raise RuntimeError(f"gpuad.utils.data.DataLoader: a worker took more than timeout="
                                           f"{self.timeout} s for a batch") from None
        finally:
            _worker.clear()

    def _stream(self):
        batch = []
        for sample in self.dataset:
            if self.batch_size is None:
                yield self.collate_fn(sample)
                continue
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate_fn(batch)
                batch = []
        if batch and not self.drop_last and self.batch_size is not None:
            yield self.collate_fn(batch)


def _progress(it, total):
    """Yield from `it`, writing 'batch i/total' (and the rate) to stderr as it goes."""
    import time
    t0 = time.perf_counter()
    i = 0
    for i, item in enumerate(it, 1):
        dt = time.perf_counter() - t0
        rate = i / dt if dt > 0 else 0.0
        bar = ""
        if total:
            done = int(30 * i / total)
            bar = "[" + "#" * done + "." * (30 - done) + f"] {i}/{total}"
        else:
            bar = f"{i} batches"
        sys.stderr.write(f"\r{bar}  {rate:.1f} batches/s")
        sys.stderr.flush()
        yield item
    sys.stderr.write("\n" if i else "")
