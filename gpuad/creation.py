"""Tensor factories: zeros, ones, full, arange, linspace, eye, randn, rand, *_like.

Shapes are given as numpy does (a tuple) or as PyTorch does (separate ints).
Floats default to float32.

>>> import gpuad
>>> gpuad.zeros(2, 3).shape, gpuad.ones((2,)).dtype
((2, 3), dtype('float32'))
"""
import numpy as np

from .backends import namespace_of, refuse_any
from .backends.devices import on_device
from .dtypes import as_dtype, default_float
from .random import default_generator
from .tensor import Tensor, _counted


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def _make(arr, requires_grad, device):
    t = Tensor._from(_counted(on_device(arr, device), "creation"))
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


def _device(t, device):
    """A *_like factory's device: the one named, else its model's (as torch)."""
    if device is not None:
        return device
    return t.device if isinstance(t, Tensor) else "cpu"


def zeros_like(t, dtype=None, requires_grad=False, device=None):
    return zeros(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad, device=_device(t, device))


def ones_like(t, dtype=None, requires_grad=False, device=None):
    return ones(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad, device=_device(t, device))


def full_like(t, fill_value, dtype=None, requires_grad=False, device=None):
    return full(t.shape, fill_value, dtype=dtype or t.dtype, requires_grad=requires_grad, device=_device(t, device))


def arange(start, stop=None, step=1, dtype=None, requires_grad=False, device=None):
    arr = np.arange(start, stop, step) if stop is not None else np.arange(start)
    if dtype is not None:
        arr = arr.astype(as_dtype(dtype))
    elif arr.dtype == np.float64:
        arr = arr.astype(default_float)
    return _make(arr, requires_grad, device)


def linspace(start, stop, num, dtype=None, requires_grad=False, device=None):
    return _make(np.linspace(start, stop, num, dtype=as_dtype(dtype) or default_float), requires_grad, device)


def eye(n, m=None, dtype=None, requires_grad=False, device=None):
    return _make(np.eye(n, m, dtype=as_dtype(dtype) or default_float), requires_grad, device)


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


def randint(*args, size=None, generator=None, dtype=None, device=None, low=None, high=None):
    """Integers in [low, high) (low 0 when omitted), as torch.randint(low, high, size) or
    torch.randint(high, size).

    >>> import gpuad
    >>> _ = gpuad.manual_seed(0); x = gpuad.randint(3, 7, (2, 3))
    >>> x.shape, x.dtype, bool(((x >= 3) & (x < 7)).all())
    ((2, 3), dtype('int64'), True)
    """
    args = list(args)
    if size is None and args and isinstance(args[-1], (tuple, list)):
        size = args.pop()
    if len(args) == 2:
        low, high = args
    elif len(args) == 1:
        low, high = (0 if low is None else low), args[0]
    elif high is None:
        raise TypeError("gpuad.randint: give high (and low) and a size, as torch.randint(low, high, size)")
    if low is None:
        low = 0
    if size is None:
        raise TypeError("gpuad.randint: size is required")
    rng = (generator or default_generator).rng
    arr = rng.integers(low, high, size=tuple(size), dtype=np.int64)
    return _make(arr.astype(as_dtype(dtype)) if dtype is not None else arr, False, device)


def randn_like(t, dtype=None, generator=None, device=None):
    return randn(t.shape, dtype=dtype or t.dtype, generator=generator, device=_device(t, device))


def rand_like(t, dtype=None, generator=None, device=None):
    return rand(t.shape, dtype=dtype or t.dtype, generator=generator, device=_device(t, device))


def multinomial(input, num_samples, replacement=False, generator=None):  # noqa: A002
    """Draw num_samples category indices per row of `input` (non-negative weights), with
    or without replacement, from gpuad's generator (as torch.multinomial), on the
    weights' device. With replacement, numpy's inverse-CDF rule (one uniform draw per
    sample); without, the exponential race (Efraimidis-Spirakis: the smallest
    -log(u) / w, one uniform draw per category). Both are array code, so a compiled step
    traces them.

    >>> import gpuad
    >>> _ = gpuad.manual_seed(0)
    >>> gpuad.multinomial(gpuad.tensor([0.0, 1.0, 0.0]), 2, replacement=True).tolist()
    [1, 1]
    >>> sorted(gpuad.multinomial(gpuad.tensor([0.0, 1.0, 3.0]), 2).tolist())
    [1, 2]
    """
    w = input.data if isinstance(input, Tensor) else np.asarray(input)
    if w.ndim not in (1, 2):
        raise ValueError(f"gpuad.multinomial: input must be 1-D or 2-D, got shape {tuple(w.shape)}")
    xp = namespace_of(w)
    n = w.shape[-1]
    rows = xp.reshape(w, (-1, n)).astype(np.float64)
    total = xp.sum(rows, axis=1, keepdims=True)
    refuse_any(xp.logical_or(xp.any(xp.logical_or(rows < 0, xp.logical_not(xp.isfinite(rows))), axis=1),
                             total[:, 0] <= 0),
               ValueError("gpuad.multinomial: weights must be finite, non-negative, with a positive sum per row"))
    if not replacement:
        refuse_any(xp.sum(rows > 0, axis=1) < num_samples,
                   ValueError(f"gpuad.multinomial: cannot draw {num_samples} samples without replacement from "
                              f"rows with fewer nonzero weights"))
    rng = (generator or default_generator).rng
    if replacement:
        cdf = xp.cumsum(rows, axis=1)
        cdf = cdf / cdf[:, -1:]
        u = _on(xp, rng.random((rows.shape[0], num_samples)))
        # searchsorted(cdf, u, side="right") per row: how many of the row's cdf values are <= u
        out = xp.sum(cdf[:, None, :] <= u[:, :, None], axis=2)
        out = xp.minimum(out, n - 1)
    else:
        u = _on(xp, rng.random(rows.shape))
        with np.errstate(divide="ignore"):
            keys = -xp.log(u) / rows                     # zero weight: +inf, drawn last (never, as checked)
        out = xp.argsort(keys, axis=1, kind="stable")[:, :num_samples]
    out = xp.reshape(out.astype(np.int64), tuple(w.shape[:-1]) + (num_samples,))
    return Tensor._from(out)


def _on(xp, a):
    """A host draw on xp's device (a traced draw is already where the trace is)."""
    return a if getattr(a, "_xp", None) is not None or xp.name == "numpy" else xp.asarray(a)


def from_dlpack(ext):
    """A tensor sharing the memory of any DLPack exporter (a torch tensor, a numpy or CuPy
    array), with no copy; CPU data becomes a numpy array, GPU data a CuPy array."""
    device_type = ext.__dlpack_device__()[0] if hasattr(ext, "__dlpack_device__") else 1
    if device_type == 1:                               # kDLCPU
        return Tensor._from(np.from_dlpack(ext))
    import cupy
    return Tensor._from(cupy.from_dlpack(ext))


def from_numpy(array):
    """Share a numpy array's memory (no copy)."""
    return Tensor._from(np.asarray(array))
