"""Index, selection and arrangement ops, composed from primitives (no VJP of their own).

gather, take_along_dim, index_select, masked_fill, tril/triu, flip, roll,
split/chunk, repeat/tile, scatter_add and index_add read or write through the
getitem, scatter_add and where primitives, so their gradients are those
primitives' (repeated indices accumulate). sort/topk/max/min along a dim return
(values, indices) as torch does; the values are a gather, so the gradient goes
to the chosen element only. cumsum/cumprod/prod wrap the scan primitives.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 5.0, 3.0]], requires_grad=True)
>>> v, i = x.max(dim=1)
>>> v.tolist(), i.tolist()
([5.0], [1])
>>> gpuad.gather(x, 1, gpuad.tensor([[2, 2]])).sum().backward(); x.grad.tolist()
[[0.0, 0.0, 2.0]]
"""
import builtins
import math
from collections import namedtuple

import numpy as np

from ..backends import namespace_of

from . import reduce as R, scan, shape as S
from .composite import amax, amin, concatenate, maximum, minimum, where, _nonempty
from .dispatch import apply
from ..tensor import Tensor

__all__ = ["argmax", "argmin", "sort", "argsort", "topk", "gather", "take_along_dim", "index_select",
           "masked_fill", "tril", "triu", "flip", "roll", "split", "chunk", "repeat", "tile", "scatter_add",
           "index_add", "cumsum", "cumprod", "prod", "max", "min"]

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])   # torch.return_types.max and friends


def _t(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def _dim(x, dim, name):
    return R.normalize_axis(dim, builtins.max(x.ndim, 1), name)[0] if x.ndim else 0


def _data(i, xp=None):
    """An index's array: a Tensor's own, or host data put on xp's device (once, here)."""
    if isinstance(i, Tensor):
        return i.data
    if hasattr(i, "shape") and not isinstance(i, np.generic):
        return i if xp is None else xp.asarray(i)
    return np.asarray(i) if xp is None else xp.asarray(i)


def _along(index, dim):
    """The advanced index that picks index[..., j, ...] along dim, broadcast as torch's gather
    (the other axes' aranges made on the index's device)."""
    index = _data(index)
    xp = namespace_of(index)
    parts = []
    for a, n in enumerate(index.shape):
        if a == dim:
            parts.append(index)
        else:
            shape = [1] * index.ndim
            shape[a] = n
            parts.append(xp.arange(n).reshape(shape))
    return tuple(parts)


# --- selection ---------------------------------------------------------------------------

def gather(x, dim, index):
    """out[i][j] = x[index[i][j]][j] for dim=0 (torch.gather): a gather through getitem.

    >>> import gpuad
    >>> gpuad.gather(gpuad.tensor([[1, 2], [3, 4]]), 1, gpuad.tensor([[0, 0], [1, 0]])).tolist()
    [[1, 1], [4, 3]]
    """
    x = _t(x)
    d = _dim(x, dim, "gather")
    if x.ndim == 0:
        return x[...]
    return x[_along(index, d)]


def take_along_dim(x, indices, dim=None):
    """torch.take_along_dim: gather with broadcasting; dim None indexes the flattened tensor."""
    x = _t(x)
    xp = _xp_of(x)
    if dim is None:
        return x.reshape(-1)[_data(indices, xp).reshape(-1)]
    d = _dim(x, dim, "take_along_dim")
    idx = _data(indices, xp)
    shape = [builtins.max(a, b) if i != d else b for i, (a, b) in enumerate(zip(x.shape, idx.shape))]
    idx = xp.broadcast_to(idx, shape)
    return x[_along(idx, d)]


def index_select(x, dim, index):
    """The slices of x at `index` along dim."""
    x = _t(x)
    d = _dim(x, dim, "index_select")
    return x[(slice(None),) * d + (_data(index, _xp_of(x)).reshape(-1),)]


def masked_fill(x, mask, value):
    """x with value where mask is true (a selection: the gradient there is 0)."""
    return where(mask, value, x)


def _tri(x, diagonal, lower):
    x = _t(x)
    if x.ndim < 2:
        raise ValueError(f"gpuad.{'tril' if lower else 'triu'}: needs at least 2 dimensions, got shape {x.shape}")
    n, m = x.shape[-2:]
    keep = np.tri(n, m, diagonal, dtype=bool) if lower else ~np.tri(n, m, diagonal - 1, dtype=bool)
    return where(Tensor._from(_xp_of(x).asarray(keep)), x, 0)        # the mask on x's device


def tril(x, diagonal=0):
    """The lower triangle of the last two dims (the rest 0)."""
    return _tri(x, diagonal, True)


def triu(x, diagonal=0):
    """The upper triangle of the last two dims (the rest 0)."""
    return _tri(x, diagonal, False)


# --- arrangement ---------------------------------------------------------------------------

def flip(x, dims):
    """Reverse the order along dims (a view: a negative-step slice)."""
    x = _t(x)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    axes = R.normalize_axis(dims, x.ndim, "flip") or ()
    return x[tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(x.ndim))]


def roll(x, shifts, dims=None):
    """Shift elements along dims, wrapping around (torch.roll)."""
    x = _t(x)
    if dims is None:
        return roll(x.reshape(-1), shifts, 0).reshape(x.shape)
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if len(shifts) != len(dims):
        raise ValueError(f"gpuad.roll: {len(shifts)} shifts for {len(dims)} dims")
    for s, d in zip(shifts, dims):
        d = _dim(x, d, "roll")
        n = x.shape[d]
        if n == 0:
            continue
        s %= n
        if s:
            lead = (slice(None),) * d
            x = concatenate([x[lead + (slice(n - s, None),)], x[lead + (slice(0, n - s),)]], axis=d)
    return x


def split(x, split_size_or_sections, dim=0):
    """Views of x along dim: pieces of one size (the last may be smaller), or of the given sizes."""
    x = _t(x)
    d = _dim(x, dim, "split")
    n = x.shape[d]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size <= 0:
            raise ValueError(f"gpuad.split: split size must be positive, got {size}")
        sizes = [builtins.min(size, n - s) for s in range(0, n, size)] or [0]
    else:
        sizes = list(split_size_or_sections)
        if builtins.sum(sizes) != n:
            raise ValueError(f"gpuad.split: sizes {sizes} do not add up to {n}, the length of dim {d}")
    out, start, lead = [], 0, (slice(None),) * d
    for s in sizes:
        out.append(x[lead + (slice(start, start + s),)])
        start += s
    return tuple(out)


def chunk(x, chunks, dim=0):
    """At most `chunks` views of near-equal size along dim (torch.chunk)."""
    x = _t(x)
    n = x.shape[_dim(x, dim, "chunk")]
    return split(x, builtins.max(math.ceil(n / chunks), 1), dim) if n else split(x, 1, dim)


def repeat(x, *sizes):
    """torch's Tensor.repeat: tile x sizes[i] times along each dim (leading dims added)."""
    x = _t(x)
    sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else tuple(sizes)
    if len(sizes) < x.ndim:
        raise ValueError(f"gpuad.repeat: {len(sizes)} sizes for a tensor with {x.ndim} dims")
    x = x.reshape((1,) * (len(sizes) - x.ndim) + x.shape)
    inter, final = [], []
    for r, n in zip(sizes, x.shape):
        inter += [1, n]
        final.append(r * n)
    expanded = x.reshape(tuple(inter)).expand(tuple(v for r, n in zip(sizes, x.shape) for v in (r, n)))
    return expanded.reshape(tuple(final))


def tile(x, dims):
    """torch.tile: repeat, with missing leading sizes taken as 1."""
    x = _t(x)
    dims = tuple(dims)
    return repeat(x, (1,) * (x.ndim - len(dims)) + dims)


# --- scatter -------------------------------------------------------------------------------

def scatter_add(x, dim, index, src):
    """x with src[i][j] added at [index[i][j]][j] (dim=0), out of place; repeated indices add."""
    x, src = _t(x), _t(src)
    d = _dim(x, dim, "scatter_add")
    idx = _data(index)
    part = src[tuple(slice(0, n) for n in idx.shape)] if src.shape != idx.shape else src
    return x + apply(S.scatter_add, (part,), {"shape": x.shape, "index": _along(idx, d), "unique": False})


def index_add(x, dim, index, source, alpha=1):
    """x with alpha * source[..., i, ...] added at x[..., index[i], ...], out of place."""
    x, source = _t(x), _t(source)
    d = _dim(x, dim, "index_add")
    idx = (slice(None),) * d + (_data(index).reshape(-1),)
    if alpha != 1:
        source = source * alpha
    return x + apply(S.scatter_add, (source,), {"shape": x.shape, "index": idx, "unique": False})


# --- sorting and indices ---------------------------------------------------------------------

def _arg(x, dim, keepdim, fn, name):
    """argmax/argmin on x's device: the indices stay there (no host round trip)."""
    x = _t(x)
    xp = _xp_of(x)
    if dim is None:
        return Tensor._from(xp.asarray(fn(x.data.reshape(-1))))
    d = _dim(x, dim, name)
    out = fn(x.data, axis=d) if x.ndim else fn(x.data.reshape(1), axis=0)
    if keepdim and x.ndim:
        out = xp.expand_dims(out, d)
    return Tensor._from(xp.asarray(out))


def argmax(x, dim=None, keepdim=False, *, axis=None):
    """Index of the largest value (first of ties), along dim or of the flattened tensor."""
    return _arg(x, dim if axis is None else axis, keepdim, _xp_of(x).argmax, "argmax")


def argmin(x, dim=None, keepdim=False, *, axis=None):
    """Index of the smallest value (first of ties), along dim or of the flattened tensor."""
    return _arg(x, dim if axis is None else axis, keepdim, _xp_of(x).argmin, "argmin")


def _xp_of(x):
    return namespace_of(x.data if isinstance(x, Tensor) else np.asarray(x))


def _picked(x, idx, d, keepdim):
    """(values, indices): values gathered at idx along d, so the gradient goes there only."""
    xp = _xp_of(x)
    idx = xp.asarray(idx)
    idx_k = xp.expand_dims(idx, d) if x.ndim else idx.reshape(())
    values = take_along_dim(x, Tensor._from(idx_k), d) if x.ndim else x.reshape(())
    if not keepdim and x.ndim:
        values = values.squeeze(d)
    else:
        idx = idx_k
    return ValuesIndices(values, Tensor._from(idx))


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    """As torch.max: the largest value of all; along a dim, (values, indices) with the
    gradient to the first maximum; of two tensors, the elementwise maximum.

    >>> import gpuad
    >>> x = gpuad.tensor([[1.0, 4.0], [3.0, 2.0]])
    >>> x.max().item(), x.max(dim=0).values.tolist(), x.max(1).indices.tolist()
    (4.0, [3.0, 4.0], [1, 0])
    """
    return _extreme("max", x, dim, keepdim, axis, keepdims)


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    """As torch.min: the smallest value; along a dim, (values, indices); of two tensors,
    the elementwise minimum."""
    return _extreme("min", x, dim, keepdim, axis, keepdims)


def _extreme(name, x, dim, keepdim, axis, keepdims):
    largest = name == "max"
    if isinstance(dim, Tensor):                       # torch.max(a, b): elementwise
        return (maximum if largest else minimum)(x, dim)
    dim = dim if axis is None else axis
    keepdim = keepdim if keepdims is None else keepdims
    if dim is None:
        return (amax if largest else amin)(x)
    _nonempty(name, x, dim)
    return (max_along if largest else min_along)(x, dim, keepdim)


def max_along(x, dim, keepdim=False):
    """torch.max(x, dim): (values, indices); the gradient goes to the first maximum."""
    x = _t(x)
    d = _dim(x, dim, "max")
    return _picked(x, _xp_of(x).argmax(x.data, axis=d) if x.ndim else np.int64(0), d, keepdim)


def min_along(x, dim, keepdim=False):
    """torch.min(x, dim): (values, indices); the gradient goes to the first minimum."""
    x = _t(x)
    d = _dim(x, dim, "min")
    return _picked(x, _xp_of(x).argmin(x.data, axis=d) if x.ndim else np.int64(0), d, keepdim)


def argsort(x, dim=-1, descending=False, stable=False):
    """Indices that sort x along dim."""
    x = _t(x)
    xp = _xp_of(x)
    if x.ndim == 0:
        return Tensor._from(xp.asarray(np.zeros((), np.int64)))
    d = _dim(x, dim, "argsort")
    data = x.data
    stable = {"kind": "stable"} if xp.name == "numpy" else {}        # CuPy's sort is stable already
    if descending and data.dtype.kind == "b":
        idx = xp.flip(xp.argsort(data, axis=d, **stable), d)
    else:
        idx = xp.argsort(-data if descending else data, axis=d, **stable)
    return Tensor._from(idx)


def sort(x, dim=-1, descending=False, stable=False):
    """(values, indices) of x sorted along dim; the gradient follows each value."""
    x = _t(x)
    idx = argsort(x, dim, descending, stable)
    if x.ndim == 0:
        return ValuesIndices(x.reshape(()), idx)
    return ValuesIndices(take_along_dim(x, idx, _dim(x, dim, "sort")), idx)


def topk(x, k, dim=-1, largest=True, sorted=True):  # noqa: A002
    """(values, indices) of the k largest (or smallest) along dim."""
    x = _t(x)
    d = _dim(x, dim, "topk")
    n = x.shape[d] if x.ndim else 1
    if not 0 <= k <= n:
        raise ValueError(f"gpuad.topk: k={k} is out of range for a dimension of size {n}")
    idx = argsort(x, d, descending=largest).data
    idx = idx[(slice(None),) * d + (slice(0, k),)] if x.ndim else idx
    return ValuesIndices(take_along_dim(x, idx, d) if x.ndim else x.reshape(()), Tensor._from(idx))


# --- cumulative ------------------------------------------------------------------------------

def cumsum(x, dim, *, dtype=None):
    """Cumulative sum along dim."""
    x = _t(x) if dtype is None else _t(x).astype(dtype)
    if x.ndim == 0:
        return x.reshape(())
    return apply(scan.cumsum, (x,), {"axis": _dim(x, dim, "cumsum")})


def cumprod(x, dim, *, dtype=None):
    """Cumulative product along dim (exact gradients with zeros)."""
    x = _t(x) if dtype is None else _t(x).astype(dtype)
    if x.ndim == 0:
        return x.reshape(())
    return apply(scan.cumprod, (x,), {"axis": _dim(x, dim, "cumprod")})


def prod(x, dim=None, keepdim=False, *, dtype=None, axis=None):
    """Product over dim (all when None): the last element of a cumulative product."""
    x = _t(x) if dtype is None else _t(x).astype(dtype)
    dim = dim if axis is None else axis
    if dim is None:
        flat = x.reshape(-1)
        if flat.shape[0] == 0:
            return x.sum() * 0 + 1
        out = cumprod(flat, 0)[-1]
        return out.reshape((1,) * x.ndim) if keepdim else out
    if x.ndim == 0:
        return x.reshape(())
    d = _dim(x, dim, "prod")
    if x.shape[d] == 0:
        return x.sum(dim=d, keepdim=keepdim) * 0 + 1
    out = cumprod(x, d)[(slice(None),) * d + (slice(-1, None),)]
    return out if keepdim else out.squeeze(d)
