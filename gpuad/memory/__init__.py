"""gpuad.memory: what is live, what peaked, what moved, and what backward will need.

>>> import gpuad, numpy as np
>>> w = gpuad.tensor(np.ones((256, 256), np.float32), requires_grad=True)
>>> with gpuad.memory.track() as m:
...     loss = (gpuad.tanh(w) * 2).sum()
...     predicted = gpuad.memory.predict_backward_peak(loss)
...     loss.backward()
>>> s = m.stats()
>>> s["allocations"] > 0 and s["bytes_written"] > 0
True
>>> abs(predicted - m.peak_bytes_absolute) <= 0.02 * predicted
True
"""
from .accounting import accountant, owner_of
from .pool import host_pool
from .regions import disable, empty_cache, enable, is_enabled, reset_peak, stats, timeline, track

__all__ = ["stats", "reset_peak", "track", "timeline", "enable", "disable", "is_enabled", "empty_cache",
           "predict_backward_peak", "plan_backward", "host_pool", "accountant", "owner_of"]


def __getattr__(name):
    # The planner is the engine's walk run on sizes (gpuad/engine/plan.py), floors above
    # accounting: it is looked up on first use, so that loading the accountant (which
    # every layer does) loads no engine.
    if name in ("plan_backward", "predict_backward_peak"):
        from ..engine import plan
        return getattr(plan, name)
    raise AttributeError(f"module 'gpuad.memory' has no attribute {name!r}")


