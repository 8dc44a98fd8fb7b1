"""Kernel providers: which kernels run the fused ops, "triton", "cupy", "cpu" (Numba, on host
arrays), or "numpy" (the generic xp code).

A provider registers its kernels per primitive
(`primitive.register_kernel("triton", forward, backward)`, see
gpuad/ops/fused_kernels.py); apply() picks them by the arrays' device
and the provider chosen here, and op bodies hold only the generic xp code.

On a CUDA array the default is Triton when it imports, else CuPy's own
kernels. CPU arrays run the CPU kernels (gpuad/backends/cpu_kernels.py) where
Numba is installed and GPUAD_CPU_KERNELS is not "numpy", else the generic numpy
code; with Triton selected and TRITON_INTERPRET=1 the Triton kernels run in
Triton's interpreter on the numpy data (that is how CI checks them without a GPU).

Select with gpuad.set_kernels(name) or the GPUAD_KERNELS variable.

>>> import gpuad
>>> gpuad.set_kernels("numpy"); gpuad.get_kernels()
'numpy'
>>> gpuad.set_kernels(None)   # back to the default
"""
import os
import warnings

from . import config

VALID = ("triton", "cupy", "cpu", "numpy")

_choice = None          # None: the default for each device


def set_kernels(name):
    """Choose the kernel provider: "triton", "cupy", "cpu", "numpy", or None for the default."""
    global _choice
    if name is not None and name not in VALID:
        raise ValueError(f"gpuad.set_kernels: unknown provider {name!r}; choose one of {VALID} (or None)")
    _choice = name


def get_kernels():
    """The provider chosen by set_kernels or GPUAD_KERNELS, or 'default'."""
    return _choice or config.kernels() or "default"


def interpreting():
    return config.triton_interpret()


_PRECISIONS = {"highest": "ieee", "high": "tf32", "medium": "tf32"}
_precision = "highest"


def set_float32_matmul_precision(precision):
    """As torch.set_float32_matmul_precision: "highest" (IEEE fp32 FMAs, the default),
    "high" or "medium" (TF32 tensor cores: 10-bit mantissa inputs, fp32 accumulation).
    Both GPU providers follow it: the Triton kernels' input precision, cuBLAS's math mode
    for CuPy's GEMMs. The numpy backend always computes in fp32.

    >>> import gpuad
    >>> gpuad.set_float32_matmul_precision("high"); gpuad.get_float32_matmul_precision()
    'high'
    >>> gpuad.set_float32_matmul_precision("highest")
    """
    global _precision
    if precision not in _PRECISIONS:
        raise ValueError(f"gpuad.set_float32_matmul_precision: precision must be one of "
                         f"{sorted(_PRECISIONS)}, not {precision!r}")
    _precision = precision


def get_float32_matmul_precision():
    return _precision


def triton_input_precision():
    """The input_precision the Triton kernels' fp32 dots use now."""
    return _PRECISIONS[_precision]


def triton_available():
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


def provider_name(xp):
    """The provider whose kernels run on arrays of namespace xp, or None for the generic code."""
    name = xp.name
    if name == "numpy":
        choice = get_kernels()
        if choice == "triton" and interpreting():
            return "triton"
        return "cpu" if choice in ("default", "cpu") and _cpu_kernels_on() else None
    if name == "cupy":
        choice = get_kernels()
        if choice == "numpy":
            return None
        if choice == "cupy" or (choice == "default" and not triton_available()) or not triton_usable():
            return "cupy"
        return "triton"
    if name == "abstract":
        return "abstract"            # the planner: a VJP that cannot run on sizes registers a stand-in
    return None                      # tensor_ns (create_graph): always the generic code


def _cpu_kernels_on():
    return cpu_kernel_module() is not None


_cpu = {"module": None, "tried": False, "threads": None}


def set_cpu_kernel_threads(n):
    """The CPU kernels' thread count: now if Numba is loaded, else when it loads."""
    _cpu["threads"] = n
    if _cpu["module"] is not None:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def cpu_kernel_threads():
    """The thread count set_cpu_kernel_threads last set, or None (every core)."""
    return _cpu["threads"]


def cpu_kernel_module():
    """kernels/cpu_math.py compiled by Numba: the CPU kernels (gpuad/backends/cpu_kernels.py
    runs them), or None where Numba is not installed or GPUAD_CPU_KERNELS=numpy. Numba is
    imported here, on first use, never at `import gpuad`: with OpenMP's passive wait
    unless the user chose one (an idle kernel thread sleeps, leaving the cores to BLAS
    and to other processes) and its cache under GPUAD_CACHE_DIR/cpu."""
    if config.cpu_kernels() == "numpy":
        return None
    if not _cpu["tried"]:
        _cpu["tried"] = True
        os.environ.setdefault("NUMBA_CACHE_DIR", config.cpu_cache_dir())
        os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import numba
            _cpu["module"] = load_kernel_module("cpu_math")
        except ImportError as e:
            warnings.warn(f"gpuad: Numba is not installed ({e}); the CPU kernels are off and numpy's "
                          f"code runs (pip install numba, or set GPUAD_CPU_KERNELS=numpy to silence this)",
                          RuntimeWarning, stacklevel=3)
            return None
        if _cpu["threads"] is not None:
            set_cpu_kernel_threads(_cpu["threads"])
    return _cpu["module"]


_usable = None


def triton_usable():
    """Whether Triton can launch on CuPy's arrays here. Triton's CUDA driver takes its
    stream and device from torch; gpuad points them at CuPy's current stream and
    device instead (so a `with cupy.cuda.Stream():` block is honoured). Where the
    driver cannot be brought up (no torch with CUDA, say), the CuPy kernels run,
    after one warning."""
    global _usable
    if _usable is None:
        try:
            import triton
            import cupy
            follow_cupy(triton.runtime.driver.active, cupy)
            _usable = True
        except Exception as e:                    # noqa: BLE001  (any failure means: not usable)
            warnings.warn(f"gpuad: the Triton driver is not usable here ({type(e).__name__}: {e}); "
                          f"the CuPy kernels run instead", RuntimeWarning, stacklevel=3)
            _usable = False
    return _usable


def follow_cupy(driver, cupy):
    """Make Triton's driver launch on CuPy's current stream and device."""
    driver.get_current_stream = lambda device=None: cupy.cuda.get_current_stream().ptr
    driver.get_current_device = lambda: cupy.cuda.Device().id
    driver.set_current_device = lambda device: cupy.cuda.Device(device).use()
    driver.get_device_capability = lambda device=None: compute_capability(
        cupy.cuda.Device(device if device is not None else cupy.cuda.Device().id).compute_capability)


def compute_capability(cc):
    """(major, minor) from CuPy's compute_capability string: "90" is (9, 0), "100" (10, 0)
    (not the digits one by one, which read "100" as (1, 0, 0)).

    >>> compute_capability("90"), compute_capability("100"), compute_capability("120")
    ((9, 0), (10, 0), (12, 0))
    """
    return divmod(int(cc), 10)


def load_kernel_module(name):
    """gpuad.kernels.<name>: installed by pyproject's package mapping, or, in a bare
    checkout on PYTHONPATH (make gpu-check), loaded from ../kernels under that name."""
    import importlib
    import sys
    try:
        return importlib.import_module(f"gpuad.kernels.{name}")
    except ModuleNotFoundError:
        if "gpuad.kernels" in sys.modules:
            raise
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")   # beside gpuad/
    spec = importlib.util.spec_from_file_location("gpuad.kernels", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpuad.kernels"] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module(f"gpuad.kernels.{name}")


_warned = set()


def fallback(provider, op, reason):
    """Say once per (provider, op, reason) that the generic path runs instead: never a wrong answer."""
    key = (provider, op, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"gpuad: {provider} kernels do not handle {op} here ({reason}); "
                      f"running the generic code instead", RuntimeWarning, stacklevel=3)
