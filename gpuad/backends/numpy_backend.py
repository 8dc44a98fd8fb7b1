"""The ArrayNamespace: numpy's vocabulary, plus the few extras every backend spells the
same way (the erf table, buffers from the host pool, ...); numpy_ns wraps numpy.

cupy_backend.py subclasses it for CuPy's arrays; backends/__init__.py picks
the namespace an array belongs to.

>>> import numpy as np
>>> from gpuad.backends.numpy_backend import numpy_ns
>>> numpy_ns.name, float(numpy_ns.add(np.ones(2), 1.0).sum())
('numpy', 4.0)
"""
import math
import threading

import numpy as np

from ..memory.pool import host_pool
from . import cpu_kernels


class ArrayNamespace:
    """numpy's (or cupy's) functions under one name, plus gpuad's extras.

    Attribute lookups fall through to the module once and are then cached on
    the instance, so `xp.tanh` costs one dict lookup in the hot path.
    """

    def __init__(self, name, module):
        self.name = name
        self.module = module

    def __getattr__(self, attr):
        value = getattr(self.module, attr)
        setattr(self, attr, value)
        return value

    def __repr__(self):
        return f"<ArrayNamespace {self.name}>"

    # -- extras: same meaning on every backend ---------------------------------

    def getitem(self, a, index):
        return a[index]

    def dropout_keep(self, seed, tile, shape, p, out=None):
        """Attention dropout's keep mask for one tile, scaled by 1/(1-p), float32: drawn on
        the host from the node's seed and the tile's number (so its backward, and a
        compiled replay, draw the same mask), then put on this namespace's device. out=
        (host arrays): written there, the same values (a compiled replay's arena)."""
        rng = np.random.default_rng((int(seed), int(tile)))
        keep = rng.random(shape) >= p
        if out is None:
            return self.asarray(keep.astype(np.float32) / (1.0 - p))
        np.copyto(out, keep)                     # 0 or 1, exactly, then the same float32 division
        return np.divide(out, 1.0 - p, out=out)

    def scatter_add(self, g, shape, index, unique):
        """zeros(shape) with g added at index: the VJP of a[index].

        Slices, ints and masks hit each element once, so an assignment does
        it (write N); integer arrays may repeat an index, so those need an
        accumulating scatter.
        """
        out = self.module.zeros(shape, dtype=g.dtype)
        if unique:
            out[index] = g
        else:
            self._add_at(out, index, g)
        return out

    def _add_at(self, out, index, g):
        np.add.at(out, index, g)

    def buffer(self, shape, dtype):
        """An output buffer for out=: large host arrays come from gpuad's caching
        pool (reused memory, no page faults); None lets the backend allocate."""
        if self.name == "numpy":
            return host_pool.empty(shape, dtype)
        return None

    def setitem(self, a, index, value):
        """A copy of a with value written at index (read and write N, then the index)."""
        out = a.copy()
        out[index] = value
        return out

    def zero_where(self, a, drop):
        """a with zeros where `drop`, in place: a selection, so an inf in a never
        meets a 0 of a mask (inf * 0 is NaN). Read and write N, plus the N-byte mask."""
        self.module.copyto(a, 0, where=drop)
        return a

    def astype(self, a, dtype):
        return a.astype(dtype, copy=False)

    # Sums add in C order whatever the array's layout. numpy adds in memory order, so the
    # same values held transposed (an op on a transposed view gives a transposed result)
    # would sum to another last bit than in C order, which is how gpuad.compile's planned
    # buffers hold them: eager and the replay then differ. A transposed array is copied
    # first (read and write N); a C-ordered one costs a flags check.

    def sum(self, a, axis=None, dtype=None, out=None, keepdims=False):
        if type(a) is np.ndarray and a.ndim > 1 and not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if dtype is None and out is None and not keepdims and axis is not None:
            # over leading axes (a bias gradient): the CPU kernels' column sum, numpy's bits
            r = cpu_kernels.sum_leading(a, axis)
            if r is not None:
                return r
        return self.module.sum(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims)

    def mean(self, a, axis=None, dtype=None, out=None, keepdims=False):
        if type(a) is np.ndarray and a.ndim > 1 and not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        return self.module.mean(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims)

    def einsum(self, *args, **kw):
        # C-ordered (numpy's optimized einsum may hand back a transposed result)
        r = self.module.einsum(*args, **kw)
        return r if type(r) is not np.ndarray or r.ndim < 2 or r.flags.c_contiguous else np.ascontiguousarray(r)

    def erf(self, x, out=None):
        # numpy has no erf. float32 and float16 go through a table (within 2 float32 ulps
        # of math.erf; 4M elements in ~75 ms here, math.erf per element ~500 ms, torch's
        # SIMD kernel ~5 ms); other dtypes take math.erf per element, exact to the last bit.
        if x.dtype == np.float32 or x.dtype == np.float16:
            # the same table in one compiled parallel pass where Numba is here (the same bits)
            y = cpu_kernels.erf(x, ERF_TABLE, out)
            return _erf_table(x, out) if y is None else y
        y = np.asarray(_np_erf(x), dtype=x.dtype)
        if out is None:
            return y
        np.copyto(out, y)
        return out


_np_erf = np.frompyfunc(math.erf, 1, 1)


def _erf_coefficients(step, xmax):
    """Per-interval cubics (Horner in t in [0, 1)) of the Hermite interpolant of erf on a
    grid of `step`, from math.erf and its derivative 2/sqrt(pi) exp(-x^2); a last row
    for beyond xmax, where float32's erf is 1."""
    n = int(xmax / step)
    grid = np.arange(n + 2) * step
    y = np.array([math.erf(v) for v in grid])
    d = 2 / math.sqrt(math.pi) * np.exp(-grid * grid) * step
    c = np.stack([y[:-1], d[:-1], 3 * (y[1:] - y[:-1]) - 2 * d[:-1] - d[1:], 2 * (y[:-1] - y[1:]) + d[:-1] + d[1:]], 1)
    return np.vstack([c, [[1.0, 0.0, 0.0, 0.0]]]).astype(np.float32)


_ERF_STEP = 1.0 / 64
_ERF_C = tuple(np.ascontiguousarray(c) for c in _erf_coefficients(_ERF_STEP, 4.0).T)   # c0..c3, one table each
_ERF_LAST = _ERF_C[0].shape[0] - 1
ERF_TABLE = (_ERF_C, _ERF_LAST)     # what the CPU kernel's erf reads (gpuad/backends/cpu_kernels.py)
_ERF_CHUNK = 1 << 14          # 16K elements: every pass below stays in the L2 cache


_erf_work = threading.local()      # per thread: the chunk-sized temporaries, made once


def _erf_scratch():
    w = getattr(_erf_work, "arrays", None)
    if w is None:
        f = lambda: np.empty(_ERF_CHUNK, np.float32)      # noqa: E731
        w = _erf_work.arrays = (f(), f(), f(), f(), f(), np.empty(_ERF_CHUNK, np.intp),   # take wants intp
                                np.empty(_ERF_CHUNK, np.bool_))
    return w


def _erf_table(x, out=None):
    # per chunk: 4 gathers (np.take on small tables, 3x faster than a 2-D fancy index) and
    # a cubic in Horner form, in float32, all into per-thread temporaries: a call allocates
    # nothing but its result (and not that when given out=)
    c0, c1, c2, c3 = _ERF_C
    out = np.empty(x.shape, x.dtype) if out is None else out
    xf = x.reshape(-1)
    of = out.reshape(-1)
    if not np.may_share_memory(of, out):           # out was not contiguous: a copy to write back
        raise ValueError("gpuad: erf's out= must be contiguous")
    v_, sc_, t_, y_, g_, k_, nan_ = _erf_scratch()
    for s in range(0, xf.size, _ERF_CHUNK):
        n = min(_ERF_CHUNK, xf.size - s)
        v, sc, t, y, g, k, nan = v_[:n], sc_[:n], t_[:n], y_[:n], g_[:n], k_[:n], nan_[:n]
        np.copyto(v, xf[s:s + n], casting="unsafe")
        np.abs(v, out=sc)
        sc *= np.float32(1 / _ERF_STEP)
        np.minimum(sc, np.float32(_ERF_LAST), out=sc)    # inf -> the last row (NaN stays NaN)
        with np.errstate(invalid="ignore"):
            np.copyto(k, sc, casting="unsafe")
        np.maximum(k, 0, out=k)                          # (NaN casts to a negative index)
        np.copyto(t, k, casting="unsafe")                # the index as float32, exactly, so that
        np.subtract(sc, t, out=t)                        # sc - k stays in float32 (exact): no buffers
        np.take(c3, k, out=y, mode="clip")
        y *= t
        y += np.take(c2, k, out=g, mode="clip")
        y *= t
        y += np.take(c1, k, out=g, mode="clip")
        y *= t
        y += np.take(c0, k, out=g, mode="clip")
        np.copysign(y, v, out=y)
        np.copyto(y, v, where=np.isnan(v, out=nan))      # NaN in, NaN out
        np.copyto(of[s:s + n], y, casting="unsafe")
    return out


numpy_ns = ArrayNamespace("numpy", np)

