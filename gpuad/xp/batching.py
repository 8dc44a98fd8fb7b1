"""Batching rules: how each xp primitive runs on a batch of examples at once (vmap).

Under gpuad.vmap an array holds a whole batch: its value carries the batch as
a leading axis that the program never sees (gpuad/backends/batched.py). Each
xp primitive's declaration names one rule here (vocabulary.py, `batch=`): it
gets the call's arguments, batched or not, and makes one call of the
primitive on the values with the batch axis in front, returning the value
(batch in front) of the result. So every op, every VJP and every optimizer
update written in xp runs batched with no second copy, as forward mode runs
them with tangents (tangents.py), and there is no Python loop over the batch.

A rule reads the call through `Batch` (below): which arguments are batched,
their values, their logical rank (without the batch axis), and the namespace
the values live in (numpy, CuPy, a trace, or an inner vmap's).

>>> import numpy as np
>>> from gpuad.xp.batching import move_axis
>>> move_axis(-1, 3), move_axis(None, 2)
(3, (1, 2))
"""
import numpy as np


def move_axis(axis, rank):
    """A logical axis (or tuple; None: every axis) as an axis of the batched value."""
    if axis is None:
        return tuple(range(1, rank + 1))
    if isinstance(axis, (tuple, list)):
        return tuple(_one(a, rank) for a in axis)
    return _one(axis, rank)


def _one(a, rank):
    a = int(a)
    if not -rank <= a < max(rank, 1):
        raise np.exceptions.AxisError(f"axis {a} is out of bounds for an array of dimension {rank}")
    return a % max(rank, 1) + 1


class Batch:
    """One call under vmap: what a rule asks of its arguments.

    level: the vmap this call batches for; size: its batch size; ns: the
    namespace the values live in; is_batched(a): a is batched at this level."""

    def __init__(self, level, size, ns, is_batched):
        self.level, self.size, self.ns, self.isb = level, size, ns, is_batched

    def val(self, a):
        """The value: batch in front for a batched argument, the argument itself otherwise."""
        return a.value if self.isb(a) else a

    def rank(self, a):
        """Logical rank (a Python number: 0)."""
        return len(a.shape) if hasattr(a, "shape") else 0

    def align(self, a, rank):
        """a's value broadcastable against values of logical rank `rank` (batch in front):
        a batched value gets length-1 axes after its batch axis; the rest align at the right
        as numpy broadcasts."""
        if not self.isb(a):
            return a
        r = self.rank(a)
        return a.value if r == rank else self.ns.reshape(a.value, (self.size,) + (1,) * (rank - r) + tuple(a.shape))

    def full(self, a):
        """a's value with the batch in front, an unbatched a broadcast along it (a view)."""
        if self.isb(a):
            return a.value
        a = self.ns.asarray(a) if not hasattr(a, "shape") else a
        return self.ns.broadcast_to(a, (self.size,) + tuple(a.shape))

    def fn(self, prim):
        return getattr(self.ns, prim)


def _arrays(args):
    return [a for a in args if hasattr(a, "shape") or isinstance(a, (int, float, bool, complex))]


def elementwise(b, prim, args, kw):
    """Broadcasting maps (ufuncs, where, clip, astype): align ranks, call once.

    out= batched at this level is written in place when its value can be (else its handle
    is rebound to the result: whoever holds it sees the write, as with numpy's out=); an
    out= that is not batched here cannot hold a batched result, and is refused."""
    rank = max([b.rank(a) for a in _arrays(args)] + [0])
    out = kw.get("out")
    kw = dict(kw)
    if "where" in kw and kw["where"] is not True:
        kw["where"] = b.align(kw["where"], rank)
    args = tuple(b.align(a, rank) for a in args)
    if out is None:
        return b.fn(prim)(*args, **kw)
    out = out[0] if isinstance(out, tuple) and len(out) == 1 else out
    if not b.isb(out) or len(out.shape) != rank:
        raise RuntimeError(f"gpuad.vmap: {prim}(..., out=) of a value batched by vmap into an array that is "
                           f"not batched by it (shape {tuple(getattr(out, 'shape', ()))}); an in-place op "
                           f"cannot make an unbatched array per-example: use the out-of-place op")
    if _writable(out.value):
        kw["out"] = out.value
        return b.fn(prim)(*args, **kw)
    kw.pop("out")
    out.value = b.fn(prim)(*args, **kw)          # a read-only (broadcast) value: rebind the handle
    return out.value


def _writable(v):
    """Whether a value may be written in place: not read-only, not a broadcast (a zero
    stride: CuPy has no flag for it) and not a trace's value (rebound instead)."""
    if not getattr(getattr(v, "flags", None), "writeable", True) or hasattr(v, "source"):
        return False
    return not any(st == 0 and n > 1 for st, n in zip(getattr(v, "strides", ()), v.shape))


def zero_where(b, prim, args, kw):
    a, drop = args
    rank = max(b.rank(a), b.rank(drop))
    if b.isb(a) and b.rank(a) == rank and _writable(a.value):
        return b.ns.zero_where(a.value, b.align(drop, rank))       # in place, as eager's
    return b.ns.where(b.align(drop, rank), 0, b.align(a, rank))


def _axis_of(args, kw, position=1, default=None):
    if len(args) > position:
        return args[position], args[:position] + args[position + 1:], dict(kw)
    kw = dict(kw)
    return kw.pop("axis", default), args, kw


def reduction(b, prim, args, kw):
    """sum, mean, max, min, any, all: the logical axes moved past the batch axis."""
    axis, rest, kw = _axis_of(args, kw)
    a = rest[0]
    if kw.get("out") is not None:
        kw["out"] = kw["out"].value if b.isb(kw["out"]) else kw.pop("out")
        if kw["out"] is None or not hasattr(kw["out"], "shape"):
            kw.pop("out")
    return b.fn(prim)(b.val(a), *rest[1:], axis=move_axis(axis, b.rank(a)), **kw)


def along_axis(b, prim, args, kw):
    """argmax, argmin, cumsum, cumprod, argsort: one axis (None: the flattened example)."""
    axis, rest, kw = _axis_of(args, kw, default=-1 if prim == "argsort" else None)
    a = rest[0]
    v = b.val(a)
    if axis is None:
        v, axis = b.ns.reshape(v, (b.size, -1)), 1
    else:
        axis = move_axis(axis, b.rank(a))
    return b.fn(prim)(v, *rest[1:], axis=axis, **kw)


def shape_of(b, prim, args, kw):
    """reshape, broadcast_to: the batch axis in front of the new shape."""
    a, shape = args[0], (args[1] if len(args) > 1 else kw.get("shape", kw.get("newshape")))
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    v = b.align(a, len(shape)) if prim == "broadcast_to" else b.val(a)
    return b.fn(prim)(v, (b.size,) + shape)


def ravel(b, prim, args, kw):
    return b.ns.reshape(b.val(args[0]), (b.size, -1))


def transpose(b, prim, args, kw):
    a = args[0]
    axes = args[1] if len(args) > 1 else kw.get("axes")
    r = b.rank(a)
    axes = tuple(range(r - 1, -1, -1)) if axes is None else tuple(axes)
    return b.ns.transpose(b.val(a), (0,) + move_axis(axes, r))


def axes_args(*positions, rank_plus=0):
    """Views and structural maps whose axis arguments (at these positions or the
    keywords axis/axis1/axis2/source/destination) shift past the batch axis."""
    names = ("axis", "axis1", "axis2", "source", "destination")

    def rule(b, prim, args, kw):
        a = args[0]
        r = b.rank(a) + (len(args[1]) if prim == "expand_dims" and isinstance(args[1], (tuple, list))
                         else rank_plus)
        args = list(args)
        for p in positions:
            if p < len(args) and args[p] is not None:
                args[p] = move_axis(args[p], r)
        kw = {k: (move_axis(v, r) if k in names and v is not None else v) for k, v in kw.items()}
        if prim in ("flip", "squeeze") and len(args) < 2 and kw.get("axis") is None:
            shape = a.shape
            kw["axis"] = tuple(i + 1 for i in range(r) if prim == "flip" or shape[i] == 1)
        args[0] = b.val(a)
        return b.fn(prim)(*args, **kw)
    return rule


def same(b, prim, args, kw):
    """A map of one array that keeps every axis where it is (copy, asarray, tril on the
    last two axes, a creation like it): called on the value."""
    return b.fn(prim)(b.val(args[0]), *args[1:], **kw)


def stop_gradient(b, prim, args, kw):
    fn = getattr(b.ns, "stop_gradient", None) if b.ns.name != "numpy" else None
    return b.val(args[0]) if fn is None else fn(b.val(args[0]))


def roll(b, prim, args, kw):
    a = args[0]
    shift = args[1] if len(args) > 1 else kw["shift"]
    axis = args[2] if len(args) > 2 else kw.get("axis")
    if axis is None:
        flat = b.ns.roll(b.ns.reshape(b.val(a), (b.size, -1)), shift, axis=1)
        return b.ns.reshape(flat, (b.size,) + tuple(a.shape))
    return b.ns.roll(b.val(a), shift, axis=move_axis(axis, b.rank(a)))


def tile(b, prim, args, kw):
    a, reps = args[0], args[1] if len(args) > 1 else kw["reps"]
    reps = (reps,) if isinstance(reps, (int, np.integer)) else tuple(reps)
    r = max(b.rank(a), len(reps))
    return b.ns.tile(b.align(a, r), (1,) + (1,) * (r - len(reps)) + reps)


def repeat(b, prim, args, kw):
    a, repeats = args[0], args[1] if len(args) > 1 else kw["repeats"]
    axis = args[2] if len(args) > 2 else kw.get("axis")
    if axis is None:
        return b.ns.repeat(b.ns.reshape(b.val(a), (b.size, -1)), repeats, axis=1)
    return b.ns.repeat(b.val(a), repeats, axis=move_axis(axis, b.rank(a)))


def pad(b, prim, args, kw):
    a, width = args[0], args[1] if len(args) > 1 else kw.pop("pad_width")
    r = b.rank(a)
    w = np.broadcast_to(np.asarray(width, dtype=np.int64).reshape(-1, 2) if np.size(width) > 1 else
                        np.full((1, 2), int(np.asarray(width).reshape(-1)[0])), (r, 2))
    return b.ns.pad(b.val(a), [(0, 0)] + [tuple(int(x) for x in row) for row in w], *args[2:], **kw)


def concatenate(b, prim, args, kw):
    arrays = list(args[0])
    axis = args[1] if len(args) > 1 else kw.get("axis", 0)
    r = b.rank(arrays[0]) + (prim == "stack")
    kw = {k: v for k, v in kw.items() if k not in ("axis",)}
    if axis is None:
        flat = [b.ns.reshape(b.full(a), (b.size, -1)) for a in arrays]
        return b.ns.concatenate(flat, axis=1, **kw)
    return b.fn(prim)([b.full(a) for a in arrays], axis=move_axis(axis, r), **kw)


def matmul(b, prim, args, kw):
    """Vectors become matrices, ranks are aligned behind the batch axis, and the added
    axes are taken off the result again."""
    x, y = args[:2]
    rx, ry = b.rank(x), b.rank(y)
    if b.isb(x) and b.isb(y) or rx == 1 or ry == 1:
        vx, vy = b.full(x), b.full(y)
        if rx == 1:
            vx = b.ns.reshape(vx, (b.size, 1, x.shape[0]))
        if ry == 1:
            vy = b.ns.reshape(vy, (b.size, y.shape[0], 1))
        r = max(len(vx.shape), len(vy.shape))
        vx = b.ns.reshape(vx, (b.size,) + (1,) * (r - len(vx.shape)) + tuple(vx.shape[1:]))
        vy = b.ns.reshape(vy, (b.size,) + (1,) * (r - len(vy.shape)) + tuple(vy.shape[1:]))
        # a contraction of length 1 (per-example outer products, a weight's gradient) is a
        # broadcast product: numpy's stacked matmul makes one tiny GEMM per matrix (10x slower)
        if vx.shape[-1] == 1:
            # (into a buffer of the namespace's pool where it has one: a fresh 64 MiB array per
            # layer otherwise pays its page faults at every call, and they vary 10x run to run)
            shape = np.broadcast_shapes(tuple(vx.shape), tuple(vy.shape))
            buf = b.ns.buffer(shape, np.result_type(vx.dtype, vy.dtype)) if hasattr(b.ns, "buffer") else None
            out = b.ns.multiply(vx, vy) if buf is None else b.ns.multiply(vx, vy, out=buf)
        else:
            out = b.ns.matmul(vx, vy)
        shape = tuple(out.shape)
        if ry == 1:
            shape = shape[:-1]
        if rx == 1:
            shape = shape[:-2] + shape[-1:] if ry != 1 else shape[:-1]
        return b.ns.reshape(out, shape) if shape != tuple(out.shape) else out
    if b.isb(x) and ry == 2:           # (B, ..., n, k) @ (k, m): one GEMM over every row of the batch
        v = x.value
        return b.ns.reshape(b.ns.matmul(b.ns.reshape(v, (-1, v.shape[-1])), y), tuple(v.shape[:-1]) + (y.shape[-1],))
    if b.isb(y) and rx == 2:           # (m, k) @ (B, ..., k, n): one GEMM, the batch beside n
        v = y.value
        lead = tuple(v.shape[:-2])
        cols = b.ns.reshape(b.ns.moveaxis(v, -2, 0), (v.shape[-2], -1))        # (k, B ... n)
        out = b.ns.reshape(b.ns.matmul(x, cols), (x.shape[0],) + lead + (v.shape[-1],))
        return b.ns.moveaxis(out, 0, -2)
    r = max(rx, ry)
    if b.isb(x):                       # stacks of matrices on either side
        return b.ns.matmul(b.align(x, r), y)
    return b.ns.matmul(x, b.align(y, r))


def einsum(b, prim, args, kw):
    """The batch axis becomes a new letter in front of each batched operand and the output."""
    from .subscripts import expand_ellipsis
    eq, operands = args[0], list(args[1:])
    eq = expand_ellipsis(eq, [b.rank(o) for o in operands]) if "..." in eq else eq
    if "->" in eq:
        ins, out = eq.replace(" ", "").split("->")
    else:
        ins = eq.replace(" ", "")
        counts = {c: ins.count(c) for c in ins if c.isalpha()}
        out = "".join(sorted(c for c, n in counts.items() if n == 1))
    letter = next(c for c in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA" if c not in eq)
    terms = ins.split(",")
    terms = [(letter + t) if b.isb(o) else t for t, o in zip(terms, operands)]
    return b.ns.einsum(",".join(terms) + "->" + letter + out, *(b.val(o) for o in operands), **kw)


def take_along_axis(b, prim, args, kw):
    a, idx = args[:2]
    axis = args[2] if len(args) > 2 else kw.get("axis")
    if axis is None:
        return b.ns.take_along_axis(b.ns.reshape(b.full(a), (b.size, -1)),
                                    b.ns.reshape(b.full(idx), (b.size, -1)), axis=1)
    r = max(b.rank(a), b.rank(idx))
    va = b.full(a) if b.isb(a) else b.ns.broadcast_to(a, (b.size,) + tuple(a.shape))
    vi = b.full(idx) if b.isb(idx) else b.ns.broadcast_to(idx, (b.size,) + tuple(idx.shape))
    return b.ns.take_along_axis(va, vi, axis=move_axis(axis, r))


def take(b, prim, args, kw):
    a, idx = args[:2]
    axis = args[2] if len(args) > 2 else kw.get("axis")
    if b.isb(idx):
        raise NotImplementedError("gpuad.vmap: take with batched indices has no batching rule; use "
                                  "take_along_axis or an index (a[idx])")
    if axis is None:
        return b.ns.take(b.ns.reshape(b.val(a), (b.size, -1)), idx, axis=1)
    return b.ns.take(b.val(a), idx, axis=move_axis(axis, b.rank(a)))


# -- indexing -------------------------------------------------------------------------

def _is_array_index(i):
    return (hasattr(i, "shape") and not isinstance(i, np.generic)) or isinstance(i, list)


def _expand(index, rank):
    """The index as a tuple with its Ellipsis spelled out as slices."""
    idx = index if isinstance(index, tuple) else (index,)
    used = sum(len(i.shape) if getattr(i, "dtype", None) == np.bool_ else 1 for i in idx
               if i is not None and i is not Ellipsis)
    if Ellipsis in [i for i in idx if not _is_array_index(i)]:
        k = next(n for n, i in enumerate(idx) if not _is_array_index(i) and i is Ellipsis)
        idx = idx[:k] + (slice(None),) * (rank - used) + idx[k + 1:]
    return idx


def batched_index(b, a, index):
    """(the index on the batched value, (source axes, destination axes) of the move that
    puts the result's axes where the logical index puts them, or None).

    An index without batched arrays gets a full slice in front. Batched index arrays join
    an arange over the batch as one more advanced index; numpy then puts the broadcast
    index axes first, and they are moved back after the axes sliced before them."""
    idx = _expand(index, b.rank(a))
    arrays = [n for n, i in enumerate(idx) if _is_array_index(i)]
    ints = [n for n, i in enumerate(idx) if isinstance(i, (int, np.integer)) and not isinstance(i, bool)]
    advanced = sorted(arrays + ints) if arrays else []
    if any(b.isb(i) and getattr(i, "dtype", None) == np.bool_ for i in idx):
        raise NotImplementedError("gpuad.vmap: a batched boolean mask as an index gives each example "
                                  "its own shape; use where() instead")
    adjacent = advanced == list(range(advanced[0], advanced[-1] + 1)) if advanced else True
    if not any(b.isb(i) for i in idx):
        if advanced and not adjacent:           # numpy puts the index axes first, before the batch
            k = len(np.broadcast_shapes(*(np.shape(idx[n]) for n in advanced)))
            return (slice(None),) + idx, (list(range(k)), list(range(1, k + 1)))   # the batch to the front
        return (slice(None),) + idx, None
    if any(getattr(idx[n], "dtype", None) == np.bool_ for n in arrays):
        raise NotImplementedError("gpuad.vmap: a boolean mask beside batched integer indices has no "
                                  "batching rule")
    shapes = [tuple(idx[n].shape) if hasattr(idx[n], "shape") else np.shape(idx[n]) for n in advanced]
    k = len(np.broadcast_shapes(*shapes))
    ar = b.ns.reshape(b.ns.arange(b.size), (b.size,) + (1,) * k)
    new = tuple(b.align(i, k) if b.isb(i) else i for i in idx)
    # the logical result: sliced axes before the first index, the index axes, the rest;
    # numpy's (the arange is advanced and at the front): the index axes (batch first), the rest
    before = 0 if not adjacent else sum(1 for i in idx[:advanced[0]])
    move = (list(range(1, k + 1)), list(range(1 + before, 1 + before + k))) if before else None
    return (ar,) + new, move


def _moved(b, v, move, inverse=False):
    if move is None:
        return v
    src, dst = move
    return b.ns.moveaxis(v, dst, src) if inverse else b.ns.moveaxis(v, src, dst)


def getitem(b, prim, args, kw):
    a, index = args
    new, move = batched_index(b, a, index)
    return _moved(b, b.ns.getitem(b.full(a), new), move)


def _result_shape(b, a, new):
    dummy = np.broadcast_to(np.zeros((), np.int8), (b.size,) + tuple(a.shape))
    host = tuple(_host_index(i) for i in new)
    return dummy[host].shape


def _host_index(i):
    """An index item numpy can apply to a zero-byte dummy: a device integer array becomes a
    zero-stride one of its shape; a device mask is read (its count of True is a shape)."""
    if not hasattr(i, "shape") or isinstance(i, (np.ndarray, np.generic)):
        return i
    if i.dtype == np.bool_:
        return i.get() if hasattr(i, "get") else np.asarray(i)
    return np.broadcast_to(np.intp(0), i.shape)


def _values_at(b, a, new, move, value):
    """value laid out as the batched value's getitem at `new` gives its result."""
    shape = _result_shape(b, a, new)                     # numpy's layout of the result
    logical = tuple(_moved_shape(shape, move))[1:]
    if b.isb(value):
        v = b.ns.broadcast_to(b.align(value, len(logical)), (b.size,) + logical)
    else:
        v = b.ns.broadcast_to(value, logical)
        v = b.ns.broadcast_to(v, (b.size,) + logical)
    return _moved(b, v, move, inverse=True)


def _moved_shape(shape, move):
    if move is None:
        return shape
    src, dst = move                                        # as np.moveaxis orders them
    order = [n for n in range(len(shape)) if n not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return tuple(shape[i] for i in order)


def setitem(b, prim, args, kw):
    a, index, value = args
    new, move = batched_index(b, a, index)
    base = b.full(a)
    return b.ns.setitem(base, new, _values_at(b, a, new, move, value))


def scatter_add(b, prim, args, kw):
    """getitem's VJP: zeros of the batched shape, g added where the batched index reads."""
    g, shape, index, unique = args

    class _A:                                   # the array indexed: its logical shape
        pass
    a = _A()
    a.shape = tuple(shape)
    new, move = batched_index(b, a, index)
    return b.ns.scatter_add(_values_at(b, a, new, move, g), (b.size,) + tuple(shape), new, unique)


def like(b, prim, args, kw):
    """zeros_like, ones_like, empty_like, full_like: of the batched shape."""
    return b.fn(prim)(b.val(args[0]), *args[1:], **kw)


def diagonal(b, prim, args, kw):
    a = args[0]
    offset = args[1] if len(args) > 1 else kw.get("offset", 0)
    a1 = args[2] if len(args) > 2 else kw.get("axis1", 0)
    a2 = args[3] if len(args) > 3 else kw.get("axis2", 1)
    r = b.rank(a)
    return b.ns.diagonal(b.val(a), offset, move_axis(a1, r), move_axis(a2, r))


def random_effect(b, prim, args, kw):
    raise RuntimeError(f"gpuad.vmap: xp.{prim} on batched values (a random draw or check inside vmap "
                       f"with values that differ per example) has no batching rule")
