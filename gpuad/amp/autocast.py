"""autocast: a region where matmuls, linears, convolutions and attention run in a low
dtype and the ops torch keeps in float32 stay there (torch.autocast's semantics and
per-device lists, gpuad/precision.py).

Parameters stay float32: the casts are recorded ops, so their gradients arrive in
float32. Regions nest and restore what was active; one for "cpu" leaves ops on
"cuda" arrays alone, and the reverse. gpuad.compile traces the casts like any op,
and a step traced outside a region traces again inside one.

>>> import gpuad
>>> w = gpuad.ones(3, 3, requires_grad=True, device="cpu")
>>> with gpuad.autocast("cpu", dtype="bfloat16"):
...     y = gpuad.tensor([[1.0, 2.0, 3.0]], device="cpu") @ w
...     loss = gpuad.nn.functional.mse_loss(y, gpuad.zeros(1, 3, device="cpu"))
>>> str(y.dtype), str(loss.dtype)
('bfloat16', 'float32')
>>> loss.backward(); str(w.grad.dtype)
'float32'
"""
import functools

import numpy as np

from ..dtypes import as_dtype, bfloat16
from ..precision import AUTOCAST

_DEFAULT = {"cuda": np.dtype(np.float16), "cpu": bfloat16}


def _device_type(device_type):
    kind = str(device_type).split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"gpuad.autocast: device_type must be 'cpu' or 'cuda', got {device_type!r}")
    return kind


class autocast:
    """autocast(device_type, dtype=None, enabled=True, cache_enabled=None): torch.autocast.
    dtype: float16 or bfloat16 (default: float16 on cuda, bfloat16 on the cpu)."""

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        self.device = _device_type(device_type)
        dt = _DEFAULT[self.device] if dtype is None else as_dtype(dtype)
        if dt is None or not (dt == np.float16 or (bfloat16 is not None and dt == bfloat16)):
            raise ValueError(f"gpuad.autocast: dtype must be float16 or bfloat16, got {dtype!r}")
        if enabled and self.device == "cuda" and bfloat16 is not None and dt == bfloat16:
            # torch runs bfloat16 on CUDA; CuPy has no bfloat16 dtype to hold it
            raise NotImplementedError("gpuad.autocast: bfloat16 on cuda is not supported (CuPy has no "
                                      "bfloat16 arrays); use dtype=float16 there (the default)")
        self.dtype, self.enabled = dt, bool(enabled)
        self._prev = []

    def __enter__(self):
        self._prev.append(AUTOCAST.dtype[self.device])
        AUTOCAST.dtype[self.device] = self.dtype if self.enabled else None
        AUTOCAST.active = any(v is not None for v in AUTOCAST.dtype.values())
        return self

    def __exit__(self, *exc):
        AUTOCAST.dtype[self.device] = self._prev.pop()
        AUTOCAST.active = any(v is not None for v in AUTOCAST.dtype.values())
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with autocast(self.device, self.dtype, self.enabled):
                return fn(*args, **kwargs)
        return wrapped


def is_autocast_enabled(device_type="cuda"):
    return AUTOCAST.dtype[_device_type(device_type)] is not None


def get_autocast_dtype(device_type):
    d = _device_type(device_type)
    return AUTOCAST.dtype[d] or _DEFAULT[d]
