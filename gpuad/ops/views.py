"""Tensors that view another tensor's buffer, and what an in-place write through one does
to the other's gradient (torch's view + in-place semantics, its CopySlices).

This module keeps the record (which tensor views which, and how); writing
through a view, which makes the views again, is in ops/inplace.py.

A reshape, transpose or basic index of a tensor shares its buffer: numpy's view.
A recorded in-place op on such a view changes the base's values too, so the base
must move onto a node that knows it: the base becomes setitem(base, index, new
values) (the inverse reshape or transpose for those), and every other live view
of the base is derived again from that node. Without this the base's gradient
would silently miss the in-place op, as it did before.

What is registered costs a dict entry per view that is made (weakly held: it dies
with the view). Writes through a view of a leaf that requires grad are refused, as
torch refuses them; writes into a broadcast view are refused (several elements
share one place).

>>> import gpuad
>>> a = gpuad.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> y = a * 1.0
>>> y[1:].mul_(2.0)
tensor([4., 6.], grad_fn=multiply)
>>> y.sum().backward(); a.grad.tolist()
[1.0, 2.0, 2.0]
"""
import weakref

import numpy as np

from ..memory.accounting import owner_of

_base = {}          # id(view) -> (weakref to the view, its base Tensor, how: (name, arg))
_views = {}         # id(base) -> [weakrefs to the views made of it], in creation order


def _owner(a):
    if isinstance(a, np.ndarray):
        return owner_of(a)
    while getattr(a, "base", None) is not None:      # CuPy, and gpuad.compile's Tracers
        a = a.base
    return a


def note(out, x, how):
    """Register out as a view of x when their buffers are one (numpy's reshape may copy).
    how: ("getitem", index), ("reshape", shape), ("transpose", perm) or ("broadcast_to", shape)."""
    if getattr(out.data, "base", None) is None or _owner(out.data) is not _owner(x.data):
        return out
    key = id(out)
    _base[key] = (weakref.ref(out, lambda _, k=key: _base.pop(k, None)), x, how)
    kids = _views.get(id(x))
    if kids is None:
        kids = _views[id(x)] = []
        weakref.finalize(x, _views.pop, id(x), None)
    kids.append(weakref.ref(out))
    return out


def base_of(t):
    entry = _base.get(id(t))
    return entry[1] if entry is not None and entry[0]() is t else None


def how_made(v):
    """(weakref to v, its base, how) when v is a registered view, else None."""
    return _base.get(id(v))


def views_of(key):
    """The list of weakrefs to the views made of the tensor with id `key` (or None)."""
    return _views.get(key)


def chain(t):
    """[(view, base, how)] from t up to the tensor that owns the buffer."""
    out = []
    while True:
        entry = _base.get(id(t))
        if entry is None or entry[0]() is not t:
            return out
        out.append((t, entry[1], entry[2]))
        t = entry[1]


def check_writable(t, op_name, grad_enabled):
    """Refuse, as torch does, a recorded in-place op on a view of a leaf that requires grad."""
    links = chain(t)
    if not links or not grad_enabled:
        return
    root = links[-1][1]
    node = root._node
    if node is not None and node.op is None:
        raise RuntimeError(
            f"gpuad.{op_name}: a view of a leaf tensor that requires grad (shape {tuple(root.shape)}) is "
            f"used in an in-place operation, which would lose what the leaf's gradient is taken of. "
            f"Work on a copy (t.clone()), or update it inside `with gpuad.no_grad():`.")
