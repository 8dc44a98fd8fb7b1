"""The hand-written public functions: argument checks and normalisation, then
one primitive; and the composite ops (mean, square, clamp, logsumexp,
squeeze, ...), written from primitives, with no VJP of their own.

Primitives that need no argument handling get a generated function instead
(gpuad/surface.py). The few generated ones the functions here call are made
here, explicitly, from their declarations (the same objects gpuad.<name> is).

Both numpy's and PyTorch's spellings are accepted where they differ
(axis/dim, keepdims/keepdim, concatenate/cat).

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
>>> gpuad.mean(x, dim=0).numpy()
array([2., 3.], dtype=float32)
"""
import builtins

import numpy as np

from . import derivatives as D, elementwise as E, fused as N, contraction as L, reduce as R, shape as S
from . import views
from .dispatch import apply, apply2, binary_entry, unary_entry
from ..backends import namespace_of
from ..xp.subscripts import expand_ellipsis
from ..dtypes import as_dtype, is_floating, result_type
from ..tensor import Tensor

# The hand-written public names (gpuad/surface.py adds the generated ones).
__all__ = ["square", "gelu", "softplus", "where", "clamp", "clip", "astype", "sum", "amax", "amin",
           "mean", "var", "std", "logsumexp", "reshape", "view", "transpose", "permute", "swapaxes",
           "broadcast_to", "expand", "expand_dims", "unsqueeze", "squeeze", "flatten", "concatenate", "concat",
           "cat", "stack", "getitem", "setitem", "matmul", "dot", "softmax", "log_softmax", "einsum", "norm",
           "vector_norm"]

# The generated functions of the primitives used below (and by nn), made here once.
add, subtract, multiply, divide = (binary_entry(op) for op in (E.add, E.subtract, E.multiply, E.divide))
maximum, minimum = binary_entry(E.maximum), binary_entry(E.minimum)
exp, log, sqrt, tanh, sigmoid, relu = (unary_entry(op) for op in (D.exp, D.log, D.sqrt, D.tanh, D.sigmoid, D.relu))
ENTRIES = (add, subtract, multiply, divide, maximum, minimum, exp, log, sqrt, tanh, sigmoid, relu)


def _shape_of(x):
    return x.shape if hasattr(x, "shape") else np.shape(x)


def square(x):
    """x * x (composite: one multiply node)."""
    return multiply(x, x)


def gelu(x, approximate="none"):
    """GELU: x * Phi(x). approximate="tanh" gives PyTorch's tanh form.

    >>> import gpuad
    >>> float(gpuad.gelu(gpuad.tensor(1.0, dtype="float64")))
    0.8413447460685429
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gpuad.gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
    return apply(D.gelu, (x,), {"approximate": approximate} if approximate != "none" else None)


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta; linear above `threshold` (PyTorch's defaults)."""
    params = None if (beta == 1.0 and threshold == 20.0) else {"beta": float(beta), "threshold": float(threshold)}
    return apply(D.softplus, (x,), params)


def where(cond, x, y):
    """x where cond is true, else y; broadcasting all three. cond gets no gradient.

    >>> import gpuad
    >>> gpuad.where(gpuad.tensor([True, False]), 1.0, gpuad.tensor([5.0, 6.0])).numpy()
    array([1., 6.], dtype=float32)
    """
    if isinstance(cond, Tensor):
        cond = cond.data
    dt = result_type(*(v.data if isinstance(v, Tensor) else v for v in (x, y)))     # torch's promotion
    x, y = (astype(v, dt) if isinstance(v, Tensor) and v.dtype != dt else v for v in (x, y))
    if not isinstance(x, Tensor) and not isinstance(y, Tensor):
        # two numbers: torch's default dtype (not numpy's float64), on the condition's device
        xp = namespace_of(cond) if hasattr(cond, "shape") else namespace_of(np.asarray(cond))
        x, y = xp.asarray(np.asarray(x, dt)), xp.asarray(np.asarray(y, dt))
    return apply(E.where, (cond, x, y), None)


def clamp(x, min=None, max=None):  # noqa: A002
    """Limit x to [min, max] (min and max numbers or tensors, broadcast against x); as
    torch: the gradient goes to x inside the bounds (ties included), to a bound tensor
    where x crossed it, and where min > max the result is max (and its gradient too).

    >>> import gpuad
    >>> gpuad.clamp(gpuad.tensor([-2.0, 0.5, 3.0]), -1, 1).numpy()
    array([-1. ,  0.5,  1. ], dtype=float32)
    """
    if min is None and max is None:
        raise ValueError("gpuad.clamp: give min, max or both")
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    lo = min.data if isinstance(min, Tensor) else min
    hi = max.data if isinstance(max, Tensor) else max
    xp = namespace_of(data)

    def bound(b, raw):
        if isinstance(b, Tensor):               # a tensor bound: in the graph, so it gets its gradient
            return b if b.dtype == data.dtype else astype(b, data.dtype)
        return xp.asarray(raw, dtype=data.dtype)
    if lo is None:
        return where(data <= hi, x, bound(max, hi))
    if hi is None:
        return where(data >= lo, x, bound(min, lo))
    inside = (data >= lo) & (data <= hi)
    crossed = lo > hi                                   # min > max: max wins, as torch
    if isinstance(crossed, (bool, np.bool_)):           # number bounds: decided here, not per element
        if crossed:
            return where(inside, x, bound(max, hi))
        upper = data > hi
    else:
        upper = (data > hi) | crossed
    if not isinstance(min, Tensor) and not isinstance(max, Tensor):   # constants: chosen on the arrays
        return where(inside, x, xp.asarray(xp.where(upper, hi, lo), dtype=data.dtype))
    return where(inside, x, where(upper, bound(max, hi), bound(min, lo)))


clip = clamp


def astype(x, dtype):
    """Cast to `dtype`; gradients are cast back."""
    dtype = as_dtype(dtype)
    if x.dtype == dtype:
        return x
    if not is_floating(dtype) and isinstance(x, Tensor):
        x = x.detach()                 # an integer or bool result carries no gradient (as in torch)
    return apply(E.astype, (x,), {"dtype": dtype})


# --- reductions ---------------------------------------------------------------

def _axis_kw(name, axis, dim, keepdims, keepdim):
    if dim is not None:
        if axis is not None:
            raise TypeError(f"gpuad.{name}: give axis or dim, not both")
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    return axis, bool(keepdims)


def _reduce(op, x, axis, keepdims):
    x = x if isinstance(x, Tensor) else Tensor(x)
    axis = _reduce_axes(x, axis, op.name)
    params = None if (axis is None and not keepdims) else {"axis": axis, "keepdims": keepdims}
    return apply(op, (x,), params)


def _reduce_axes(x, axis, name):
    """The axes a reduction runs over; a 0-d tensor's axis 0 (or -1) is the tensor itself,
    as in torch: nothing to reduce."""
    axes = R.normalize_axis(axis, x.ndim, name)
    return None if x.ndim == 0 else axes


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    """Sum over axis (None: all).

    >>> import gpuad
    >>> gpuad.sum(gpuad.tensor([[1.0, 2.0], [3.0, 4.0]]), axis=1).numpy()
    array([3., 7.], dtype=float32)
    """
    axis, keepdims = _axis_kw("sum", axis, dim, keepdims, keepdim)
    return _reduce(R.sum, x, axis, keepdims)


def amax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Maximum over axis (values only; tied maxima share the gradient, as torch.amax)."""
    axis, keepdims = _axis_kw("amax", axis, dim, keepdims, keepdim)
    _nonempty("amax", x, axis)
    return _reduce(R.max, x, axis, keepdims)


def amin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Minimum over axis (values only; tied minima share the gradient, as torch.amin)."""
    axis, keepdims = _axis_kw("amin", axis, dim, keepdims, keepdim)
    _nonempty("amin", x, axis)
    return _reduce(R.min, x, axis, keepdims)


def _nonempty(name, x, axis):
    if builtins.min(_shape_of(x), default=1) == 0:
        raise ValueError(f"gpuad.{name}: reduction over an empty tensor of shape {tuple(_shape_of(x))}")


def _count(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    return int(np.prod([shape[a] for a in axis]))


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Mean over axis: sum then one scale (composite)."""
    axis, keepdims = _axis_kw("mean", axis, dim, keepdims, keepdim)
    x = x if isinstance(x, Tensor) else Tensor(x)
    n = _count(x.shape, _reduce_axes(x, axis, "mean"))
    return multiply(_reduce(R.sum, x, axis, keepdims), 1.0 / n if n else float("nan"))


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None, ddof=None):
    """Variance over dim, as torch: unbiased (correction=1) by default; `correction`,
    `unbiased` (torch) and `ddof` (numpy) choose the divisor N - correction.

    >>> import gpuad
    >>> x = gpuad.tensor([1.0, 2.0, 3.0, 4.0])
    >>> print(f"{x.var():.4f} {x.var(correction=0):.4f} {x.var(unbiased=False):.4f}")
    1.6667 1.2500 1.2500
    """
    if isinstance(dim, bool) and unbiased is None:     # torch's old var(x, unbiased)
        dim, unbiased = None, dim
    axis, keepdims = _axis_kw("var", axis, dim, keepdim if keepdims is None else keepdims, None)
    given = [c for c in (correction, ddof, None if unbiased is None else int(unbiased)) if c is not None]
    if len(given) > 1:
        raise TypeError("gpuad.var: give one of correction, unbiased and ddof")
    ddof = given[0] if given else 1
    x = x if isinstance(x, Tensor) else Tensor(x)
    n = _count(x.shape, _reduce_axes(x, axis, "var"))
    d = subtract(x, mean(x, axis, keepdims=True))
    return multiply(sum(multiply(d, d), axis, keepdims), 1.0 / builtins.max(n - ddof, 0) if n > ddof else float("nan"))


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None, ddof=None):
    """Standard deviation: sqrt of var, with var's arguments (unbiased by default, as torch)."""
    return sqrt(var(x, dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims, ddof=ddof))


def logsumexp(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """log(sum(exp(x))): the max is subtracted first (as a constant), so exp never overflows.

    >>> import gpuad
    >>> print(f'{float(gpuad.logsumexp(gpuad.tensor([1000.0, 1000.0], dtype="float64"))):.4f}')
    1000.6931
    """
    axis, keepdims = _axis_kw("logsumexp", axis, dim, keepdims, keepdim)
    x = x if isinstance(x, Tensor) else Tensor(x)
    axes = _reduce_axes(x, axis, "logsumexp")
    xp = namespace_of(x.data)
    m = xp.max(x.data, axis=axes, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0).astype(x.dtype)
    out = add(log(sum(exp(subtract(x, m)), axes, keepdims=True)), m)
    if not keepdims:
        out = reshape(out, tuple(n for i, n in enumerate(x.shape) if axes is not None and i not in axes))
    return out


# --- shapes -------------------------------------------------------------------

def _as_shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def reshape(x, *shape):
    """x with a new shape (one -1 allowed); a view.

    >>> import gpuad
    >>> gpuad.reshape(gpuad.tensor([1.0, 2.0, 3.0, 4.0]), (2, -1)).shape
    (2, 2)
    """
    shape = _as_shape(shape)
    size = int(np.prod(x.shape))
    known = int(np.prod([s for s in shape if s != -1]))
    if shape.count(-1) > 1 or (-1 in shape and (known == 0 or size % known)) or \
            (-1 not in shape and known != size):
        raise ValueError(f"gpuad.reshape: cannot reshape a tensor of shape {tuple(x.shape)} "
                         f"(size {size}) into {shape}")
    if -1 in shape:
        shape = tuple(size // known if s == -1 else s for s in shape)
    # a new Tensor even when nothing changes, as torch
    return views.note(apply(S.reshape, (x,), {"shape": shape}), x, ("reshape", shape))


view = reshape


def transpose(x, *axes):
    """Permute axes: transpose(x) reverses them, transpose(x, (1, 0, 2)) permutes
    (numpy), transpose(x, 0, 1) swaps two (PyTorch).

    >>> import gpuad
    >>> gpuad.transpose(gpuad.zeros((2, 3, 4)), 0, 2).shape
    (4, 3, 2)
    """
    ndim = x.ndim
    if len(axes) == 0 or (len(axes) == 1 and axes[0] is None):
        perm = tuple(reversed(range(ndim)))
    elif len(axes) == 2 and all(isinstance(a, (int, np.integer)) for a in axes):
        # two separate ints: PyTorch's swap (numpy's permutation agrees for (1, 0))
        i, j = (R.normalize_axis(int(a), ndim, "transpose")[0] for a in axes)
        perm = list(range(ndim))
        perm[i], perm[j] = perm[j], perm[i]
        perm = tuple(perm)
    else:
        perm = _as_shape(axes)
        perm = tuple(p % ndim if ndim else 0 for p in perm)
        if sorted(perm) != list(range(ndim)):
            raise ValueError(f"gpuad.transpose: {axes} is not a permutation of the {ndim} axes "
                             f"of a tensor of shape {tuple(x.shape)}")
    return views.note(apply(S.transpose, (x,), {"axes": perm}), x, ("transpose", perm))


def permute(x, *dims):
    """PyTorch's permute: a full permutation of the axes."""
    return transpose(x, _as_shape(dims))


def swapaxes(x, axis1, axis2):
    """Exchange two axes (a view)."""
    return transpose(x, axis1, axis2)


def broadcast_to(x, shape):
    """A broadcast view of x; its gradient sums back to x's shape."""
    shape = tuple(shape)
    try:
        np.broadcast_shapes(tuple(x.shape), shape)
        if len(shape) < x.ndim:
            raise ValueError
    except ValueError:
        raise ValueError(f"gpuad.broadcast_to: cannot broadcast shape {tuple(x.shape)} to {shape}") from None
    return views.note(apply(S.broadcast_to, (x,), {"shape": shape}), x, ("broadcast_to", shape))


expand = broadcast_to


def expand_dims(x, axis):
    """Insert a length-1 axis at `axis` (reshape)."""
    ndim = x.ndim + 1
    axis = R.normalize_axis(axis, ndim, "expand_dims")
    shape = list(x.shape)
    for a in axis:
        shape.insert(a, 1)
    return reshape(x, tuple(shape))


unsqueeze = expand_dims


def squeeze(x, axis=None, *, dim=None):
    """Drop length-1 axes (all, or the ones named)."""
    if dim is not None:
        axis = dim
    if axis is None:
        return reshape(x, tuple(n for n in x.shape if n != 1))
    axis = R.normalize_axis(axis, x.ndim, "squeeze")
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if not (i in axis and n == 1)))


def flatten(x, start_dim=0, end_dim=-1):
    """Merge axes start_dim..end_dim into one (PyTorch's flatten)."""
    if x.ndim == 0:
        return reshape(x, (1,))
    s = R.normalize_axis(start_dim, x.ndim, "flatten")[0]
    e = R.normalize_axis(end_dim, x.ndim, "flatten")[0]
    shape = tuple(x.shape[:s]) + (int(np.prod(x.shape[s:e + 1])),) + tuple(x.shape[e + 1:])
    return reshape(x, shape)


def _tensors(name, tensors):
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"gpuad.{name}: needs at least one tensor")
    return [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]


def concatenate(tensors, axis=0, *, dim=None):
    """Join tensors along an existing axis.

    >>> import gpuad
    >>> gpuad.concat([gpuad.zeros((2, 1)), gpuad.ones((2, 2))], axis=1).shape
    (2, 3)
    """
    if dim is not None:
        axis = dim
    ts = _tensors("concat", tensors)
    ndim = ts[0].ndim
    if ndim == 0:
        raise ValueError("gpuad.concat: zero-dimensional tensors cannot be concatenated (use stack)")
    ax = R.normalize_axis(axis, ndim, "concat")[0]
    for t in ts:
        if t.ndim != ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, ts[0].shape)) if i != ax):
            raise ValueError(f"gpuad.concat: shapes {[tuple(t.shape) for t in ts]} differ outside axis {ax}")
    return apply(S.concatenate, tuple(ts), {"axis": ax, "sizes": tuple(t.shape[ax] for t in ts)})


concat = cat = concatenate


def stack(tensors, axis=0, *, dim=None):
    """Join tensors of one shape along a new axis."""
    if dim is not None:
        axis = dim
    ts = _tensors("stack", tensors)
    if any(tuple(t.shape) != tuple(ts[0].shape) for t in ts):
        raise ValueError(f"gpuad.stack: all tensors need one shape, got {[tuple(t.shape) for t in ts]}")
    ax = R.normalize_axis(axis, ts[0].ndim + 1, "stack")[0]
    return apply(S.stack, tuple(ts), {"axis": ax})


def getitem(x, index):
    """x[index] with ints, slices, None, Ellipsis, integer arrays and boolean masks."""
    xp = _device_ns(x)
    if isinstance(index, tuple):
        index = tuple(_index_item(i, xp) for i in index)
    else:
        index = _index_item(index, xp)
    try:
        out = apply(S.getitem, (x,), {"index": index, "unique": S.selects_each_once(index)})
    except IndexError as e:
        raise IndexError(f"gpuad.getitem: index {index!r} is invalid for a tensor of shape "
                         f"{tuple(x.shape)}: {e}") from None
    return views.note(out, x, ("getitem", index))


def setitem(x, index, value):
    """A copy of x with value written at index: `x[index] = value` without the mutation
    (Tensor.__setitem__ is this, then written back in place). Gradients flow to x
    (zero where overwritten) and to value.

    >>> import gpuad
    >>> x = gpuad.zeros(3); v = gpuad.tensor(2.0, requires_grad=True)
    >>> y = gpuad.setitem(x, slice(1, None), v); y.tolist()
    [0.0, 2.0, 2.0]
    >>> y.sum().backward(); v.grad.item()
    2.0
    """
    xp = _device_ns(x)
    index = tuple(_index_item(i, xp) for i in index) if isinstance(index, tuple) else _index_item(index, xp)
    return apply(S.setitem, (x, value), {"index": index, "unique": S.selects_each_once(index)})


def _device_ns(x):
    """The namespace of x's device when that is a GPU (host index arrays go there once,
    at the op, so the forward and its VJP index on the device); else None."""
    data = x.data if isinstance(x, Tensor) else x
    if type(data) is np.ndarray or getattr(data, "_xp", None) is not None:
        return None
    return namespace_of(data)


def _index_item(i, xp=None):
    if isinstance(i, Tensor):
        i = i.data
    elif isinstance(i, list):
        i = np.asarray(i)
    if hasattr(i, "dtype") and not (i.dtype.kind in "iub"):
        raise IndexError(f"gpuad.getitem: index arrays must be integer or boolean, not {i.dtype}")
    if xp is not None and isinstance(i, np.ndarray):
        i = xp.asarray(i)
    return i


# --- linear algebra and softmax -----------------------------------------------

def matmul(a, b):
    """Matrix product with batch broadcasting (numpy's rules for 1-D operands).

    >>> import gpuad
    >>> (gpuad.ones((5, 2, 3)) @ gpuad.ones((3, 4))).shape
    (5, 2, 4)
    """
    sa, sb = _shape_of(a), _shape_of(b)
    if len(sa) == 0 or len(sb) == 0:
        raise ValueError(f"gpuad.matmul: operands must have at least 1 dimension, got shapes {tuple(sa)} and {tuple(sb)}")
    ka = sa[-1]
    kb = sb[-2] if len(sb) > 1 else sb[0]
    if ka != kb:
        raise ValueError(f"gpuad.matmul: inner dimensions differ: {tuple(sa)} @ {tuple(sb)} "
                         f"({ka} != {kb})")
    if len(sa) > 2 and len(sb) > 2:
        try:
            np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
        except ValueError:
            raise ValueError(f"gpuad.matmul: batch dimensions {tuple(sa[:-2])} and {tuple(sb[:-2])} "
                             f"do not broadcast") from None
    return apply2(L.matmul, a, b)


def einsum(equation, *operands):
    """Einstein summation, as torch.einsum (operands given one by one or as a list);
    numpy picks the contraction order (pairwise, cheapest first).

    >>> import gpuad
    >>> a, b = gpuad.ones((2, 3)), gpuad.ones((3, 4))
    >>> gpuad.einsum("ij,jk->ik", a, b).shape, gpuad.einsum("ij->", [a]).item()
    ((2, 4), 6.0)
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    ops = tuple(o if isinstance(o, Tensor) else Tensor(o) for o in operands)
    if "..." in equation:
        ops, equation = _einsum_ellipsis(equation, ops)
    L.parse_einsum(equation, [o.ndim for o in ops])           # clear errors before numpy's
    dts = {o.dtype for o in ops if o.dtype.kind == "f"}
    if len(dts) > 1:
        raise TypeError(f"gpuad.einsum: operands need one floating dtype, got {sorted(map(str, dts))}")
    return apply(L.einsum, ops, {"equation": equation})


def _einsum_ellipsis(equation, ops):
    """The equation with '...' spelled out in letters, and each operand broadcast over the
    ellipsis dims it has as 1 (or lacks): einsum's own letters do not broadcast."""
    eq, ell = expand_ellipsis(equation, [o.shape for o in ops])
    ins = equation.replace(" ", "").partition("->")[0].split(",")
    out = []
    for s, o in zip(ins, ops):
        if "..." in s:
            start, w = s.index("..."), o.ndim - len(s.replace("...", ""))
            want = tuple(o.shape[:start]) + (tuple(ell[len(ell) - w:]) if w else ()) + tuple(o.shape[start + w:])
            if want != tuple(o.shape):
                o = broadcast_to(o, want)
        out.append(o)
    return tuple(out), eq


def norm(x, p="fro", dim=None, keepdim=False):
    """torch.norm: the 2-norm ('fro', the default) or the p-norm, over dim (all when None).

    >>> import gpuad
    >>> gpuad.norm(gpuad.tensor([3.0, 4.0])).item()
    5.0
    """
    if p in ("fro", None):
        p = 2
    if p == "nuc":
        raise NotImplementedError("gpuad.norm: the nuclear norm is not implemented")
    return vector_norm(x, p, dim, keepdim)


def vector_norm(x, ord=2, dim=None, keepdim=False):  # noqa: A002
    """torch.linalg.vector_norm: ord 2, 1, inf, -inf, 0 (the count of nonzeros) or any p > 0.
    The gradient at a zero norm is 0 (the subgradient torch takes)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    if isinstance(dim, int):
        dim = (dim,)
    axes = _reduce_axes(x, dim, "vector_norm")
    if ord == 0:
        return Tensor._from(namespace_of(x.data).asarray(
            (x.data != 0).sum(axis=axes, keepdims=keepdim), dtype=x.dtype))
    if not (ord > 0 or ord == -float("inf")):
        raise ValueError(f"gpuad.vector_norm: ord must be positive, 0, inf or -inf, not {ord}")
    return apply(R.vector_norm, (x,), {"ord": float(ord), "axis": axes, "keepdims": bool(keepdim)})


def dot(a, b):
    """Inner product of two 1-D tensors (matmul)."""
    return matmul(a, b)


def _softmax_axis(name, x, axis, dim):
    if dim is not None:
        axis = dim
    return R.normalize_axis(-1 if axis is None else axis, x.ndim, name)[0] if x.ndim else 0


def softmax(x, axis=-1, *, dim=None):
    """exp(x) / sum(exp(x)) along axis (default: the last)."""
    if x.ndim == 0:
        return apply(N.softmax, (reshape(x, (1,)),), {"axis": 0}).reshape(())
    return apply(N.softmax, (x,), {"axis": _softmax_axis("softmax", x, axis, dim)})


def log_softmax(x, axis=-1, *, dim=None):
    """x - logsumexp(x) along axis (default: the last), stable."""
    if x.ndim == 0:
        return apply(N.log_softmax, (reshape(x, (1,)),), {"axis": 0}).reshape(())
    return apply(N.log_softmax, (x,), {"axis": _softmax_axis("log_softmax", x, axis, dim)})

