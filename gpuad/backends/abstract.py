"""Abstract evaluation: run forward and VJP code on shapes and dtypes alone.

`abstract_ns` speaks the same `xp` vocabulary as numpy_ns, but its arrays are
AbstractArray objects that carry a shape, a dtype and, for views, the array
they view (`base`, as numpy does). Nothing is computed and nothing is
allocated, so running an op's forward here is its shape-and-dtype rule, and
running its VJP here tells the memory planner exactly which gradients are
fresh buffers, which are views, and which were written into the incoming
gradient (`out=g`): the same code the engine runs, on sizes.

Dtypes follow numpy's own resolution (`ufunc.resolve_dtypes`, Python scalars
weak), so an abstract result has the dtype the real one will have.

>>> import numpy as np
>>> from gpuad.backends.abstract import AbstractArray, abstract_ns as xp
>>> x = AbstractArray((3, 1), np.float32)
>>> y = xp.multiply(x, AbstractArray((4,), np.float32))
>>> y.shape, y.dtype, y.base is None
((3, 4), dtype('float32'), True)
>>> xp.reshape(y, (12,)).base is y
True
"""
import math

import numpy as np

from ..xp import lookup

_EMPTY = np.dtype([])       # itemsize 0: index arithmetic on any shape, no memory


class Sized:
    """len() and iteration over the first axis, as numpy's: for the arrays that stand in
    for one (AbstractArray and the Tracer built on it, vmap's BatchedArray)."""
    __slots__ = ()

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class AbstractArray(Sized):
    """A shape and a dtype standing in for an array; `base` is set for views."""

    __slots__ = ("shape", "dtype", "base", "__weakref__")

    def __init__(self, shape, dtype, base=None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.base = base

    @classmethod
    def like(cls, a):
        """The abstract twin of a real array (or of another abstract one)."""
        return cls(a.shape, a.dtype)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    itemsize = property(lambda self: self.dtype.itemsize)
    nbytes = property(lambda self: math.prod(self.shape) * self.dtype.itemsize)

    def copy(self):
        return AbstractArray(self.shape, self.dtype)

    def astype(self, dtype, copy=True):
        return abstract_ns.astype(self, dtype) if copy is False else AbstractArray(self.shape, dtype)

    def reshape(self, *shape):
        return abstract_ns.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)

    def __getitem__(self, index):
        return abstract_ns.getitem(self, index)

    # operators, for VJP code that writes `p - 1` on its saved values
    __add__ = lambda self, o: abstract_ns.add(self, o)  # noqa: E731
    __radd__ = lambda self, o: abstract_ns.add(o, self)  # noqa: E731
    __sub__ = lambda self, o: abstract_ns.subtract(self, o)  # noqa: E731
    __rsub__ = lambda self, o: abstract_ns.subtract(o, self)  # noqa: E731
    __mul__ = lambda self, o: abstract_ns.multiply(self, o)  # noqa: E731
    __rmul__ = lambda self, o: abstract_ns.multiply(o, self)  # noqa: E731
    __truediv__ = lambda self, o: abstract_ns.divide(self, o)  # noqa: E731
    __neg__ = lambda self: abstract_ns.negative(self)  # noqa: E731

    def __repr__(self):
        return f"AbstractArray({self.shape}, {self.dtype}{', view' if self.base is not None else ''})"


def _root(a):
    while isinstance(a.base, AbstractArray):
        a = a.base
    return a


def _shape(a):
    return tuple(a.shape) if hasattr(a, "shape") else ()


def _dtype_arg(a):
    """What ufunc.resolve_dtypes takes: a dtype, or a Python type for a weak scalar."""
    if hasattr(a, "dtype"):
        return np.dtype(a.dtype)
    if isinstance(a, bool):
        return np.dtype(bool)
    if isinstance(a, (int, float, complex)):
        return type(a)
    return np.asarray(a).dtype


def _view(a, shape, dtype=None):
    return AbstractArray(shape, a.dtype if dtype is None else dtype, base=_root(a) if isinstance(a, AbstractArray) else None)


def _reduced(shape, axis, keepdims):
    if axis is None:
        return (1,) * len(shape) if keepdims else ()
    axes = {a % len(shape) for a in ((axis,) if isinstance(axis, (int, np.integer)) else axis)}
    return tuple(1 if i in axes else n for i, n in enumerate(shape) if keepdims or i not in axes)


def _concrete_index(i):
    """An index item numpy can apply to a zero-byte dummy: abstract integer arrays
    become zero-stride integer arrays of their shape."""
    if isinstance(i, AbstractArray):
        if i.dtype == np.bool_:
            raise ValueError("gpuad: a boolean mask whose values are unknown gives a data-dependent shape")
        return np.broadcast_to(np.intp(0), i.shape)
    if hasattr(i, "shape") and not isinstance(i, (np.ndarray, np.generic)):
        # a device index array: its shape is all the rule needs, but a mask's count of
        # True values is its result's length (read from the device: a host sync)
        if i.dtype == np.bool_:
            return i.get()
        return np.broadcast_to(np.intp(0), i.shape)
    return i


class AbstractNamespace:
    """numpy's vocabulary on AbstractArray: shapes and dtypes out, nothing computed."""

    name = "abstract"
    module = np

    # -- elementwise -----------------------------------------------------------

    def _ufunc(self, fname, args, out):
        shape = np.broadcast_shapes(*(_shape(a) for a in args))
        dtype = getattr(np, fname).resolve_dtypes(tuple(_dtype_arg(a) for a in args) + (None,))[-1]
        if out is not None:
            if tuple(out.shape) != shape:
                raise ValueError(f"gpuad: {fname} out= has shape {tuple(out.shape)}, result {shape}")
            return out
        return AbstractArray(shape, dtype)

    def where(self, cond, x, y):
        shape = np.broadcast_shapes(_shape(cond), _shape(x), _shape(y))
        return AbstractArray(shape, np.result_type(_dtype_arg(x) if not isinstance(x, (int, float)) else x,
                                                   _dtype_arg(y) if not isinstance(y, (int, float)) else y))

    def erf(self, x, out=None):
        return out if out is not None else AbstractArray(x.shape, x.dtype)

    def isfinite(self, x, out=None):
        return self._ufunc("isfinite", (x,), out)

    # -- reductions ------------------------------------------------------------

    def sum(self, a, axis=None, keepdims=False, dtype=None, out=None):
        dt = np.add.reduce(np.zeros(1, a.dtype)).dtype if dtype is None else dtype   # bool -> int64
        return AbstractArray(_reduced(a.shape, axis, keepdims), dt)

    def mean(self, a, axis=None, keepdims=False, dtype=None, out=None):
        return AbstractArray(_reduced(a.shape, axis, keepdims), a.dtype if a.dtype.kind == "f" else np.float64)

    def max(self, a, axis=None, keepdims=False, out=None):
        return AbstractArray(_reduced(a.shape, axis, keepdims), a.dtype)

    min = amax = amin = max

    # -- shapes and views ------------------------------------------------------

    def reshape(self, a, shape):
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        return _view(a, np.empty(a.shape, _EMPTY).reshape(shape).shape)

    def transpose(self, a, axes=None):
        return _view(a, np.empty(a.shape, _EMPTY).transpose(axes).shape)

    def swapaxes(self, a, i, j):
        return _view(a, np.empty(a.shape, _EMPTY).swapaxes(i, j).shape)

    def moveaxis(self, a, source, destination):
        return _view(a, np.moveaxis(np.empty(a.shape, _EMPTY), source, destination).shape)

    def flip(self, a, axis=None):
        return _view(a, a.shape)

    def pad(self, a, pad_width, mode="constant", constant_values=0):
        widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64).reshape(-1, 2) if np.size(pad_width) > 1
                                 else np.full((1, 2), int(np.asarray(pad_width).reshape(-1)[0])), (len(a.shape), 2))
        return AbstractArray(tuple(n + int(lo) + int(hi) for n, (lo, hi) in zip(a.shape, widths)), a.dtype)

    def argmax(self, a, axis=None, keepdims=False):
        return AbstractArray(_reduced(a.shape, axis, keepdims), np.int64)

    argmin = argmax

    def cumsum(self, a, axis=None):
        return AbstractArray(a.shape if axis is not None else (a.size,), a.dtype)

    cumprod = cumsum

    def broadcast_to(self, a, shape):
        return _view(a, np.broadcast_shapes(_shape(a), tuple(shape)))

    def getitem(self, a, index):
        items = tuple(_concrete_index(i) for i in index) if isinstance(index, tuple) else _concrete_index(index)
        shape = np.empty(a.shape, _EMPTY)[items].shape
        basic = all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice))
                    for i in (index if isinstance(index, tuple) else (index,)))
        return _view(a, shape) if basic else AbstractArray(shape, a.dtype)

    def astype(self, a, dtype):
        return a if np.dtype(dtype) == a.dtype else AbstractArray(a.shape, dtype)

    def asarray(self, a, dtype=None):
        # numpy returns the array itself when its dtype already matches: no new buffer
        if isinstance(a, AbstractArray) and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return AbstractArray(_shape(a), dtype or _dtype_arg(a))

    def concatenate(self, arrays, axis=0):
        shape = list(arrays[0].shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        return AbstractArray(shape, np.result_type(*(a.dtype for a in arrays)))

    def stack(self, arrays, axis=0):
        shape = list(arrays[0].shape)
        shape.insert(axis % (len(shape) + 1), len(arrays))
        return AbstractArray(shape, np.result_type(*(a.dtype for a in arrays)))

    def matmul(self, a, b, out=None):
        sa, sb = _shape(a), _shape(b)
        a2 = sa if len(sa) > 1 else (1,) + sa
        b2 = sb if len(sb) > 1 else sb + (1,)
        if a2[-1] != b2[-2]:
            raise ValueError(f"gpuad: matmul of shapes {sa} and {sb}")
        shape = np.broadcast_shapes(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
        if len(sa) == 1:
            shape = shape[:-2] + shape[-1:]
        if len(sb) == 1:
            shape = shape[:-1]
        if out is not None:
            return out
        return AbstractArray(shape, np.matmul.resolve_dtypes((_dtype_arg(a), _dtype_arg(b), None))[-1])

    def einsum(self, equation, *operands, optimize=False):
        from ..xp.subscripts import parse_einsum
        ins, out = parse_einsum(equation, [len(o.shape) for o in operands])
        sizes = {}
        for s, o in zip(ins, operands):
            sizes.update(zip(s, o.shape))
        return AbstractArray(tuple(sizes[c] for c in out), np.result_type(*(o.dtype for o in operands)))

    def dropout_keep(self, seed, tile, shape, p):
        return AbstractArray(shape, np.float32)

    def scatter_add(self, g, shape, index, unique):
        return AbstractArray(shape, g.dtype)

    # -- creation --------------------------------------------------------------

    def buffer(self, shape, dtype):
        return AbstractArray(shape, dtype)

    def zero_where(self, a, drop):
        return a

    def setitem(self, a, index, value):
        return AbstractArray(a.shape, a.dtype)

    def empty(self, shape, dtype=np.float64):
        return AbstractArray((shape,) if isinstance(shape, int) else shape, dtype)

    zeros = ones = empty

    def zeros_like(self, a, dtype=None):
        return AbstractArray(a.shape, dtype or a.dtype)

    def copyto(self, dst, src, casting="same_kind", where=True):
        return None                     # a write into dst: dst stays the buffer it was

    def eye(self, n, dtype=None):
        return AbstractArray((int(n), int(n)), dtype or np.float64)

    def arange(self, n, dtype=None):
        return AbstractArray((int(n),), dtype or np.int64)

    def __getattr__(self, fname):
        # every other name is declared (gpuad/xp/vocabulary.py) with numpy's ufunc rule:
        # broadcast shapes, numpy's dtype resolution
        d = lookup(fname)
        if d is None or d.shape != "broadcast":
            raise AttributeError(f"gpuad: the abstract namespace has no {fname!r}"
                                 + ("" if d else " (no declaration in gpuad/xp/vocabulary.py)"))

        def ufunc(*args, out=None):
            return self._ufunc(fname, args, out)
        ufunc.__name__ = fname
        setattr(self, fname, ufunc)
        return ufunc


abstract_ns = AbstractNamespace()


def root_of(a):
    """The array whose buffer `a` uses: itself, or what it is a view of."""
    return _root(a)
