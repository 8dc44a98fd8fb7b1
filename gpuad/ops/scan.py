"""Cumulative primitives along an axis: cumsum and cumprod (prod is built on cumprod).

cumsum's VJP is the reversed cumulative sum of g (read N, write N, nothing saved).
cumprod's VJP at x without zeros is reversed-cumsum(g * out) / x (keeps x and
out); where a slice holds a zero that division fails, and that slice takes the
exact form, d out_j / d x_i = prod_{k <= j, k != i} x_k, which costs n^2
memory along the axis (as torch's exact path costs n^2 time).

>>> import gpuad
>>> x = gpuad.tensor([1.0, 2.0, 0.0, 4.0], dtype="float64", requires_grad=True)
>>> gpuad.cumprod(x, 0).sum().backward()
>>> x.grad.tolist()
[3.0, 1.0, 10.0, 0.0]
"""
import numpy as np

from ..backends import any_true
from .registry import primitive, SHAPE


@primitive("cumsum", kind=SHAPE, method=True)
def cumsum(xp, x, axis):
    """Cumulative sum along `axis`."""
    return xp.cumsum(x, axis=axis)


@cumsum.defvjp
def _cumsum_vjp(xp, g, saved, node, donate):
    axis = node.params["axis"]
    return (xp.flip(xp.cumsum(xp.flip(g, axis), axis=axis), axis),)


@primitive("cumprod", kind=SHAPE, retain={"x": None, "out": None}, method=True, vjp_temps=3)
def cumprod(xp, x, axis):
    """Cumulative product along `axis`."""
    return xp.cumprod(x, axis=axis)


@cumprod.defvjp
def _cumprod_vjp(xp, g, saved, node, donate):
    x, out = saved
    axis = node.params["axis"]
    if xp.name in ("numpy", "cupy", "abstract", "trace") and not _has_zero(xp, x):
        total = xp.flip(xp.cumsum(xp.flip(xp.multiply(g, out), axis), axis=axis), axis)
        return (xp.divide(total, x, out=total),)
    return (_cumprod_exact(xp, g, x, axis),)


def _has_zero(xp, x):
    if xp.name == "trace":
        # gpuad.compile: the division path, as eager takes it, and a check at each replay
        # (a zero there runs that call eagerly, which takes the exact path)
        return not xp.assume_none(xp.equal(x, 0), "a cumprod input holds a zero")
    return xp.name != "abstract" and any_true(xp.any(xp.equal(x, 0)))


def _cumprod_exact(xp, g, x, axis):
    """d/dx_i of sum_j g_j out_j = sum_{j >= i} g_j prod_{k <= j, k != i} x_k, all i at once."""
    n = x.shape[axis]
    xl, gl = xp.swapaxes(x, axis, -1), xp.swapaxes(g, axis, -1)          # the axis last
    lead = tuple(xl.shape[:-1])
    eye = xp.asarray(np.eye(n, dtype=bool))                              # masks made on x's device
    rows = xp.where(eye, 1.0, xp.reshape(xl, lead + (1, n)))            # row i: x with x_i = 1
    c = xp.cumprod(rows, axis=-1)                                        # c[i, j] = prod_{k<=j, k!=i} x_k
    upper = xp.asarray(np.triu(np.ones((n, n), dtype=bool)))             # j >= i
    terms = xp.where(upper, xp.multiply(c, xp.reshape(gl, lead + (1, n))), 0.0)
    return xp.swapaxes(xp.sum(terms, axis=-1), axis, -1)
