"""The CPU-kernel provider: numpy-vocabulary operations compiled by Numba (LLVM) into
one parallel pass, where numpy makes many (kernels/cpu_math.py holds the kernels).

Numba is imported the first time a kernel is wanted, never at `import gpuad`.
Without it (or with GPUAD_CPU_KERNELS=numpy) the numpy code runs, after one warning
when Numba is missing. Each kernel gives numpy's result to the bit, so turning the
kernels on or off changes times, never values.

Threads. Numba's OpenMP layer, with OpenMP's passive wait policy unless the user set
one: an idle kernel thread sleeps instead of spinning, so a BLAS GEMM (or another
process) right after a parallel kernel has the cores (a spinning pool slowed torch's
20 ms step to 98 ms in the issue's prototype). `gpuad.set_num_threads(n)` sets the
kernels' threads and, through threadpoolctl when it is installed, BLAS's.

>>> import numpy as np
>>> from gpuad.backends import cpu_kernels
>>> from gpuad.backends.numpy_backend import ERF_TABLE, _erf_table
>>> x = np.linspace(-3, 3, 8192, dtype=np.float32)
>>> y = cpu_kernels.erf(x, ERF_TABLE)          # None where the kernels are off (or x is small)
>>> y is None or bool(np.array_equal(y, _erf_table(x)))
True
"""
import os

import numpy as np

from .. import providers
from ..memory.pool import host_pool


def module():
    """kernels/cpu_math.py compiled by Numba, or None (see providers.cpu_kernel_module)."""
    return providers.cpu_kernel_module()


def enabled():
    return module() is not None


def erf(x, table, out=None):
    """erf(x) of a C-contiguous float32 array by the kernel, into out when given (C-contiguous,
    float32, x's shape); None where the kernel does not apply or the kernels are off.
    table: (the four coefficient arrays, the last row's index) of numpy_backend's erf
    (ERF_TABLE), which owns them."""
    if not (x.dtype == np.float32 and x.flags.c_contiguous and x.size >= MIN_SIZE) or (
            out is not None and not (out.dtype == np.float32 and out.shape == x.shape and out.flags.c_contiguous)):
        return None
    m = module()
    if m is None:
        return None
    (c0, c1, c2, c3), last = table
    out = host_pool.empty(x.shape, np.float32) if out is None else out
    run = m.erf32 if x.size >= PARALLEL_MIN else m.erf32_serial
    run(x.reshape(-1), out.reshape(-1), c0, c1, c2, c3, np.float32(last))
    return out


MIN_SIZE = 4096          # elements: below this numpy's passes cost less than a kernel call
PARALLEL_MIN = 1 << 17   # elements: below this a kernel runs on this thread (waking the sleeping
                         # pool cost 0.3 ms more than a 16K erf on one thread: python -m bench ops)


def _dense32(*arrays):
    return all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays) and arrays[0].size >= MIN_SIZE


_pool = {}


def parallel_ufunc(ufunc, a, *args):
    """ufunc(a, *args, out=a) for a flat array, its halves on two threads where it is large:
    numpy's own ufunc (its bits: exp, tanh, log are elementwise), which releases the GIL."""
    threads = min(get_num_threads(), 2)
    if threads < 2 or a.size < 1 << 18:
        ufunc(a, *args, out=a)
        return a
    pool = _pool.get("ufunc")
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor
        pool = _pool["ufunc"] = ThreadPoolExecutor(1, thread_name_prefix="gpuad-ufunc")
    half = a.size // 2
    other = pool.submit(ufunc, a[half:], *args, out=a[half:])
    ufunc(a[:half], *args, out=a[:half])
    other.result()
    return a


def sum_leading(a, axis):
    """a.sum(axis) over leading axes (0, or 0..k-1: a bias gradient) of a C-contiguous
    float array by the column kernel (numpy's bits: each column added row after row from
    0), or None where it does not apply."""
    if type(a) is not np.ndarray or a.size < MIN_SIZE or a.ndim < 2 or a.dtype.kind != "f" \
            or a.dtype.itemsize not in (4, 8) or not a.flags.c_contiguous:
        return None                           # (cheapest first: this runs on every sum with an axis)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis) if isinstance(axis, tuple) else None
    if axes is None or not axes:
        return None
    axes = tuple(sorted(int(x) % a.ndim for x in axes))
    k = len(axes)
    if k >= a.ndim or axes != tuple(range(k)):
        return None
    m = module()
    if m is None:
        return None
    rest = a.shape[k:]
    cols = int(np.prod(rest))
    out = np.empty(cols, a.dtype)
    run = m.column_sum if a.size >= PARALLEL_MIN else m.column_sum_serial
    run(a.reshape(-1, cols), out, a.dtype.type(0))
    return out.reshape(rest)


def layer_norm(x, weight, bias, eps):
    """Layer norm over x's last axis with the generic code's bits: (y, mean, rstd), the
    statistics with keepdims, or None where the kernel does not apply (float32 or
    float64 C-contiguous x of MIN_SIZE+ elements, weight and bias of x's dtype or None)."""
    if type(x) is not np.ndarray or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous \
            or x.ndim < 1 or x.size < MIN_SIZE or x.shape[-1] == 0:
        return None
    n = x.shape[-1]
    for p in (weight, bias):
        if p is not None and (type(p) is not np.ndarray or p.dtype != x.dtype or p.shape != (n,)
                              or not p.flags.c_contiguous):
            return None
    m = module()
    if m is None:
        return None
    t = x.dtype.type
    x2 = x.reshape(-1, n)
    y = host_pool.empty(x.shape, x.dtype)
    mean = np.empty(x2.shape[0], x.dtype)
    rstd = np.empty(x2.shape[0], x.dtype)
    dummy = x2[0]
    m.layer_norm_rows(x2, weight if weight is not None else dummy, bias if bias is not None else dummy,
                      weight is not None, bias is not None, t(eps), t(0), t(1), t(n), y.reshape(-1, n), mean, rstd)
    keep = x.shape[:-1] + (1,)
    return y, mean.reshape(keep), rstd.reshape(keep)


def gelu(x, table):
    """Exact GELU of a C-contiguous float32 array in one pass (numpy's bits), or None."""
    m = module() if _dense32(x) else None
    if m is None:
        return None
    (c0, c1, c2, c3), last = table
    out = host_pool.empty(x.shape, np.float32)
    m.gelu32(x.reshape(-1), out.reshape(-1), c0, c1, c2, c3, np.float32(last))
    return out


def gelu_grad(x, g, table, donate=False):
    """g * GELU'(x) (numpy's bits: its own exp runs between two kernel passes), into g
    when donated; None where the kernels do not apply."""
    if g.dtype != np.float32 or g.shape != x.shape:
        return None
    gstep = 1
    if not g.flags.c_contiguous:
        if g.size and not any(g.strides):
            g, gstep, donate = g.reshape(-1)[:1], 0, False    # one number broadcast (sum's gradient)
        else:
            g, donate = np.ascontiguousarray(g), True         # another view: one pass to copy it
    m = module() if _dense32(x) else None
    if m is None:
        return None
    (c0, c1, c2, c3), last = table
    t = host_pool.empty(x.shape, np.float32)      # (pooled: fresh pages cost faults, ~1 ms per 4 MB)
    xf, tf = x.reshape(-1), t.reshape(-1)
    m.gelu_grad32_a(xf, tf)
    parallel_ufunc(np.exp, tf)
    out = g if donate else t
    m.gelu_grad32_b(xf, tf, g.reshape(-1), gstep, out.reshape(-1), c0, c1, c2, c3, np.float32(last))
    return out


def adam(w, g, m, v, b1, b2, step_size, sqrt_c, eps):
    """Adam's update of w, m and v in place in one pass (gpuad.optim.Adam's operations in its
    order: numpy's bits), or False where the kernel does not apply: host arrays of one
    float dtype, C-contiguous, MIN_SIZE+ elements. step_size and sqrt_c: the bias
    corrections, already in w's dtype."""
    arrays = (w, g, m, v)
    if any(type(a) is not np.ndarray for a in arrays) or w.dtype not in (np.float32, np.float64) \
            or w.size < MIN_SIZE or any(a.dtype != w.dtype or a.shape != w.shape or not a.flags.c_contiguous
                                        for a in arrays):
        return False
    mod = module()
    if mod is None:
        return False
    t = w.dtype.type
    # b1, 1 - b1, ... are Python floats: numpy rounds them to the arrays' dtype (weak scalars)
    mod.adam_step(w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), t(b1), t(1 - b1), t(b2), t(1 - b2),
                  t(step_size), t(sqrt_c), t(eps))
    return True


def set_num_threads(n):
    """The threads the CPU kernels use and, where threadpoolctl is installed, BLAS's
    (numpy's OpenBLAS): at most the cores, as torch.set_num_threads.

    >>> import gpuad
    >>> gpuad.set_num_threads(1); gpuad.get_num_threads()
    1
    >>> gpuad.set_num_threads(None)          # back to every core
    """
    cores = os.cpu_count() or 1
    n = cores if n is None else int(n)
    if n < 1:
        raise ValueError(f"gpuad.set_num_threads: need at least 1 thread, got {n}")
    providers.set_cpu_kernel_threads(min(n, cores))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(min(n, cores), user_api="blas")
    except ImportError:
        pass


def get_num_threads():
    return providers.cpu_kernel_threads() or (os.cpu_count() or 1)

