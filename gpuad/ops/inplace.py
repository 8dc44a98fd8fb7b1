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
from .composite import astype, broadcast_to, getitem, reshape, setitem, transpose

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
        adopt_views(t)


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
        result = astype(result, t.dtype)       # in place keeps t's dtype, as in torch
    node = result._node
    if node is not None and node.saved:
        # the op may have saved t's old values (mul_ saves them for the other input's
        # gradient): keep a copy of those, since the buffer is about to change
        mine = id(versions.buffer_owner(t.data))
        node.saved = tuple(a.copy() if hasattr(a, "base") and not isinstance(a, np.generic)
                           and id(versions.buffer_owner(a)) == mine else a for a in node.saved)
    # t may view another tensor's buffer: its bases move onto nodes that see this write
    # (computed now, while they still hold the old values), and their other views follow
    moved = rebase(t, result)
    _xp(t.data, result.data).copyto(t.data, result.data)
    mark_mutated(t, name)
    t._node = node
    settle(t, moved)
    return t


def binary_(t, fn, other, name):
    """t <fn>= other, in place: `fn` is the public function of a binary primitive (add,
    subtract, multiply, divide), named as numpy's ufunc."""
    if not writes(t, name, other):
        od = other.data if isinstance(other, Tensor) else other
        getattr(_xp(t.data, od), fn.__name__)(t.data, od, out=t.data)
        mark_mutated(t, name)
        return t
    return write_back(t, fn(t, other), name)


def assign_(t, value, name, index=None):
    """t[index] = value (index None: all of t), recorded when anything requires grad."""
    if not writes(t, name, value):
        vd = value.data if isinstance(value, Tensor) else value
        traced = getattr(vd, "_xp", None)
        if index is None:
            _xp(t.data, vd).copyto(t.data, vd, casting="unsafe")
        elif traced is not None and getattr(t.data, "_xp", None) is None:
            # a traced value into a constant's numpy buffer (gpuad.compile, jvp), which
            # cannot hold it: the tensor takes the traced result, and its views follow
            t.data = traced.setitem(t.data, index, vd)
            adopt_views(t)
        else:
            t.data[index] = vd
        mark_mutated(t, name)
        return t
    if index is None:
        index = Ellipsis
    return write_back(t, setitem(t, index, value), name)


# --- writes through views (the record is ops/views.py) -------------------------------

_REMAKE = {"getitem": getitem, "reshape": reshape, "transpose": transpose, "broadcast_to": broadcast_to}


def _derive(base, how):
    name, arg = how
    return _REMAKE[name](base, arg)


def _undo(base, how, value):
    """base with `value` written where its view `how` looks: recorded, out of place."""
    name, arg = how
    if name == "getitem":
        return setitem(base, arg, value)
    if name == "reshape":
        return reshape(value, tuple(base.shape))
    if name == "transpose":
        return transpose(value, tuple(int(i) for i in np.argsort(arg)))
    raise RuntimeError(f"gpuad: an in-place write into a {name} view (of shape {tuple(value.shape)}) "
                       f"would write several elements into one place; write into a copy (.clone())")


def rebase(t, result):
    """Before `result`'s values are copied into view t: move t's bases onto nodes that
    include the write (each base = its old value with the view's part replaced).
    Returns the roots whose other views must be derived again (after the copy)."""
    value = result
    moved = []
    for view, base, how in views.chain(t):
        if base._node is None and value._node is None:
            break                       # nothing records: the buffer write is all there is
        value = _undo(base, how, value)
        moved.append((base, value._node))
    return moved


def settle(t, moved):
    """After the copy: the bases take their new nodes, and every live view of them
    other than t is derived again, so its gradient flows through the write too."""
    for base, node in moved:
        base._node = node
    roots = [b for b, _ in moved] or [t]
    for root in roots[-1:]:
        _refresh(root, skip=t)


def _refresh(base, skip):
    kids = views.views_of(id(base))
    if not kids:
        return
    kids[:] = [r for r in kids if r() is not None]
    for ref in list(kids):
        v = ref()
        if v is None:
            continue
        if v is not skip:
            entry = views.how_made(v)
            if entry is not None and base._node is not None:
                fresh = _derive(base, entry[2])
                v._node = fresh._node
        _refresh(v, skip)


def adopt_views(t):
    """t's data was replaced by a traced value (gpuad.compile): its views' data follow."""
    kids = views.views_of(id(t))
    for ref in list(kids or ()):
        v = ref()
        entry = views.how_made(v) if v is not None else None
        if entry is not None:
            v.data = _derive(t, entry[2]).data
            adopt_views(v)
