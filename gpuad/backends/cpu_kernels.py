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


def parallel_ufunc(ufunc, a, *args, out=None):
    """ufunc(a, *args, out=out) (out=None: in place) for flat arrays, their halves on two
    threads where they are large: numpy's own ufunc (its bits: exp, tanh, log are
    elementwise), which releases the GIL. args: numbers (a power's exponent)."""
    out = a if out is None else out
    threads = min(get_num_threads(), 2)
    if threads < 2 or a.size < 1 << 18:
        ufunc(a, *args, out=out)
        return out
    pool = _pool.get("ufunc")
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor
        pool = _pool["ufunc"] = ThreadPoolExecutor(1, thread_name_prefix="gpuad-ufunc")
    half = a.size // 2
    other = pool.submit(ufunc, a[half:], *args, out=out[half:])
    ufunc(a[:half], *args, out=out[:half])
    other.result()
    return out


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


def _rows(x, *same):
    """x as (rows, n) when the row kernels take it (a C-contiguous float32/float64 host
    array of MIN_SIZE+ elements, and `same` arrays of its shape and dtype, C-contiguous),
    else None."""
    if type(x) is not np.ndarray or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous \
            or x.ndim < 1 or x.size < MIN_SIZE or x.shape[-1] == 0:
        return None
    if any(type(a) is not np.ndarray or a.dtype != x.dtype or a.shape != x.shape or not a.flags.c_contiguous
           for a in same):
        return None
    return x.reshape(-1, x.shape[-1])


def _vector(p, x):
    """A weight or bias the row kernels take: None, or (n,) of x's dtype, C-contiguous."""
    return p is None or (type(p) is np.ndarray and p.dtype == x.dtype and p.shape == (x.shape[-1],)
                         and p.flags.c_contiguous)


def rms_norm(x, weight, eps):
    """RMS norm over x's last axis with the generic code's bits: (y, rstd), rstd with
    keepdims, or None where the kernel does not apply."""
    x2 = _rows(x)
    if x2 is None or not _vector(weight, x) or module() is None:
        return None
    t, n = x.dtype.type, x.shape[-1]
    y = host_pool.empty(x.shape, x.dtype)
    rstd = np.empty(x2.shape[0], x.dtype)
    module().rms_norm_rows(x2, weight if weight is not None else x2[0], weight is not None, t(eps), t(0), t(1),
                           t(n), y.reshape(x2.shape), rstd)
    return y, rstd.reshape(x.shape[:-1] + (1,))


def norm_grad(x, g, w, mean, rstd, needs):
    """The gradients (dx, dw[, db]) of layer norm (mean given) or rms norm (mean None) over
    the last axis with the generic VJP's bits: dx in one pass over x and g (which also
    writes g x_hat when dw is needed), dw and db by the column kernel; None where the
    kernels do not apply (or dx is not needed: the generic code is as good then)."""
    x2 = _rows(x, g)
    # (a 1-d x: the generic code's weight gradient is g x_hat itself, no sum)
    if x2 is None or x.ndim < 2 or not needs[0] or not _vector(w, x) or module() is None:
        return None
    stats = [s for s in (mean, rstd) if s is not None]
    if any(type(s) is not np.ndarray or s.dtype != x.dtype or s.size != x2.shape[0] for s in stats):
        return None
    t, n = x.dtype.type, x.shape[-1]
    dx = host_pool.empty(x.shape, x.dtype)
    nw = len(needs) > 1 and needs[1]
    gx = host_pool.empty(x2.shape, x.dtype) if nw else x2[:1]
    r = np.ascontiguousarray(rstd).reshape(-1)
    m = np.ascontiguousarray(mean).reshape(-1) if mean is not None else r
    g2 = g.reshape(x2.shape)
    module().norm_grad_rows(x2, g2, w if w is not None else x2[0], m, r, w is not None, mean is None, nw, t(0),
                            t(n), dx.reshape(x2.shape), gx)
    dw = _column_sum(gx) if nw else None
    if mean is None:
        return dx, dw
    return dx, dw, _column_sum(g2) if len(needs) > 2 and needs[2] else None


def _column_sum(a2):
    """a2.sum(axis=0) of a (rows, n) array: the column kernel (numpy's bits), or numpy's own."""
    s = sum_leading(a2, 0)
    return s if s is not None else a2.sum(axis=0)


def _last_rows(x, axis, *same):
    """x as (rows, n) for the softmax kernels: axis the last one, PARALLEL_MIN+ elements
    (smaller arrays: numpy's passes cost less than waking the pool), else None."""
    if axis not in (-1, getattr(x, "ndim", 0) - 1) or getattr(x, "size", 0) < PARALLEL_MIN:
        return None
    x2 = _rows(x, *same)
    return x2 if x2 is not None and module() is not None else None


def _shifted_exp(x2, m, keep=None):
    """exp(x - m[r]) per row into a pooled array (numpy's exp between the kernel's
    passes); keep: also x - m itself, into that array."""
    e = host_pool.empty(x2.shape, x2.dtype)
    module().rows_minus(x2, m, keep if keep is not None else e, e, keep is not None)
    parallel_ufunc(np.exp, e.reshape(-1))
    return e


def softmax(x, axis):
    """softmax over the last axis with the generic code's bits (numpy's max and exp, the
    kernels' subtract, pairwise sums and divide on every thread), or None."""
    x2 = _last_rows(x, axis)
    if x2 is None:
        return None
    e = _shifted_exp(x2, np.max(x2, axis=1))
    module().rows_normalize(e, x.dtype.type(0))
    return e.reshape(x.shape)


def softmax_grad(g, y, axis):
    """(g - sum(g y)) y over the last axis in one pass (the generic VJP's bits), or None."""
    y2 = _last_rows(y, axis, g)
    if y2 is None:
        return None
    dx = host_pool.empty(y.shape, y.dtype)
    module().softmax_grad_rows(g.reshape(y2.shape), y2, y.dtype.type(0), dx.reshape(y2.shape))
    return dx


def log_softmax(x, axis):
    """x - max - log(sum(exp(x - max))) over the last axis (the generic code's bits), or None."""
    x2 = _last_rows(x, axis)
    if x2 is None:
        return None
    out = host_pool.empty(x2.shape, x.dtype)
    e = _shifted_exp(x2, np.max(x2, axis=1), keep=out)
    s = np.empty(x2.shape[0], x.dtype)
    module().row_sums(e, x.dtype.type(0), s)
    lse = np.log(s)
    module().rows_minus(out, lse, out, out, False)
    return out.reshape(x.shape)


def log_softmax_grad(g, y, axis):
    """g - exp(y) sum(g) over the last axis (the generic VJP's bits), or None."""
    y2 = _last_rows(y, axis, g)
    if y2 is None:
        return None
    p = host_pool.empty(y2.shape, y.dtype)
    parallel_ufunc(np.exp, y2.reshape(-1), out=p.reshape(-1))
    module().log_softmax_grad_rows(g.reshape(y2.shape), p, y.dtype.type(0))
    return p.reshape(y.shape)


def cross_entropy_rows(logits, target):
    """(per-row losses, the rows' log-sum-exp (N, 1)) of (N, C) logits, the generic code's
    bits, or None."""
    x2 = _last_rows(logits, -1)
    if x2 is None or logits.ndim != 2 or type(target) is not np.ndarray or target.shape != (logits.shape[0],) \
            or target.dtype.kind not in "iu":
        return None
    m = np.max(x2, axis=1)
    e = _shifted_exp(x2, m)
    s = np.empty(x2.shape[0], x2.dtype)
    module().row_sums(e, x2.dtype.type(0), s)
    s = np.log(s)
    picked = x2[np.arange(x2.shape[0]), target] - m       # (raises as numpy's gather does)
    return s - picked, (s + m).reshape(-1, 1)


def cross_entropy_grad(logits, target, lse, scale):
    """(exp(logits - lse) - onehot(target)) * scale, the generic VJP's bits, or None.
    scale: the upstream gradient per row (N, 1) or one number, in the logits' dtype."""
    x2 = _last_rows(logits, -1)
    if x2 is None or logits.ndim != 2 or type(target) is not np.ndarray or target.dtype.kind not in "iu" \
            or target.shape != (logits.shape[0],) or type(scale) is not np.ndarray or scale.dtype != logits.dtype \
            or scale.size not in (1, logits.shape[0]) or type(lse) is not np.ndarray or lse.dtype != logits.dtype:
        return None
    p = _shifted_exp(x2, np.ascontiguousarray(lse).reshape(-1))
    t = x2.dtype.type
    module().xent_grad_rows(p, target, np.ascontiguousarray(scale).reshape(-1), scale.size > 1 or scale.ndim == 2,
                            t(0), t(1))
    return p


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


def adam_applies(w, g, m, v):
    """Whether adam() takes these arrays: host arrays of one float dtype and shape,
    C-contiguous, MIN_SIZE+ elements, with the kernels on."""
    arrays = (w, g, m, v)
    if any(type(a) is not np.ndarray for a in arrays) or w.dtype not in (np.float32, np.float64) \
            or w.size < MIN_SIZE or any(a.dtype != w.dtype or a.shape != w.shape or not a.flags.c_contiguous
                                        for a in arrays):
        return False
    return module() is not None


def adam(w, g, m, v, b1, b2, step_size, sqrt_c, eps):
    """Adam's update of w, m and v in place in one pass (gpuad.optim.Adam's operations in its
    order: numpy's bits), on arrays adam_applies() took. step_size and sqrt_c: the bias
    corrections, already in w's dtype."""
    t = w.dtype.type
    # b1, 1 - b1, ... are Python floats: numpy rounds them to the arrays' dtype (weak scalars)
    module().adam_step(w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), t(b1), t(1 - b1), t(b2),
                       t(1 - b2), t(step_size), t(sqrt_c), t(eps))


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

