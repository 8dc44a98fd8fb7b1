"""In-place ops (add_, mul_, `+=`, `t[i] = v`, ...) and the check that keeps them honest.

Under no_grad, or on tensors nothing requires grad from, an in-place op writes
into the tensor's buffer and nothing else: `with gpuad.no_grad(): p -= lr * g`
updates the parameter itself (no allocation, read 2N, write N).

Recorded (an input requires grad, outside no_grad), it computes the op out of
place through the primitive, writes the result into the tensor's buffer (so
views of the buffer see it, as in torch), and moves the tensor onto the new
node: the gradient flows through the op. A leaf that requires grad is refused,
as torch refuses it.

Every in-place write marks its buffer (gpuad/engine/versions.py), so backward
raises rather than use a saved value written after it was saved.

>>> import gpuad
>>> w = gpuad.tensor([1.0, 2.0], requires_grad=True)
>>> y = w * 2
>>> y.add_(1)
tensor([3., 5.], grad_fn=add)
>>> y.sum().backward(); w.grad
tensor([2., 2.])
"""
import numpy as np

from ..backends import TRACING, namespace_of, tracing_namespace
from ..engine import versions
from ..graph import is_grad_enabled
from ..tensor import Tensor
from . import views

def mark_mutated(t, what):
    """Record an in-place write into t's buffer (engine/versions.py checks it in backward)."""
    if TRACING and getattr(t.data, "_xp", None) is None:
        _adopt(t)
    versions.mark(t.data, what)


def _adopt(t):
    """gpuad.compile: a Tensor made while tracing from constants (a real numpy array)
    and then written with traced values takes the traced value as its data, and so do
    its views: later numpy reads of the old buffer would see values from before the write."""
    tracer = TRACING[-1].adopt(t.data)
    if tracer is not None:
        t.data = tracer
        views.adopt(t)


def _xp(data, other):
    """The namespace an in-place write runs in: gpuad.compile's when either side is traced
    (a real array written with a traced value is a write the trace records), else the
    buffer's own."""
    return tracing_namespace((data, other)) or namespace_of(data) if TRACING else namespace_of(data)


def writes(t, name, other=None):
    """Whether an in-place op on t must be recorded; refuses a leaf that requires grad."""
    recording = is_grad_enabled() and (t._node is not None or (isinstance(other, Tensor) and other._node is not None))
    views.check_writable(t, name, recording)
    if recording and t._node is not None and t._node.op is None:
        raise RuntimeError(
            f"gpuad.{name}: a leaf tensor that requires grad is used in an in-place operation, which would "
            f"lose what its gradient is taken of. Update parameters inside `with gpuad.no_grad():`, as an "
            f"optimizer step does, or work on a copy (t.clone()).")
    return recording


def write_back(t, result, name):
    """Put a recorded out-of-place result into t: its values into t's buffer, t onto its node."""
    if result.shape != t.shape:
        raise RuntimeError(f"gpuad.{name}: the result has shape {result.shape}, which cannot be written "
                           f"in place into a tensor of shape {t.shape}")
    if result.dtype != t.dtype:
        from . import api
        result = api.astype(result, t.dtype)       # in place keeps t's dtype, as in torch
    node = result._node
    if node is not None and node.saved:
        # the op may have saved t's old values (mul_ saves them for the other input's
        # gradient): keep a copy of those, since the buffer is about to change
        mine = id(versions.buffer_owner(t.data))
        node.saved = tuple(a.copy() if hasattr(a, "base") and not isinstance(a, np.generic)
                           and id(versions.buffer_owner(a)) == mine else a for a in node.saved)
    # t may view another tensor's buffer: its bases move onto nodes that see this write
    # (computed now, while they still hold the old values), and their other views follow
    moved = views.rebase(t, result)
    _xp(t.data, result.data).copyto(t.data, result.data)
    mark_mutated(t, name)
    t._node = node
    views.settle(t, moved)
    return t


def binary_(t, op, other, name):
    """t <op>= other, in place: `op` is the primitive (add, subtract, multiply, divide)."""
    if not writes(t, name, other):
        od = other.data if isinstance(other, Tensor) else other
        getattr(_xp(t.data, od), op.name)(t.data, od, out=t.data)
        mark_mutated(t, name)
        return t
    from .install import function_of
    return write_back(t, function_of(op)(t, other), name)


def assign_(t, value, name, index=None):
    """t[index] = value (index None: all of t), recorded when anything requires grad."""
    from . import api
    if not writes(t, name, value):
        vd = value.data if isinstance(value, Tensor) else value
        traced = getattr(vd, "_xp", None)
        if index is None:
            _xp(t.data, vd).copyto(t.data, vd, casting="unsafe")
        elif traced is not None and getattr(t.data, "_xp", None) is None:
            # a traced value into a constant's numpy buffer (gpuad.compile, jvp), which
            # cannot hold it: the tensor takes the traced result, and its views follow
            t.data = traced.setitem(t.data, index, vd)
            views.adopt(t)
        else:
            t.data[index] = vd
        mark_mutated(t, name)
        return t
    if index is None:
        index = Ellipsis
    return write_back(t, api.setitem(t, index, value), name)
