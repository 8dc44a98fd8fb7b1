"""Normalization primitives: layer_norm and rms_norm over the trailing dims.

Each saves its input, its weight and, per row, the statistics (mean and
reciprocal std for layer norm, reciprocal root-mean-square for rms norm):
2 floats per row, never a normalized copy. The backward rebuilds x_hat from
them in one pass and forms
    layer norm: dx = rstd (g w - mean(g w) - x_hat mean(g w x_hat))
    rms norm:   dx = rstd (g w - x_hat mean(g w x_hat))
with dw = sum over rows of g x_hat and db = sum of g.

>>> import gpuad, numpy as np
>>> x = gpuad.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
>>> y = gpuad.nn.functional.layer_norm(x, (3,))
>>> y.numpy().round(4).tolist()
[[-1.2247, 0.0, 1.2247], [-1.2247, 0.0, 1.2247]]
"""
from .registry import primitive, FUSED


def _axes(x, n):
    return tuple(range(x.ndim - n, x.ndim))


def _rows(x, n):
    """The leading axes, over which weight and bias gradients sum."""
    return tuple(range(x.ndim - n))


@primitive("layer_norm", inputs=("x", "weight", "bias"), kind=FUSED, retain={"x": None, "weight": "x"},
           has_aux=True, fwd_temps=3, vjp_temps=4)
def layer_norm(xp, x, weight, bias, ndims=1, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last `ndims` dims; aux: mean, rstd."""
    axes = _axes(x, ndims)
    mean = xp.mean(x, axis=axes, keepdims=True)
    xc = xp.subtract(x, mean)
    var = xp.mean(xp.multiply(xc, xc), axis=axes, keepdims=True)
    rstd = xp.divide(1.0, xp.sqrt(xp.add(var, eps)))
    y = xp.multiply(xc, rstd)
    if weight is not None:
        y = xp.multiply(y, weight)
    if bias is not None:
        y = xp.add(y, bias)
    return y, (mean, rstd)


@layer_norm.defvjp
def _layer_norm_vjp(xp, g, saved, node, donate):
    x, w, mean, rstd = saved
    p = node.params or {}
    ndims, eps = p.get("ndims", 1), p.get("eps", 1e-5)
    if xp.name == "tensor":          # create_graph: the statistics depend on x; recompute them wired
        axes = _axes(x, ndims)
        mean = xp.mean(x, axis=axes, keepdims=True)
        xc0 = xp.subtract(x, mean)
        rstd = xp.divide(1.0, xp.sqrt(xp.add(xp.mean(xp.multiply(xc0, xc0), axis=axes, keepdims=True), eps)))
    axes = _axes(x, ndims)
    xhat = xp.multiply(xp.subtract(x, mean), rstd)
    nx, nw, nb = node.needs
    gw = xp.multiply(g, w) if w is not None else g
    dx = None
    if nx:
        a = xp.mean(gw, axis=axes, keepdims=True)
        b = xp.mean(xp.multiply(gw, xhat), axis=axes, keepdims=True)
        dx = xp.multiply(rstd, xp.subtract(xp.subtract(gw, a), xp.multiply(xhat, b)))
    rows = _rows(x, ndims)
    dw = xp.sum(xp.multiply(g, xhat), axis=rows) if nw else None
    db = xp.sum(g, axis=rows) if nb else None
    return dx, dw, db


@primitive("rms_norm", inputs=("x", "weight"), kind=FUSED, retain={"x": None, "weight": "x"}, has_aux=True,
           fwd_temps=2, vjp_temps=3)
def rms_norm(xp, x, weight, ndims=1, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last `ndims` dims; aux: rstd."""
    axes = _axes(x, ndims)
    rstd = xp.divide(1.0, xp.sqrt(xp.add(xp.mean(xp.multiply(x, x), axis=axes, keepdims=True), eps)))
    y = xp.multiply(x, rstd)
    return (xp.multiply(y, weight) if weight is not None else y), (rstd,)


@rms_norm.defvjp
def _rms_norm_vjp(xp, g, saved, node, donate):
    x, w, rstd = saved
    p = node.params or {}
    ndims, eps = p.get("ndims", 1), p.get("eps", 1e-6)
    axes = _axes(x, ndims)
    if xp.name == "tensor":
        rstd = xp.divide(1.0, xp.sqrt(xp.add(xp.mean(xp.multiply(x, x), axis=axes, keepdims=True), eps)))
    xhat = xp.multiply(x, rstd)
    nx, nw = node.needs
    gw = xp.multiply(g, w) if w is not None else g
    dx = None
    if nx:
        b = xp.mean(xp.multiply(gw, xhat), axis=axes, keepdims=True)
        dx = xp.multiply(rstd, xp.subtract(gw, xp.multiply(xhat, b)))
    dw = xp.sum(xp.multiply(g, xhat), axis=_rows(x, ndims)) if nw else None
    return dx, dw


def _channels(x):
    """Batch norm's reduction axes: all but the channels (axis 1)."""
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(xp, p, x):
    return xp.reshape(p, (1, -1) + (1,) * (x.ndim - 2))


@primitive("batch_norm", inputs=("x", "weight", "bias"), kind=FUSED, retain={"x": None, "weight": "x"},
           has_aux=True, fwd_temps=3, vjp_temps=4)
def batch_norm(xp, x, weight, bias, eps=1e-5):
    """Batch norm with the batch's statistics: (x - mean) / sqrt(var + eps) * weight + bias,
    mean and (biased) var per channel over every other axis; aux: mean, var (1, C, 1, ...)."""
    axes = _channels(x)
    mean = xp.mean(x, axis=axes, keepdims=True)
    xc = xp.subtract(x, mean)
    var = xp.mean(xp.multiply(xc, xc), axis=axes, keepdims=True)
    y = xp.multiply(xc, xp.divide(1.0, xp.sqrt(xp.add(var, eps))))
    if weight is not None:
        y = xp.multiply(y, _per_channel(xp, weight, x))
    if bias is not None:
        y = xp.add(y, _per_channel(xp, bias, x))
    return y, (mean, var)


@batch_norm.defvjp
def _batch_norm_vjp(xp, g, saved, node, donate):
    x, w, mean, var = saved
    eps = (node.params or {}).get("eps", 1e-5)
    axes = _channels(x)
    if xp.name == "tensor":          # create_graph: the statistics depend on x; recompute them wired
        mean = xp.mean(x, axis=axes, keepdims=True)
        xc0 = xp.subtract(x, mean)
        var = xp.mean(xp.multiply(xc0, xc0), axis=axes, keepdims=True)
    rstd = xp.divide(1.0, xp.sqrt(xp.add(var, eps)))
    xhat = xp.multiply(xp.subtract(x, mean), rstd)
    nx, nw, nb = node.needs
    gw = xp.multiply(g, _per_channel(xp, w, x)) if w is not None else g
    dx = None
    if nx:
        a = xp.mean(gw, axis=axes, keepdims=True)
        b = xp.mean(xp.multiply(gw, xhat), axis=axes, keepdims=True)
        dx = xp.multiply(rstd, xp.subtract(xp.subtract(gw, a), xp.multiply(xhat, b)))
    dw = xp.sum(xp.multiply(g, xhat), axis=axes) if nw else None
    db = xp.sum(g, axis=axes) if nb else None
    return dx, dw, db
