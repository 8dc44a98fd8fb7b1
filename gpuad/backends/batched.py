"""Batched arrays: the values gpuad.vmap runs a function on.

A BatchedArray stands for one example to the program (its shape, ndim and
size are one example's) and holds the whole batch: `value` has the batch as a
leading axis. Its namespace (`_xp`, as a Tracer's) is a BatchedNamespace: each
xp call on it runs the primitive's batching rule (gpuad/xp/batching.py) once on
the values. Every gpuad op, VJP and optimizer update is written in xp, so they
all run batched unchanged; autograd records Tensors whose data are batched,
so grad inside vmap and grad through vmap both work.

Nested vmaps are levels: a value batched by an outer vmap may be the value of
an inner one's BatchedArray; a call is batched by the innermost level among
its arguments, and the rule's own calls go to the next one out (or to numpy,
CuPy, or a gpuad.compile trace at the bottom).

Asking for a value (`float()`, `.item()`, `np.asarray`) raises, as torch.func's
vmap does: an example's value is not known apart from the others.

>>> import numpy as np
>>> from gpuad.backends.batched import BatchedArray, BatchedNamespace
>>> from gpuad.backends import numpy_ns
>>> ns = BatchedNamespace(1, 3, numpy_ns)
>>> x = BatchedArray(np.arange(6.0).reshape(3, 2), ns)
>>> y = ns.sum(ns.multiply(x, 2.0))
>>> y.shape, y.value.tolist()
((), [2.0, 10.0, 18.0])
"""
import weakref

import numpy as np

from ..xp import lookup
from .abstract import Sized
from ..xp.batching import Batch


class BatchedArray(Sized):
    """One example's view of a batch: `value` holds every example along axis 0."""

    __slots__ = ("value", "ns", "__weakref__")
    __array_priority__ = 3000       # above a Tracer's: numpy asks this object first

    def __init__(self, value, ns):
        self.value = value
        self.ns = ns

    level = property(lambda self: self.ns.level)
    shape = property(lambda self: tuple(self.value.shape[1:]))
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: len(self.value.shape) - 1)
    size = property(lambda self: int(np.prod(self.value.shape[1:], dtype=np.int64)))
    itemsize = property(lambda self: self.value.dtype.itemsize)
    nbytes = property(lambda self: self.value.nbytes)      # the whole batch's bytes: what it holds
    base = None
    flags = property(lambda self: getattr(self.value, "flags", None))
    _xp = property(lambda self: self.ns)
    T = property(lambda self: self.ns.transpose(self))

    # -- what needs one example's value: refused ---------------------------------
    def _refuse(self, *a, **k):
        raise RuntimeError("gpuad.vmap: a batched value has no single value here (bool(), float(), "
                           ".item(), .tolist() or np.asarray inside the vmapped function); compute it "
                           "outside vmap, or with where() instead of an `if`")

    __bool__ = __float__ = __int__ = __index__ = item = tolist = _refuse

    def __array__(self, dtype=None, copy=None):
        self._refuse()

    def __repr__(self):
        return f"BatchedArray(level {self.level}, batch {self.value.shape[0]}, shape {self.shape}, {self.dtype})"

    # -- numpy's protocols: a call of the primitive of that name ---------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        if method != "__call__":
            raise NotImplementedError(f"gpuad.vmap: np.{ufunc.__name__}.{method} on batched values has no "
                                      f"batching rule")
        return _call(inputs, ufunc.__name__, inputs, kw)

    def __array_function__(self, func, types, args, kwargs):
        name = func.__name__
        if name == "copyto":
            return _copyto(*args, **kwargs)
        if name in ("shape", "ndim", "size"):
            return getattr(args[0], name)
        if name == "result_type":
            return np.result_type(*(a.dtype if isinstance(a, BatchedArray) else a for a in args))
        if name == "may_share_memory":
            return False
        return _call((args, kwargs), name, args, kwargs)

    # -- methods and operators ----------------------------------------------------
    def astype(self, dtype, copy=True):
        return self if (not copy and np.dtype(dtype) == self.dtype) else self.ns.astype(self, dtype)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self.ns.reshape(self, tuple(shape))

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None)
        return self.ns.transpose(self, axes)

    def copy(self):
        return self.ns.copy(self)

    def __getitem__(self, index):
        return self.ns.getitem(self, index)

    def __setitem__(self, index, value):
        """In place, as numpy: the value written into every example's place at index."""
        self.value = self.ns.setitem(self, index, value).value

    def fill(self, value):
        _copyto(self, value)


def _method(name):
    def m(self, *args, **kw):
        return getattr(self.ns, name)(self, *args, **kw)
    m.__name__ = name
    return m


for _name in ("sum", "mean", "max", "min", "any", "all", "ravel", "swapaxes", "squeeze", "clip", "cumsum",
              "cumprod", "argmax", "argmin", "argsort", "prod", "flatten"):
    setattr(BatchedArray, _name, _method("ravel" if _name == "flatten" else _name))


def _binary(prim, reflected=False, inplace=False):
    def op(self, other):
        if inplace:
            out = self.ns.call(prim, (self, other), {"out": self})
            if out is not self:
                self.value = out.value if isinstance(out, BatchedArray) and out.level == self.level else \
                    _refuse_write(self, out)
            return self
        return _call((self, other), prim, (other, self) if reflected else (self, other), {})
    return op


def _refuse_write(into, value):
    raise RuntimeError(f"gpuad.vmap: writing a value batched by an inner vmap into {into!r} in place; "
                       f"use the out-of-place op")


for _names, _prim in ((("__add__", "__radd__", "__iadd__"), "add"), (("__sub__", "__rsub__", "__isub__"), "subtract"),
                      (("__mul__", "__rmul__", "__imul__"), "multiply"),
                      (("__truediv__", "__rtruediv__", "__itruediv__"), "divide"),
                      (("__pow__", "__rpow__", "__ipow__"), "power"), (("__matmul__", "__rmatmul__", None), "matmul"),
                      (("__mod__", "__rmod__", None), "remainder"),
                      (("__floordiv__", "__rfloordiv__", None), "floor_divide")):
    setattr(BatchedArray, _names[0], _binary(_prim))
    setattr(BatchedArray, _names[1], _binary(_prim, reflected=True))
    if _names[2]:
        setattr(BatchedArray, _names[2], _binary(_prim, inplace=True))
for _name, _prim in (("__lt__", "less"), ("__le__", "less_equal"), ("__gt__", "greater"), ("__ge__", "greater_equal"),
                     ("__eq__", "equal"), ("__ne__", "not_equal"), ("__and__", "logical_and"),
                     ("__or__", "logical_or"), ("__xor__", "logical_xor")):
    setattr(BatchedArray, _name, _binary(_prim))
BatchedArray.__hash__ = object.__hash__
BatchedArray.__neg__ = lambda self: self.ns.negative(self)
BatchedArray.__abs__ = lambda self: self.ns.absolute(self)
BatchedArray.__invert__ = lambda self: self.ns.logical_not(self) if self.dtype == np.bool_ else self.ns.invert(self)


def _leaves(x, out):
    if isinstance(x, (tuple, list)):
        for y in x:
            _leaves(y, out)
    elif isinstance(x, dict):
        for y in x.values():
            _leaves(y, out)
    else:
        out.append(x)
    return out


_CONTAINERS = (tuple, list, dict)


def _flat(args, kw=None):
    """The leaves of a call's arguments: arrays and numbers, lists of arrays opened (the
    operands of concatenate, an index tuple), keyword values included."""
    out = []
    for a in args:
        if type(a) in _CONTAINERS:
            _leaves(a, out)
        else:
            out.append(a)
    for a in (kw.values() if kw else ()):
        if type(a) in _CONTAINERS:
            _leaves(a, out)
        else:
            out.append(a)
    return out


def _top(tree):
    """The namespace of the innermost vmap level among the arrays in tree (a sequence)."""
    best = None
    for a in _flat(tree):
        if isinstance(a, BatchedArray) and (best is None or a.ns.level > best.level):
            best = a.ns
    return best


def _call(tree, prim, args, kw):
    return _top(tree).call(prim, args, kw)


def _copyto(dst, src, casting="same_kind", where=True):
    """np.copyto into a batched array (in place); into a plain one from a batched source: refused."""
    if not isinstance(dst, BatchedArray):
        raise RuntimeError("gpuad.vmap: an in-place write of a batched value into an array that is not "
                           "batched (a buffer made outside vmap); write into a new array instead")
    full = dst.ns.where(where, src, dst) if where is not True else dst.ns.add(dst.ns.zeros_like(dst), src)
    dst.value = dst.ns.astype(full, dst.dtype).value


LIVE = [0]      # BatchedNamespaces alive: while 0, the backward walk never looks for batched values


def _released():
    LIVE[0] -= 1


def batched_xp(xp, g, saved):
    """The namespace a VJP runs in: the innermost vmap level among its gradient and saved
    values (a graph recorded under vmap, walked inside or after it), else xp."""
    top = _top((g, saved))
    return xp if top is None else top


RECORDED_SUM = [None]     # (Tensor, namespace) -> its recorded sum over that batch: set by gpuad/func/vmap.py


def reduce_for(g, parent, node):
    """The gradient node `node` sends to node `parent` (their creation numbers), summed
    over the batch of every vmap that began between the two: the parent's value is then
    the same for every example of that vmap (a parameter, an in_axes=None argument, a
    closure) and entered it by broadcast, whose transpose is the sum. A parent made inside
    the vmap keeps its per-example gradient, and a graph made before the vmap (a backward
    run inside it on batched cotangents, as jacrev's) passes them through."""
    if not isinstance(g, BatchedArray):
        data = getattr(g, "data", None) if hasattr(g, "_node") else None     # create_graph: a Tensor
        while isinstance(data, BatchedArray) and parent < data.ns.start <= node:
            g = RECORDED_SUM[0](g, data.ns)
            data = g.data
        return g
    v = reduce_for(g.value, parent, node)
    if not parent < g.ns.start <= node:
        return g if v is g.value else BatchedArray(v, g.ns)
    return (v.ns if isinstance(v, BatchedArray) else bottom_namespace(g.ns, v)).sum(v, axis=0)


def bottom_namespace(ns, v=None):
    """The namespace of a value under every vmap level: a trace's, or numpy's or CuPy's."""
    xp = getattr(v, "_xp", None)
    if xp is not None:
        return xp
    while isinstance(ns, BatchedNamespace):
        ns = ns.base
    return ns


class BatchedNamespace:
    """The xp of one vmap level: each primitive by its batching rule, once per call.

    level: nesting depth (1: outermost); size: the batch size; base: where values
    made from nothing (zeros, arange) live, the namespace of the arrays vmap was given."""

    name = "batched"
    module = np

    def __init__(self, level, size, base, start=-1):
        self.level, self.size, self.base = level, int(size), base
        self.start = start          # the first node number of its run (reduce_for)
        LIVE[0] += 1
        weakref.finalize(self, _released)

    @property
    def device(self):
        return getattr(self.base, "device", "cpu")

    def __repr__(self):
        return f"<BatchedNamespace level {self.level}, batch {self.size}>"

    def __getattr__(self, prim):
        if prim.startswith("__"):
            raise AttributeError(prim)

        def call(*args, **kw):
            return self.call(prim, args, kw)
        call.__name__ = prim
        setattr(self, prim, call)
        return call

    def _mine(self, a):
        return isinstance(a, BatchedArray) and a.ns is self

    def call(self, prim, args, kw):
        """One xp call: by the innermost level among its arguments, this level's batching
        rule on the values, or (nothing batched here) the call itself one level in. One
        pass over the arguments finds the level, whether any is this level's, and the
        namespace of the values (a lower level's, a trace's, or the base)."""
        top, mine, best, other = self, False, None, None
        for a in _flat(args, kw):
            if type(a) is BatchedArray:
                ns = a.ns
                if ns.level > top.level:
                    top = ns
                if ns is self:
                    mine = True
                    a = a.value
                if type(a) is BatchedArray:
                    if best is None or a.ns.level > best.level:
                        best = a.ns
                    continue
            if other is None and hasattr(a, "shape") and not isinstance(a, (np.ndarray, np.generic)):
                other = a
        if top is not self:
            return top.call(prim, args, kw)           # an inner vmap's value among them: its level first
        ns = best if best is not None else bottom_namespace(self.base, other) if other is not None else self.base
        if not mine:
            return getattr(ns, prim)(*args, **kw)
        d = lookup(prim)
        rule = None if d is None else d.batch
        if rule is None:
            raise NotImplementedError(f"gpuad.vmap: xp.{prim} has no batching rule (its declaration in "
                                      f"gpuad/xp/vocabulary.py names none)")
        out = rule(Batch(self.level, self.size, ns, self._mine), prim, args, kw)
        if isinstance(out, (tuple, list)):
            return type(out)(BatchedArray(o, self) for o in out)
        return BatchedArray(out, self)

    # gpuad's extras whose numpy form reads the array's memory
    def getitem(self, a, index):
        return self.call("getitem", (a, index), {})

    def assume_none(self, mask, what):
        """A value check (targets in range, none ignored) over the whole batch: on numbers,
        whether no example's mask is set; in a trace, the trace's check on all of them."""
        while isinstance(mask, BatchedArray):
            mask = mask.value
        xp = getattr(mask, "_xp", None)
        return xp.assume_none(mask, what) if xp is not None else not bool(mask.any())

    def copyto(self, dst, src, casting="same_kind", where=True):
        return _copyto(dst, src, casting, where)

    def buffer(self, shape, dtype):
        return None                 # the op allocates its own (batched) result
