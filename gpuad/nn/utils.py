"""gpuad.nn.utils: gradient clipping, as torch.nn.utils.

Both act on the .grad of the parameters in place, never recorded.

>>> import gpuad
>>> w = gpuad.tensor([3.0, 4.0], requires_grad=True)
>>> (w * w).sum().backward()                      # grad [6, 8], norm 10
>>> round(gpuad.nn.utils.clip_grad_norm_([w], 1.0).item(), 4), [round(v, 4) for v in w.grad.tolist()]
(10.0, [0.6, 0.8])
"""
import math

import numpy as np

from ..backends import namespace_of, refuse_any
from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters):
    ps = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p.grad for p in ps if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients so their joint norm is at most max_norm; returns the norm
    before clipping (as torch: scale = min(1, max_norm / (norm + 1e-6))).

    Computed on the gradients' device, with no host read: the norm is a 0-d array
    there (so a compiled step traces it, and a GPU step does not wait for it), except
    with error_if_nonfinite, which must look at it.

    >>> import gpuad
    >>> w = gpuad.tensor([3.0, 4.0], requires_grad=True); (w * w).sum().backward()
    >>> float(gpuad.nn.utils.clip_grad_norm_([w], 1.0)), [round(v, 4) for v in w.grad.tolist()]
    (10.0, [0.6, 0.8])
    """
    grads = [g for g in _grads(parameters) if g.data.size]
    if not grads:
        return Tensor._from(np.zeros((), np.float32))
    xp = namespace_of(grads[0].data)
    norm_type = float(norm_type)
    if norm_type == math.inf:
        total = xp.max(xp.stack([xp.max(xp.abs(g.data)).astype(np.float64) for g in grads]))
    else:
        total = xp.sum(xp.stack([xp.sum(xp.abs(g.data.astype(np.float64)) ** norm_type) for g in grads]))
        total = total ** (1.0 / norm_type)
    if error_if_nonfinite:
        # (under gpuad.compile the replay checks it; a call that finds it runs eagerly, and raises here)
        refuse_any(xp.logical_not(xp.isfinite(total)), RuntimeError(
            "gpuad.nn.utils.clip_grad_norm_: the total norm of the gradients is not finite"
            + ("" if getattr(total, "_xp", None) is not None else f" ({float(total)})")))
    scale = xp.minimum(1.0, xp.divide(float(max_norm), total + 1e-6))
    for g in grads:
        g.data *= scale.astype(g.data.dtype)          # in the gradient's dtype, as a Python float would be
    return Tensor._from(total.astype(grads[0].data.dtype))


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value], in place."""
    for g in _grads(parameters):
        np.clip(g.data, -clip_value, clip_value, out=g.data)
