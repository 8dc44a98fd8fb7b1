"""CPU kernels compiled by Numba (LLVM): kernel code only; the host side, which
imports Numba lazily and sets its threads, is gpuad/backends/cpu_kernels.py.

Each kernel computes exactly the float32 operations, in the same order, that the
numpy code it replaces computes pass by pass (no fast-math: no contraction into
FMAs, no reassociation), so its results equal numpy's to the bit: eager with the
kernels and without, and a compiled replay, agree exactly.

erf32  the float32 erf of gpuad/backends/numpy_backend.py (a table of cubics on a
       1/64 grid, Horner in float32): one pass, parallel over elements, where the
       numpy version makes about 20 passes per 16K-element chunk.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def erf32_scalar(v, c0, c1, c2, c3, last):
    """erf of one float32 (see numpy_backend._erf_table for the scheme)."""
    if v != v:
        return v
    sc = abs(v) * np.float32(64.0)
    if sc > last:                        # inf and beyond the table: its last row (1.0)
        sc = last
    k = int(sc)
    t = sc - np.float32(k)
    y = c3[k] * t
    y = y + c2[k]
    y = y * t
    y = y + c1[k]
    y = y * t
    y = y + c0[k]
    if v < 0 or (v == 0 and np.signbit(v)):
        y = -y
    return y


@njit(parallel=True, cache=True)
def erf32(x, out, c0, c1, c2, c3, last):
    """out[i] = erf(x[i]) for flat float32 arrays, in parallel."""
    for i in prange(x.size):
        out[i] = erf32_scalar(x[i], c0, c1, c2, c3, last)
