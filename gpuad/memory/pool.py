"""A caching allocator for large host (numpy) buffers.

Fresh memory costs page faults on first touch: on the development VMs a
GEMM writing a fresh 4 MB gradient that stays alive runs in 5.0 ms instead of
3.2 ms into memory already touched (`python -m bench method`). glibc returns large freed blocks to the
OS, so every training step pays those faults again. The pool keeps freed
blocks of 64 KiB and more and hands them out again, as PyTorch's caching
allocator does on CUDA.

Each pooled array is built on a raw block through a ctypes holder (its
.base); numpy's views of the array keep the holder alive, and a weakref on
the holder returns the block to the pool when the last view dies. Small arrays go to
numpy directly.

>>> import numpy as np
>>> from gpuad.memory.pool import host_pool
>>> a = host_pool.empty((256, 1024), np.float32)
>>> a.shape, a.dtype, a.flags.writeable
((256, 1024), dtype('float32'), True)
"""
import ctypes
import weakref

import numpy as np

from .. import config

# Writing in place (out=) saves an allocation and, for large arrays, the page
# faults of fresh memory: a 1 MB add into a buffer that stays alive took 722 us
# fresh and 110 us with out=. For tiny arrays numpy's parsing of out= costs
# more than the allocation it saves (2.0 us against 1.0 us for a 1-element
# add). Both from `python -m bench method`. The engine donates gradients,
# and VJPs overwrite their temporaries, only from this many elements up.
INPLACE_MIN = 4096

_ALIGN = 64           # cache-line alignment for SIMD and BLAS kernels
_GRAIN = 4096         # blocks are sized in pages, so near-equal requests share blocks


class HostPool:
    """Free lists of raw blocks keyed by size; `empty()` is np.empty through the cache."""

    def __init__(self, min_bytes=1 << 16, max_cached_bytes=1 << 31):
        self.min_bytes = min_bytes
        self.max_cached_bytes = max_cached_bytes
        self.enabled = config.host_pool_enabled()
        self.free = {}            # block bytes -> [raw uint8 arrays]
        self.cached_bytes = 0     # bytes sitting in free lists
        self.in_use_bytes = 0     # bytes handed out and still referenced
        self.hits = self.misses = 0
        self._live = {}           # id(weakref) -> (weakref, raw block, block bytes)

    def empty(self, shape, dtype):
        """An uninitialised array, from a cached block when one of the right size is free."""
        dtype = np.dtype(dtype)
        shape = tuple(shape)
        count = 1
        for s in shape:
            count *= s
        nbytes = count * dtype.itemsize
        if not self.enabled or nbytes < self.min_bytes:
            return np.empty(shape, dtype)
        key = (nbytes + _GRAIN - 1) // _GRAIN * _GRAIN
        blocks = self.free.get(key)
        if blocks:
            raw = blocks.pop()
            self.cached_bytes -= key
            self.hits += 1
        else:
            raw = np.empty(key + _ALIGN, np.uint8)
            self.misses += 1
        off = (-raw.ctypes.data) % _ALIGN
        holder = (ctypes.c_byte * key).from_buffer(raw, off)
        ref = weakref.ref(holder, self._release)
        self._live[id(ref)] = (ref, raw, key)
        self.in_use_bytes += key
        # The array's base is the holder (not an ndarray), so to the engine it
        # looks like any fresh allocation, and its views point at it.
        return np.ndarray(shape, dtype, buffer=holder)

    def empty_like(self, a):
        return self.empty(a.shape, a.dtype)

    def _release(self, ref):
        entry = self._live.pop(id(ref), None)
        if entry is None:
            return
        _, raw, key = entry
        self.in_use_bytes -= key
        if self.cached_bytes + key > self.max_cached_bytes:
            return                                   # over the cap: let numpy free it
        self.free.setdefault(key, []).append(raw)
        self.cached_bytes += key

    def empty_cache(self):
        """Give every cached free block back to the system allocator."""
        self.free.clear()
        self.cached_bytes = 0

    def stats(self):
        return {"pool_in_use_bytes": self.in_use_bytes, "pool_cached_bytes": self.cached_bytes,
                "pool_hits": self.hits, "pool_misses": self.misses}


host_pool = HostPool()
