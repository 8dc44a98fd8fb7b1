"""Mixed precision, as torch.amp: autocast regions choose each op's dtype by torch's
lists (gpuad/precision.py); GradScaler keeps float16 gradients from underflowing.

autocast.py      autocast(device_type, dtype, enabled): a context manager and decorator
grad_scaler.py   GradScaler: dynamic loss scaling, unscale_, a step skipped on inf/NaN

>>> import gpuad
>>> with gpuad.amp.autocast("cpu"):
...     y = gpuad.ones(2, 2, device="cpu") @ gpuad.ones(2, 2, device="cpu")
>>> str(y.dtype)
'bfloat16'
"""
from .autocast import autocast, is_autocast_enabled, get_autocast_dtype
from .grad_scaler import GradScaler

__all__ = ["autocast", "GradScaler", "is_autocast_enabled", "get_autocast_dtype"]
