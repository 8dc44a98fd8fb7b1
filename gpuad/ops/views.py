"""Tensors that view another tensor's buffer, and what an in-place write through one does
to the other's gradient (torch's view + in-place semantics, its CopySlices).

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


def _chain(t):
    """[(view, base, how)] from t up to the tensor that owns the buffer."""
    out = []
    while True:
        entry = _base.get(id(t))
        if entry is None or entry[0]() is not t:
            return out
        out.append((t, entry[1], entry[2]))
        t = entry[1]


# The public functions a view is made again with, and written through: api.py puts them
# here when it is defined (this module sits below api and never imports it).
OPS = {}


def _derive(base, how):
    name, arg = how
    return OPS[name](base, arg)


def _undo(base, how, value):
    """base with `value` written where its view `how` looks: recorded, out of place."""
    name, arg = how
    if name == "getitem":
        return OPS["setitem"](base, arg, value)
    if name == "reshape":
        return OPS["reshape"](value, tuple(base.shape))
    if name == "transpose":
        return OPS["transpose"](value, tuple(int(i) for i in np.argsort(arg)))
    raise RuntimeError(f"gpuad: an in-place write into a {name} view (of shape {tuple(value.shape)}) "
                       f"would write several elements into one place; write into a copy (.clone())")


def check_writable(t, op_name, grad_enabled):
    """Refuse, as torch does, a recorded in-place op on a view of a leaf that requires grad."""
    chain = _chain(t)
    if not chain or not grad_enabled:
        return
    root = chain[-1][1]
    node = root._node
    if node is not None and node.op is None:
        raise RuntimeError(
            f"gpuad.{op_name}: a view of a leaf tensor that requires grad (shape {tuple(root.shape)}) is "
            f"used in an in-place operation, which would lose what the leaf's gradient is taken of. "
            f"Work on a copy (t.clone()), or update it inside `with gpuad.no_grad():`.")


def rebase(t, result):
    """Before `result`'s values are copied into view t: move t's bases onto nodes that
    include the write (each base = its old value with the view's part replaced).
    Returns the roots whose other views must be derived again (after the copy)."""
    value = result
    moved = []
    for view, base, how in _chain(t):
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
    kids = _views.get(id(base))
    if not kids:
        return
    kids[:] = [r for r in kids if r() is not None]
    for ref in list(kids):
        v = ref()
        if v is None:
            continue
        if v is not skip:
            entry = _base.get(id(v))
            if entry is not None and base._node is not None:
                fresh = _derive(base, entry[2])
                v._node = fresh._node
        _refresh(v, skip)


def adopt(t):
    """t's data was replaced by a traced value (gpuad.compile): its views' data follow."""
    kids = _views.get(id(t))
    for ref in list(kids or ()):
        v = ref()
        entry = _base.get(id(v)) if v is not None else None
        if entry is not None:
            v.data = _derive(t, entry[2]).data
            adopt(v)
