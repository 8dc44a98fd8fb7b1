"""Fused primitives with their own backward: softmax, log_softmax, linear with
an activation, softmax cross-entropy, dropout.

Op bodies here are the generic xp code; GPU providers register their own
kernels for these primitives (gpuad/ops/fused_kernels.py), chosen by
apply() from the arrays' device.

softmax and log_softmax

Both save only their output (N elements) and subtract the row max first, so
exp never overflows. Forward: read N, write N (plus one N temporary for the
exponentials). Backward: read 2N, write N.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0, 3.0]])
>>> gpuad.softmax(x, axis=-1).numpy().round(4)
array([[0.09  , 0.2447, 0.6652]], dtype=float32)
"""
import math
import sys

from ..graph import FREED
from .registry import primitive, FUSED
from .elementwise import _tmp
from .derivatives import _gelu, _gelu_d, _sigmoid


@primitive("softmax", kind=FUSED, retain={"out": None}, fwd_temps=2, vjp_temps=1)
def softmax(xp, x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`."""
    if x.shape[axis] == 0:
        return xp.exp(x)                 # nothing to normalise (and no max of nothing)
    e = xp.exp(xp.subtract(x, xp.max(x, axis=axis, keepdims=True)))
    return xp.divide(e, xp.sum(e, axis=axis, keepdims=True), out=e)


@softmax.defvjp
def _softmax_vjp(xp, g, saved, node, donate):
    (y,) = saved
    axis = node.params["axis"]
    dot = xp.sum(xp.multiply(g, y), axis=axis, keepdims=True)
    d = xp.subtract(g, dot, out=g if donate else None)
    return (xp.multiply(d, y, out=_tmp(d)),)


@primitive("log_softmax", kind=FUSED, retain={"out": None}, fwd_temps=2, vjp_temps=1)
def log_softmax(xp, x, axis=-1):
    """x - log(sum(exp(x))) along `axis`, stable for large x."""
    if x.shape[axis] == 0:
        return xp.exp(x)                 # an empty result of x's shape and dtype
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


# --- fused linear: Y = act(X W^T + b) ------------------------------------------
#
# One primitive per activation, so each entry declares exactly what it saves:
#   linear          x (for dW), W (for dX)
#   linear_tanh     x, W, and the output Y (tanh' = 1 - Y^2)
#   linear_sigmoid  x, W, Y (sigmoid' = Y (1 - Y))
#   linear_relu     x, W, Y (relu' = [Y > 0])
#   linear_gelu     x, W, b and the pre-activation Z as aux (gelu' needs Z)
# x is kept only if W needs a gradient, W only if x does. Y is usually the next
# layer's input, so saving it costs no extra bytes.
#
# Forward on numpy: the GEMM reads MK + NK and writes MN; bias and activation
# then run in place on the output (read MN + N, write MN; read MN, write MN):
# MK + NK + N + 5MN elements, the lecture's unfused count. A fused GPU kernel
# applies both in the GEMM's epilogue: MK + NK + N + MN.
# Backward: dZ = dY * act'(saved) once (read 2MN, write MN, in place when dY is
# donated), then dX = dZ W (MNK), dW = dZ^T X (MNK), db = sum(dZ) (read MN).

LINEAR_ACTIVATIONS = (None, "relu", "tanh", "sigmoid", "gelu")


def _affine(xp, x, w, b):
    shape = tuple(x.shape[:-1]) + (w.shape[0],)
    z = xp.matmul(x, xp.swapaxes(w, -1, -2), out=xp.buffer(shape, _result_dtype(x, w)))
    if b is not None:
        z = xp.add(z, b, out=z if xp.name != "tensor" else None)
    return z


def _result_dtype(a, b):
    return a.dtype if a.dtype == b.dtype else (a.dtype.type(0) * b.dtype.type(0)).dtype


def _linear_grads(xp, dz, x, w, needs):
    """dX, dW, db from dZ: the part every fused linear shares."""
    nx, nw, nb = needs
    n_out = dz.shape[-1]
    gx = xp.matmul(dz, w, out=xp.buffer(tuple(dz.shape[:-1]) + (w.shape[1],), _result_dtype(dz, w))) \
        if nx else None
    gw = gb = None
    if nw or nb:
        rows = math.prod(dz.shape[:-1])              # (not -1: ambiguous for empty arrays)
        dz2 = xp.reshape(dz, (rows, n_out))
        if nw:
            x2 = xp.reshape(x, (rows, x.shape[-1]))
            gw = xp.matmul(xp.swapaxes(dz2, -1, -2), x2, out=xp.buffer((n_out, x.shape[-1]), _result_dtype(dz, x)))
        if nb:
            gb = xp.sum(dz2, axis=0)
    return gx, gw, gb


_LINEAR = dict(inputs=("x", "w", "b"), kind=FUSED)
_KEEP_XW = {"x": "w", "w": "x"}


@primitive("linear", retain=_KEEP_XW, fwd_temps=1, **_LINEAR)
def linear(xp, x, w, b):
    """X W^T + b (b may be None)."""
    return _affine(xp, x, w, b)


@linear.defvjp
def _linear_vjp(xp, g, saved, node, donate):
    x, w = saved
    return _linear_grads(xp, g, x, w, node.needs)


@primitive("linear_tanh", retain=dict(_KEEP_XW, out=None), fwd_temps=2, vjp_temps=2, **_LINEAR)
def linear_tanh(xp, x, w, b):
    """tanh(X W^T + b), computed in the GEMM's output buffer."""
    z = _affine(xp, x, w, b)
    return xp.tanh(z, out=z)


def dies_here(a, node, refs):
    """True when saved array `a` is released right after this VJP and nobody else
    holds it (`refs`: the references the calling VJP itself has), so the VJP may
    use its buffer as scratch instead of allocating one."""
    # getrefcount counts its own argument and our parameter `a` on top of the caller's
    return node.saved is FREED and type(a).__module__ == "numpy" and sys.getrefcount(a) - 2 <= refs


@linear_tanh.defvjp
def _linear_tanh_vjp(xp, g, saved, node, donate):
    x, w, y = saved
    # 1 - y^2 needs an MN scratch buffer; when y dies here, y itself is that
    # buffer (2 in-place passes, no allocation, one activation less at the peak).
    # References to y: the saved tuple and the local name.
    scratch = y if donate and dies_here(y, node, refs=2) else xp.buffer(y.shape, y.dtype)
    t = xp.multiply(y, y, out=scratch)
    t = xp.subtract(1.0, t, out=_tmp(t))
    dz = xp.multiply(g, t, out=g if donate else _tmp(t))
    return _linear_grads(xp, dz, x, w, node.needs)


@primitive("linear_sigmoid", retain=dict(_KEEP_XW, out=None), fwd_temps=7, vjp_temps=2, **_LINEAR)
def linear_sigmoid(xp, x, w, b):
    """sigmoid(X W^T + b)."""
    return _sigmoid(xp, _affine(xp, x, w, b))


@linear_sigmoid.defvjp
def _linear_sigmoid_vjp(xp, g, saved, node, donate):
    x, w, y = saved
    if donate and dies_here(y, node, refs=2):      # g y (1 - y), in place in g and y
        dz = xp.multiply(g, y, out=g)
        return _linear_grads(xp, xp.multiply(dz, xp.subtract(1.0, y, out=y), out=dz), x, w, node.needs)
    t = xp.subtract(1.0, y)
    t = xp.multiply(t, y, out=_tmp(t))
    dz = xp.multiply(g, t, out=g if donate else _tmp(t))
    return _linear_grads(xp, dz, x, w, node.needs)


@primitive("linear_relu", retain=dict(_KEEP_XW, out=None), fwd_temps=2, **_LINEAR)
def linear_relu(xp, x, w, b):
    """max(X W^T + b, 0), in place on the GEMM's output."""
    z = _affine(xp, x, w, b)
    return xp.maximum(z, 0, out=z)


@linear_relu.defvjp
def _linear_relu_vjp(xp, g, saved, node, donate):
    x, w, y = saved
    # select, never multiply by the 0/1 mask: an infinite dY times 0 would be NaN (torch gives 0)
    drop = xp.less_equal(y, 0)
    dz = xp.zero_where(g, drop) if donate else xp.where(drop, 0.0, g)
    return _linear_grads(xp, dz, x, w, node.needs)


@primitive("linear_gelu", retain={"x": None, "w": None, "b": None}, has_aux=True, fwd_temps=7, vjp_temps=8,
           **_LINEAR)
def linear_gelu(xp, x, w, b):
    """gelu(X W^T + b) (exact, erf); saves the pre-activation Z as aux."""
    z = _affine(xp, x, w, b)
    return _gelu(xp, z), (z,)


@linear_gelu.defvjp
def _linear_gelu_vjp(xp, g, saved, node, donate):
    x, w, b, z = saved
    if xp.name == "tensor":       # recompute Z from the wired inputs, so it is differentiable
        z = _affine(xp, x, w, b)
    dz = xp.multiply(g, _gelu_d(xp, z), out=g if donate else None)
    return _linear_grads(xp, dz, x, w, node.needs)


LINEAR_PRIMITIVES = {None: linear, "tanh": linear_tanh, "sigmoid": linear_sigmoid,
                     "relu": linear_relu, "gelu": linear_gelu}


# --- softmax cross-entropy -----------------------------------------------------
#
# Forward: one pass for the row max, one for exp and its sum (read NC twice),
# write N. Saves the logits (alive anyway as the last layer's output), the
# targets and the per-row log-sum-exp (N floats), not the NC probabilities:
# backward rebuilds them in its one pass, dlogits = (exp(logits - lse) - onehot) g.

def cross_entropy_rows(xp, logits, target):
    """Per-row losses and the row log-sum-exp (N, 1) of the generic code."""
    # Work on logits - max: the target's term is then exact where it is the max,
    # so a small loss keeps its relative precision (lse - x_t would cancel).
    m = xp.max(logits, axis=-1, keepdims=True)
    shifted = xp.subtract(logits, m)
    s = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    picked = xp.getitem(shifted, (xp.arange(logits.shape[0]), target))
    losses = xp.subtract(xp.getitem(s, (slice(None), 0)), picked)
    return losses, xp.add(s, m, out=s)


def reduce_losses(xp, losses, reduction, n):
    """mean, sum or none over per-row losses."""
    if reduction == "mean":
        return xp.divide(xp.sum(losses), n)
    return xp.sum(losses) if reduction == "sum" else losses


def loss_scale(xp, g, reduction, n):
    """How the upstream gradient scales each row: (N, 1) for none, a scalar otherwise."""
    if reduction == "none":
        return xp.reshape(g, (n, 1))
    return xp.divide(g, n) if reduction == "mean" else g


@primitive("cross_entropy", inputs=("logits", "target"), kind=FUSED, retain={"logits": None, "target": None},
           has_aux=True, fwd_temps=2, vjp_temps=2)
def cross_entropy(xp, logits, target, reduction="mean"):
    """-log softmax(logits)[target] per row, then mean, sum or none."""
    losses, lse = cross_entropy_rows(xp, logits, target)
    return reduce_losses(xp, losses, reduction, logits.shape[0]), (lse,)


@cross_entropy.defvjp
def _cross_entropy_vjp(xp, g, saved, node, donate):
    logits, target, lse = saved
    n, c = logits.shape
    if xp.name == "tensor":
        lse = _lse_tensor(xp, logits)
    p = xp.exp(xp.subtract(logits, lse))
    # p - onehot(target), the one-hot as a comparison (N C bytes, no scatter)
    onehot = xp.equal(xp.reshape(xp.arange(c), (1, c)), xp.reshape(target, (n, 1)))
    d = xp.subtract(p, onehot, out=_tmp(p))
    scale = loss_scale(xp, g, (node.params or {}).get("reduction", "mean"), n)
    return xp.multiply(d, scale, out=_tmp(d)), None


def _lse_tensor(xp, logits):
    m = xp.max(logits, axis=-1, keepdims=True)
    m = m.detach()
    return xp.add(xp.log(xp.sum(xp.exp(xp.subtract(logits, m)), axis=-1, keepdims=True)), m)


# --- dropout ---------------------------------------------------------------------
#
# The mask is drawn from the explicit generator and saved as aux (1 byte per
# element), so backward, and a checkpoint's recompute after restoring the
# generator state, see exactly the mask the forward used.

@primitive("dropout", inputs=("x", "mask"), kind=FUSED, retain={"mask": None})
def dropout(xp, x, mask, p):
    """x * mask / (1 - p). The mask (a GREY input) is drawn by the caller from gpuad's generator."""
    return xp.multiply(xp.multiply(x, mask), 1.0 / (1.0 - p))


@dropout.defvjp
def _dropout_vjp(xp, g, saved, node, donate):
    (mask,) = saved
    gx = xp.multiply(g, mask, out=g if donate else None)
    return xp.multiply(gx, 1.0 / (1.0 - node.params["p"]), out=_tmp(gx)), None
