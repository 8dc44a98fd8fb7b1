"""Fused primitives with their own backward: softmax and log_softmax.

Both save only their output (N elements) and subtract the row max first, so
exp never overflows. Forward: read N, write N (plus one N temporary for the
exponentials). Backward: read 2N, write N.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0, 3.0]])
>>> gpuad.softmax(x, axis=-1).numpy().round(4)
array([[0.09  , 0.2447, 0.6652]], dtype=float32)
"""
from .registry import primitive
from .elementwise import _tmp


@primitive("softmax", save=("out",))
def softmax(xp, x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`."""
    e = xp.exp(xp.subtract(x, xp.max(x, axis=axis, keepdims=True)))
    return xp.divide(e, xp.sum(e, axis=axis, keepdims=True), out=e)


@softmax.defvjp
def _softmax_vjp(xp, g, saved, node, donate):
    (y,) = saved
    axis = node.params["axis"]
    dot = xp.sum(xp.multiply(g, y), axis=axis, keepdims=True)
    d = xp.subtract(g, dot, out=g if donate else None)
    return (xp.multiply(d, y, out=_tmp(d)),)


@primitive("log_softmax", save=("out",))
def log_softmax(xp, x, axis=-1):
    """x - log(sum(exp(x))) along `axis`, stable for large x."""
    shifted = xp.subtract(x, xp.max(x, axis=axis, keepdims=True))
    lse = xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))
    return xp.subtract(shifted, lse, out=shifted)


@log_softmax.defvjp
def _log_softmax_vjp(xp, g, saved, node, donate):
    (y,) = saved
    axis = node.params["axis"]
    total = xp.sum(g, axis=axis, keepdims=True)
    p = xp.exp(y)
    return (xp.subtract(g, xp.multiply(p, total, out=_tmp(p)), out=g if donate else None),)
