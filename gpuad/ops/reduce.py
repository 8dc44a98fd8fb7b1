"""Reductions: sum and max/min are primitives; mean is built from sum.

The VJP of sum saves nothing: it needs only the input's shape, which the
node's parent already records (HIPS autograd's trick). max saves its input
and output to find the winners; ties share the gradient evenly (as
torch.amax and jax.numpy.max do).

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 5.0], [3.0, 2.0]], requires_grad=True)
>>> x.amax(axis=1).sum().backward()
>>> x.grad.numpy()
array([[0., 1.],
       [1., 0.]], dtype=float32)
"""
import builtins

from .registry import primitive, REDUCTION


def normalize_axis(axis, ndim, op):
    """None, an int or a sequence of ints -> None or a sorted tuple of non-negative ints."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or not -builtins.max(ndim, 1) <= a < builtins.max(ndim, 1):
            raise ValueError(f"gpuad.{op}: axis {axis!r} is out of range for a tensor with {ndim} dims")
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"gpuad.{op}: axis {axis!r} repeats a dimension")
    return tuple(sorted(out))


def keepdims_shape(shape, axis):
    """The shape of a reduction over `axis` with keepdims=True."""
    if axis is None:
        return (1,) * len(shape)
    return tuple(1 if i in axis else n for i, n in enumerate(shape))


def _expand(xp, g, in_shape, axis, keepdims):
    """Bring a reduced gradient back to the broadcastable keepdims shape."""
    if not keepdims:
        g = xp.reshape(g, keepdims_shape(in_shape, axis))
    return g


@primitive("sum", kind=REDUCTION)
def sum(xp, x, axis=None, keepdims=False):  # noqa: A001
    """Sum over `axis` (None: all). Saves nothing."""
    return xp.sum(x, axis=axis, keepdims=keepdims)


@sum.defvjp
def _sum_vjp(xp, g, saved, node, donate):
    params = node.params or {}
    shape = node.parents[0].shape
    g = _expand(xp, g, shape, params.get("axis"), params.get("keepdims", False))
    return (xp.broadcast_to(g, shape),)


def _extreme_vjp(xp, g, saved, node, donate):
    x, out = saved
    params = node.params or {}
    axis, keepdims = params.get("axis"), params.get("keepdims", False)
    out = _expand(xp, out, x.shape, axis, keepdims)
    g = _expand(xp, g, x.shape, axis, keepdims)
    winners = xp.equal(x, out)
    count = xp.sum(winners, axis=axis, keepdims=True)
    return (xp.multiply(winners, xp.divide(g, count)),)


@primitive("max", kind=REDUCTION, retain={"x": None, "out": None}, vjp_temps=3)
def max(xp, x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over `axis`; tied maxima share the gradient evenly."""
    return xp.max(x, axis=axis, keepdims=keepdims)


max.defvjp(_extreme_vjp)


@primitive("min", kind=REDUCTION, retain={"x": None, "out": None}, vjp_temps=3)
def min(xp, x, axis=None, keepdims=False):  # noqa: A001
    """Minimum over `axis`; tied minima share the gradient evenly."""
    return xp.min(x, axis=axis, keepdims=keepdims)


min.defvjp(_extreme_vjp)
