"""Version counters: the check that keeps in-place writes honest.

Every in-place write marks its buffer with the moment it happened (a node
index: creation order is the clock). A node created before that moment which
saved the buffer would compute a wrong gradient, so the walk raises, naming
the op, the saved value and the in-place op: never a silently wrong gradient.
This is torch's version counter, kept per buffer in one dict, at no cost to
ops that are not in place: the walk looks only once some write happened
(`MUTATED` non-empty).

>>> import numpy as np
>>> from gpuad.engine import versions
>>> a = np.zeros(3)
>>> versions.mark(a, "add_")
>>> versions.last_write(a)[1]
'add_'
"""
import weakref

import numpy as np

from ..graph import FREED, _next_index
from ..memory.accounting import owner_of

MUTATED = {}        # id(buffer owner) -> (moment of the last in-place write, what wrote it)


def buffer_owner(a):
    """What owns a's buffer, on the host (the pool's holder) or a device (the root array)."""
    if isinstance(a, np.ndarray):
        return owner_of(a)
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def mark(data, what):
    """Record an in-place write into the buffer of array `data`."""
    owner = buffer_owner(data)
    key = id(owner)
    if key not in MUTATED:
        try:
            weakref.finalize(owner, MUTATED.pop, key, None)      # the entry dies with the buffer
        except TypeError:
            pass
    MUTATED[key] = (_next_index(), what)


def last_write(data):
    """(moment, what) of the last in-place write into data's buffer, or None."""
    return MUTATED.get(id(buffer_owner(data)))


def check_saved(node):
    """Raise if a value `node` saved was written in place after the node was made.
    The walk calls this for each node, only once some in-place write happened."""
    saved = node.saved
    if saved is FREED or not saved:
        return
    for k, a in enumerate(saved):
        if not hasattr(a, "base") or isinstance(a, np.generic):
            continue
        m = MUTATED.get(id(buffer_owner(a)))
        if m is not None and m[0] > node.index:
            names = list(node.op.retain)
            what = names[k] if k < len(names) else "saved value"
            label = "its output" if what == "out" else f"its input {what!r}"
            raise RuntimeError(
                f"gpuad: {node.op.name} (node #{node.index}) saved {label} (shape {tuple(a.shape)}, "
                f"{a.dtype}) for its gradient, and {m[1]} modified it in place afterwards, so the "
                f"gradient would be wrong. Modify a copy instead (t = t.clone(), or an out-of-place op).")
