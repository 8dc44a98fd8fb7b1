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


@primitive("vector_norm", kind=REDUCTION, retain={"x": None, "out": None}, vjp_temps=3)
def vector_norm(xp, x, ord=2.0, axis=None, keepdims=False):  # noqa: A002
    """The ord-norm of x over axis: 2 (default), 1, inf, -inf, or any p > 0."""
    a = xp.abs(x)
    if ord == 2:
        return xp.sqrt(xp.sum(xp.multiply(a, a), axis=axis, keepdims=keepdims))
    if ord == 1:
        return xp.sum(a, axis=axis, keepdims=keepdims)
    if ord == float("inf"):
        return xp.max(a, axis=axis, keepdims=keepdims)
    if ord == -float("inf"):
        return xp.min(a, axis=axis, keepdims=keepdims)
    return xp.power(xp.sum(xp.power(a, ord), axis=axis, keepdims=keepdims), 1.0 / ord)


@vector_norm.defvjp
def _vector_norm_vjp(xp, g, saved, node, donate):
    # d|x|_p / dx = sign(x) |x|^(p-1) / |x|_p^(p-1); 0 where the norm is 0 (as torch: the
    # subgradient, not 0/0); ties of the inf-norms share the gradient evenly
    x, out = saved
    p = node.params or {}
    ord_, axis, keepdims = p.get("ord", 2.0), p.get("axis"), p.get("keepdims", False)
    n = _expand(xp, out, x.shape, axis, keepdims)
    g = _expand(xp, g, x.shape, axis, keepdims)
    if ord_ == 1:
        return (xp.multiply(g, xp.sign(x)),)
    if ord_ in (float("inf"), -float("inf")):
        hit = xp.equal(xp.abs(x), n)
        count = xp.sum(hit, axis=axis, keepdims=True)
        return (xp.multiply(xp.where(hit, xp.divide(g, count), 0.0), xp.sign(x)),)
    zero = xp.equal(n, 0)
    safe = xp.where(zero, 1.0, n)
    if ord_ == 2:
        d = xp.divide(x, safe)
    else:
        d = xp.multiply(xp.sign(x), xp.divide(xp.power(xp.abs(x), ord_ - 1), xp.power(safe, ord_ - 1)))
    return (xp.multiply(g, xp.where(zero, 0.0, d)),)
