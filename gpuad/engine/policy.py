"""How backward combines gradients: one policy, for the walk on arrays and on sizes.

The reverse walk (engine/walk.py) asks this module what to do with each
gradient; the planner (engine/plan.py) is the same walk on abstract arrays,
so it asks the same questions. Nothing here is written twice.

Ownership: the engine *owns* a gradient buffer when nothing outside backward
can see it (not a view of another array, not the caller's, not a saved
value), so it may write into it.

- donate: a VJP may write its result into the incoming gradient g when the
  engine owns g and g is large enough for out= to pay (INPLACE_MIN elements;
  below that numpy's out= parsing costs more than the allocation it saves).
- route: a VJP output is owned when it is a fresh buffer, or g itself donated
  to exactly one input. Summing a broadcast gradient back, or casting it,
  makes a fresh (owned) buffer.
- accumulate: at fan-in, add in place into whichever of the two gradients the
  engine owns (read 2N, write N, nothing allocated), else into a new buffer.
- a leaf's .grad keeps an owned buffer as it is and copies one it does not own.

>>> import numpy as np
>>> from gpuad.engine.policy import accumulate
>>> from gpuad.backends import numpy_ns
>>> a, b = np.ones(1 << 20), np.ones(1 << 20)
>>> total, owned = accumulate(numpy_ns, a, False, b, True, records=False)
>>> total is b, owned                       # into the one the engine owns
(True, True)
>>> a, b = np.ones(10), np.ones(10)
>>> accumulate(numpy_ns, a, True, b, True, records=False)[0] is a    # tiny: allocating is cheaper
False
"""
import numpy as np

from ..backends.abstract import AbstractArray
from ..dtypes import grad_dtype
from ..errors import BackwardError
from ..memory.pool import INPLACE_MIN

_ndarray = np.ndarray
_ARRAY_TYPES = (np.ndarray, AbstractArray)


DONATE_MIN = INPLACE_MIN


def may_donate(g):
    """Whether a VJP may overwrite its incoming gradient g, given that the engine owns it.
    (The walk spells this out inline, on its hot path.)"""
    return g.size >= DONATE_MIN


def route(xp, gi, g, donated, grads, parent, op, records):
    """One VJP output on its way to `parent`: (gradient in the parent's shape and dtype, owned).

    grads: all the VJP's outputs (g sent to two inputs, as add's (g, g), is owned by neither).
    records: the walk records itself (create_graph): gradients are Tensors, never owned.
    """
    if op.elementwise:                          # unary elementwise: shape and dtype already right
        return gi, (not records) and (gi is not g or donated)
    if records:
        owned = False
    elif gi is g:
        owned = donated and not (len(grads) == 2 and grads[0] is grads[1])
    elif isinstance(gi, _ARRAY_TYPES):
        # fresh unless a view (a pooled buffer's base is the pool's holder, not an array)
        owned = not isinstance(gi.base, _ARRAY_TYPES)
    elif hasattr(gi, "shape") and not isinstance(gi, np.generic):
        owned = not isinstance(gi.base, type(gi))   # a CuPy array: the same rule
    else:
        gi, owned = np.asarray(gi), True        # numpy returned a scalar for a 0-d result
    if gi.shape != parent.shape:
        gi, owned = fit(xp, gi, parent, op), not records
    if gi.dtype is not parent.dtype:
        want = grad_dtype(parent.dtype)              # (bfloat16 values: float32 gradients)
        if gi.dtype != want:
            gi, owned = xp.astype(gi, want), not records
    return gi, owned


def unbroadcast(xp, g, shape):
    """Sum `g` over the axes that broadcasting added or stretched to reach `shape`.

    The one helper every binary VJP relies on (through the engine).

    >>> import numpy as np
    >>> from gpuad.backends import numpy_ns
    >>> unbroadcast(numpy_ns, np.ones((4, 2, 3)), (2, 1)).tolist()
    [[12.0], [12.0]]
    """
    gshape = g.shape
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gshape[lead + i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=False)
        if len(shape) != g.ndim or tuple(g.shape) != tuple(shape):
            g = xp.reshape(g, shape)
    return g


def fit(xp, gi, parent, op):
    """Sum a broadcast gradient back to the input's shape."""
    try:
        out = unbroadcast(xp, gi, parent.shape)
    except ValueError:
        out = None
    if out is None or tuple(out.shape) != tuple(parent.shape):
        raise BackwardError(f"gpuad: the VJP of {op.name} returned a gradient of shape {tuple(gi.shape)} "
                            f"for an input of shape {parent.shape}")
    return out


def accumulate(xp, existing, existing_owned, incoming, incoming_owned, records):
    """existing + incoming: (sum, owned). The sum goes in place into whichever of the two
    the engine owns (existing first), else, and for tiny arrays, into a new buffer.

    The planner calls this same function on abstract arrays and reads where the sum
    went from which object comes back.
    """
    if records:
        return xp.add(existing, incoming), False
    if existing.size >= INPLACE_MIN and getattr(existing, "ns", None) is getattr(incoming, "ns", None):
        # (under vmap, an unbatched sum meeting a batched one, or two levels: a new sum)
        if existing_owned:
            xp.add(existing, incoming, out=existing)       # read 2N, write N
            return existing, True
        if incoming_owned:
            return xp.add(incoming, existing, out=incoming), True
    total = xp.add(existing, incoming)
    return (np.asarray(total) if isinstance(total, np.generic) else total), True   # numpy: 0-d sums are scalars


def leaf_keeps(owned):
    """Whether a leaf's first .grad may be the gradient buffer itself (else a copy)."""
    return owned
