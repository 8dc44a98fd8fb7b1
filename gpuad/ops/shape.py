"""Shape primitives: reshape, transpose, broadcast_to, indexing, concat, stack.

None of them saves an array: their VJPs need only shapes and indices, kept in
the node's params. Forward results are views where the backend allows (read
0, write 0); the VJPs of reshape and transpose are views of g as well.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
>>> y = x[0, ::2] * 10
>>> y.sum().backward()
>>> x.grad.numpy()
array([[10.,  0., 10.]], dtype=float32)
"""
import numpy as np

from .registry import primitive, call, SHAPE


@primitive("reshape", kind=SHAPE)
def reshape(xp, x, shape):
    """x with a new shape of the same size (a view when possible)."""
    return xp.reshape(x, shape)


@reshape.defvjp
def _reshape_vjp(xp, g, saved, node, donate):
    return (xp.reshape(g, node.parents[0].shape),)


@primitive("transpose", kind=SHAPE)
def transpose(xp, x, axes):
    """Permute the axes of x (`axes` is a full permutation)."""
    return xp.transpose(x, axes)


@transpose.defvjp
def _transpose_vjp(xp, g, saved, node, donate):
    return (xp.transpose(g, tuple(np.argsort(node.params["axes"]).tolist())),)


@primitive("broadcast_to", kind=SHAPE)
def broadcast_to(xp, x, shape):
    """A read-only broadcast view; the engine sums the gradient back."""
    return xp.broadcast_to(x, shape)


@broadcast_to.defvjp
def _broadcast_to_vjp(xp, g, saved, node, donate):
    return (g,)  # the engine's unbroadcast reduces it to the input's shape


@primitive("getitem", kind=SHAPE)
def getitem(xp, x, index, unique=True):
    """x[index]: ints, slices, None, Ellipsis, integer arrays, boolean masks."""
    return x[index]


@getitem.defvjp
def _getitem_vjp(xp, g, saved, node, donate):
    params = node.params
    return (call(scatter_add, xp, g, shape=node.parents[0].shape, index=params["index"],
                 unique=params["unique"]),)


@primitive("scatter_add", inputs=("g",), kind=SHAPE)
def scatter_add(xp, g, shape, index, unique=True):
    """zeros(shape) with g added at index: the VJP of getitem, itself differentiable."""
    return xp.scatter_add(g, shape, index, unique)


@scatter_add.defvjp
def _scatter_add_vjp(xp, gg, saved, node, donate):
    return (xp.getitem(gg, node.params["index"]),)


@primitive("setitem", inputs=("x", "value"), kind=SHAPE)
def setitem(xp, x, value, index, unique=True):
    """A copy of x with value written at index (broadcast): x[index] = value, out of place."""
    return xp.setitem(x, index, value)


@setitem.defvjp
def _setitem_vjp(xp, g, saved, node, donate):
    index = node.params["index"]
    nx, nv = node.needs
    # x's gradient is g with the overwritten places zeroed; value's is g at those places
    # (the engine sums it back over broadcasting)
    return (xp.setitem(g, index, 0.0) if nx else None), (xp.getitem(g, index) if nv else None)


@primitive("concatenate", inputs=("*",), kind=SHAPE)
def concatenate(xp, *xs, axis=0, sizes=None):
    """Join tensors along an existing axis. `sizes` (per input, along axis) is for the VJP."""
    return xp.concatenate(xs, axis=axis)


@concatenate.defvjp
def _concatenate_vjp(xp, g, saved, node, donate):
    axis, sizes = node.params["axis"], node.params["sizes"]
    grads, start = [], 0
    lead = (slice(None),) * axis
    for n, need in zip(sizes, node.needs):
        grads.append(xp.getitem(g, lead + (slice(start, start + n),)) if need else None)
        start += n
    return tuple(grads)


@primitive("stack", inputs=("*",), kind=SHAPE)
def stack(xp, *xs, axis=0):
    """Join tensors of one shape along a new axis."""
    return xp.stack(xs, axis=axis)


@stack.defvjp
def _stack_vjp(xp, g, saved, node, donate):
    lead = (slice(None),) * node.params["axis"]
    return tuple(xp.getitem(g, lead + (i,)) if need else None for i, need in enumerate(node.needs))


def selects_each_once(index):
    """True when x[index] picks every element at most once (no integer arrays),
    so its VJP can assign instead of accumulate."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, np.integer, slice))
               or getattr(i, "dtype", None) == np.bool_ for i in items)
