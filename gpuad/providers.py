"""Kernel providers: which kernels run the fused ops, "triton", "cupy", or "numpy" (the generic xp code).

A provider registers its kernels per primitive
(`primitive.register_kernel("triton", forward, backward)`, see
gpuad/backends/fused_kernels.py); apply() picks them by the arrays' device
and the provider chosen here, and op bodies hold only the generic xp code.

On a CUDA array the default is Triton when it imports, else CuPy's own
kernels. CPU arrays run the generic numpy code, unless Triton is selected
and TRITON_INTERPRET=1 is set: then the Triton kernels run in Triton's
interpreter on the numpy data (that is how CI checks them without a GPU).

Select with gpuad.set_kernels(name) or the GPUAD_KERNELS variable.

>>> import gpuad
>>> gpuad.set_kernels("numpy"); gpuad.get_kernels()
'numpy'
>>> gpuad.set_kernels(None)   # back to the default
"""
import os
import warnings

VALID = ("triton", "cupy", "numpy")

_choice = None          # None: the default for each device
_providers = {}


def set_kernels(name):
    """Choose the kernel provider: "triton", "cupy", "numpy", or None for the default."""
    global _choice
    if name is not None and name not in VALID:
        raise ValueError(f"gpuad.set_kernels: unknown provider {name!r}; choose one of {VALID} (or None)")
    _choice = name


def get_kernels():
    """The provider chosen by set_kernels or GPUAD_KERNELS, or 'default'."""
    return _choice or os.environ.get("GPUAD_KERNELS") or "default"


def _interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


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
        return "triton" if get_kernels() == "triton" and _interpreting() else None
    if name == "cupy":
        choice = get_kernels()
        if choice == "numpy":
            return None
        if choice == "cupy" or (choice == "default" and not triton_available()):
            return "cupy"
        return "triton"
    return None                      # tensor_ns (create_graph), abstract_ns: always the generic code


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
    import gpuad
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(gpuad.__file__))), "kernels")
    spec = importlib.util.spec_from_file_location("gpuad.kernels", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpuad.kernels"] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module(f"gpuad.kernels.{name}")


def get(name):
    """The host side of provider `name`, built on first use (imports Triton or CuPy then)."""
    p = _providers.get(name)
    if p is None:
        if name == "triton":
            from .backends.triton_backend import TritonKernels
            p = TritonKernels(interpret=_interpreting())
        else:
            from .backends.cupy_backend import CupyKernels
            p = CupyKernels()
        _providers[name] = p
    return p


_warned = set()


def fallback(provider, op, reason):
    """Say once per (provider, op, reason) that the generic path runs instead: never a wrong answer."""
    key = (provider, op, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"gpuad: {provider} kernels do not handle {op} here ({reason}); "
                      f"running the generic code instead", RuntimeWarning, stacklevel=3)
