"""Environment flags: every variable gpuad reads, read here and nowhere else.

Each is read when it is used, not at import, so a test (or a user) may set it
at run time; reading one costs a dict lookup, and none is read on an op's hot
path.

    GPUAD_ACCOUNTING=1    byte accounting on from import (gpuad.memory.enable())
    GPUAD_NO_PLANNER=1    backward keeps every saved value and gradient to the end
    GPUAD_DEBUG=1         backward NaN-fills each buffer the moment it is released
    GPUAD_KERNELS=name    the kernel provider: triton, cupy, cpu or numpy
    TRITON_INTERPRET=1    Triton kernels run in Triton's interpreter on numpy arrays
    GPUAD_HOST_POOL=0     the host pool off: np.empty for every buffer
    GPUAD_CACHE_DIR=dir   where generated Triton kernels are written (and Numba's, under cpu/)
    GPUAD_CPU_KERNELS=numpy  the Numba CPU kernels off: numpy's code runs
    GPUAD_DIST_TIMEOUT=s  seconds a collective may wait before it fails

>>> import os
>>> from gpuad import config
>>> os.environ["GPUAD_NO_PLANNER"] = "1"; config.no_planner()
True
>>> del os.environ["GPUAD_NO_PLANNER"]; config.no_planner()
False
"""
import os


def _on(name):
    return os.environ.get(name) == "1"


def accounting_at_import():
    return _on("GPUAD_ACCOUNTING")


def no_planner():
    """GPUAD_NO_PLANNER=1: keep every saved value and gradient until backward ends."""
    return _on("GPUAD_NO_PLANNER")


def debug_poison():
    """GPUAD_DEBUG=1: NaN-fill released buffers, so a read after release shows."""
    return _on("GPUAD_DEBUG")


def kernels():
    """GPUAD_KERNELS, or None."""
    return os.environ.get("GPUAD_KERNELS") or None


def triton_interpret():
    return _on("TRITON_INTERPRET")


def host_pool_enabled():
    return os.environ.get("GPUAD_HOST_POOL", "1") != "0"


def cache_dir():
    """Where generated Triton kernels are written (Triton's JIT reads a kernel's file)."""
    return os.environ.get("GPUAD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gpuad", "triton")


def cpu_kernels():
    """GPUAD_CPU_KERNELS: "numpy" turns the Numba kernels off; None (the default) uses them."""
    return os.environ.get("GPUAD_CPU_KERNELS") or None


def cpu_cache_dir():
    """Where Numba caches the compiled CPU kernels."""
    base = os.environ.get("GPUAD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gpuad")
    return os.path.join(base, "cpu")


def any_set(names):
    """Whether the user set any of these variables (thread counts, say)."""
    return any(n in os.environ for n in names)


def dist_timeout(default):
    return float(os.environ.get("GPUAD_DIST_TIMEOUT", default))
