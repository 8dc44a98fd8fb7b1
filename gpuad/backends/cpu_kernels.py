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
import warnings

import numpy as np

from .. import config

_state = {"module": None, "tried": False, "threads": None}


def module():
    """kernels/cpu_math.py compiled by Numba, or None (not installed, or turned off)."""
    if config.cpu_kernels() == "numpy":
        return None
    if not _state["tried"]:
        _state["tried"] = True
        os.environ.setdefault("NUMBA_CACHE_DIR", config.cpu_cache_dir())
        os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import numba
            from ..providers import load_kernel_module
            _state["module"] = load_kernel_module("cpu_math")
        except ImportError as e:
            warnings.warn(f"gpuad: Numba is not installed ({e}); the CPU kernels are off and numpy's "
                          f"code runs (pip install numba, or set GPUAD_CPU_KERNELS=numpy to silence this)",
                          RuntimeWarning, stacklevel=3)
            return None
        if _state["threads"] is not None:
            numba.set_num_threads(_state["threads"])
    return _state["module"]


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
    out = np.empty(x.shape, np.float32) if out is None else out
    m.erf32(x.reshape(-1), out.reshape(-1), c0, c1, c2, c3, np.float32(last))
    return out


MIN_SIZE = 4096          # elements: below this numpy's passes cost less than a parallel launch


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
    n = min(n, cores)
    _state["threads"] = n
    if _state["module"] is not None:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")
    except ImportError:
        pass


def get_num_threads():
    return _state["threads"] or (os.cpu_count() or 1)

