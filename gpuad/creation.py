"""Tensor factories: zeros, ones, full, arange, linspace, eye, randn, rand, *_like.

Shapes are given as numpy does (a tuple) or as PyTorch does (separate ints).
Floats default to float32.

>>> import gpuad
>>> gpuad.zeros(2, 3).shape, gpuad.ones((2,)).dtype
((2, 3), dtype('float32'))
"""
import numpy as np

from .dtypes import as_dtype, default_float
from .random import default_generator
from .tensor import Tensor, _counted


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def _make(arr, requires_grad, device):
    if device is not None and device != "cpu":
        from .backends.devices import to_device
        arr = to_device(arr, device)
    t = Tensor._from(_counted(arr, "creation"))
    if requires_grad:
        t.requires_grad_(True)
    return t


def zeros(*shape, dtype=None, requires_grad=False, device=None):
    return _make(np.zeros(_shape(shape), dtype=as_dtype(dtype) or default_float), requires_grad, device)


def ones(*shape, dtype=None, requires_grad=False, device=None):
    return _make(np.ones(_shape(shape), dtype=as_dtype(dtype) or default_float), requires_grad, device)


def empty(*shape, dtype=None, requires_grad=False, device=None):
    return _make(np.empty(_shape(shape), dtype=as_dtype(dtype) or default_float), requires_grad, device)


def full(shape, fill_value, dtype=None, requires_grad=False, device=None):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return _make(np.full(shape, fill_value, dtype=as_dtype(dtype) or default_float), requires_grad, device)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return ones(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad=False):
    return full(t.shape, fill_value, dtype=dtype or t.dtype, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, requires_grad=False):
    arr = np.arange(start, stop, step) if stop is not None else np.arange(start)
    if dtype is not None:
        arr = arr.astype(as_dtype(dtype))
    elif arr.dtype == np.float64:
        arr = arr.astype(default_float)
    return _make(arr, requires_grad, None)


def linspace(start, stop, num, dtype=None, requires_grad=False):
    return _make(np.linspace(start, stop, num, dtype=as_dtype(dtype) or default_float), requires_grad, None)


def eye(n, m=None, dtype=None, requires_grad=False):
    return _make(np.eye(n, m, dtype=as_dtype(dtype) or default_float), requires_grad, None)


def randn(*shape, dtype=None, requires_grad=False, generator=None, device=None):
    """Standard normal samples from the (seedable) default generator."""
    rng = (generator or default_generator).rng
    arr = rng.standard_normal(_shape(shape), dtype=np.float64).astype(as_dtype(dtype) or default_float)
    return _make(arr, requires_grad, device)


def rand(*shape, dtype=None, requires_grad=False, generator=None, device=None):
    """Uniform samples in [0, 1) from the (seedable) default generator."""
    rng = (generator or default_generator).rng
    arr = rng.random(_shape(shape), dtype=np.float64).astype(as_dtype(dtype) or default_float)
    return _make(arr, requires_grad, device)


def randint(low, high, shape, generator=None):
    rng = (generator or default_generator).rng
    return _make(rng.integers(low, high, size=tuple(shape), dtype=np.int64), False, None)


def from_numpy(array):
    """Share a numpy array's memory (no copy)."""
    return Tensor._from(np.asarray(array))
