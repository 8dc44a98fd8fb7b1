"""Fused primitives with their own backward: softmax and log_softmax.

Both save only their output (N elements) and subtract the row max first, so
exp never overflows. Forward: read N, write N (plus one N temporary for the
exponentials). Backward: read 2N, write N.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0, 3.0]])
>>> gpuad.softmax(x, axis=-1).numpy().round(4)
array([[0.09  , 0.2447, 0.6652]], dtype=float32)
"""
import sys

from ..backends.kernels import provider_for
from ..graph import FREED
from .registry import primitive
from .elementwise import _tmp


@primitive("softmax", save=("out",))
def softmax(xp, x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`."""
    e = xp.exp(xp.subtract(x, xp.max(x, axis=axis, keepdims=True)))
    return xp.divide(e, xp.sum(e, axis=axis, keepdims=True), out=e)


@softmax.defvjp(grad_kinds=lambda node, donate: ("g",) if donate else ("fresh",), vjp_temps=1)
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


@log_softmax.defvjp(grad_kinds=lambda node, donate: ("g",) if donate else ("fresh",), vjp_temps=1)
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
        dz2 = xp.reshape(dz, (-1, n_out))
        if nw:
            x2 = xp.reshape(x, (-1, x.shape[-1]))
            gw = xp.matmul(xp.swapaxes(dz2, -1, -2), x2, out=xp.buffer((n_out, x.shape[-1]), _result_dtype(dz, x)))
        if nb:
            gb = xp.sum(dz2, axis=0)
    return gx, gw, gb


def _fused_forward(xp, x, w, b, activation):
    """(Y, Z or None) from the kernel provider for this device, or None for the generic code."""
    k = provider_for(xp)
    return k.linear_forward(xp, x, w, b, activation) if k is not None else None


def _fused_backward(xp, g, x, w, s, activation, node):
    k = provider_for(xp)
    if k is None:
        return None
    x_shape = node.parents[0].shape if node.needs[0] else None
    w_shape = (g.shape[-1], x.shape[-1] if x is not None else w.shape[1])
    return k.linear_backward(xp, g, x, w, s, activation, node.needs, x_shape, w_shape)


@primitive("linear", nin=3, save=(0, 1), save_if=(1, 0))
def linear(xp, x, w, b):
    """X W^T + b (b may be None)."""
    fused = _fused_forward(xp, x, w, b, None)
    return fused[0] if fused is not None else _affine(xp, x, w, b)


@linear.defvjp
def _linear_vjp(xp, g, saved, node, donate):
    x, w = saved
    fused = _fused_backward(xp, g, x, w, None, None, node)
    return fused if fused is not None else _linear_grads(xp, g, x, w, node.needs)


@primitive("linear_tanh", nin=3, save=(0, 1, "out"), save_if=(1, 0, None))
def linear_tanh(xp, x, w, b):
    """tanh(X W^T + b), computed in the GEMM's output buffer."""
    fused = _fused_forward(xp, x, w, b, "tanh")
    if fused is not None:
        return fused[0]
    z = _affine(xp, x, w, b)
    return xp.tanh(z, out=z)


def dies_here(a, node, refs):
    """True when saved array `a` is released right after this VJP and nobody else
    holds it (`refs`: the references the calling VJP itself has), so the VJP may
    use its buffer as scratch instead of allocating one."""
    # getrefcount counts its own argument and our parameter `a` on top of the caller's
    return node.saved is FREED and type(a).__module__ == "numpy" and sys.getrefcount(a) - 2 <= refs


@linear_tanh.defvjp(vjp_temps=2)
def _linear_tanh_vjp(xp, g, saved, node, donate):
    x, w, y = saved
    fused = _fused_backward(xp, g, x, w, y, "tanh", node)
    if fused is not None:
        return fused
    # 1 - y^2 needs an MN scratch buffer; when y dies here, y itself is that
    # buffer (2 in-place passes, no allocation, one activation less at the peak).
    # References to y: the saved tuple and the local name.
    scratch = y if donate and dies_here(y, node, refs=2) else xp.buffer(y.shape, y.dtype)
    t = xp.multiply(y, y, out=scratch)
    t = xp.subtract(1.0, t, out=_tmp(t))
    dz = xp.multiply(g, t, out=g if donate else _tmp(t))
    return _linear_grads(xp, dz, x, w, node.needs)


@primitive("linear_sigmoid", nin=3, save=(0, 1, "out"), save_if=(1, 0, None))
def linear_sigmoid(xp, x, w, b):
    """sigmoid(X W^T + b)."""
    from .elementwise import _sigmoid
    fused = _fused_forward(xp, x, w, b, "sigmoid")
    return fused[0] if fused is not None else _sigmoid(xp, _affine(xp, x, w, b))


@linear_sigmoid.defvjp(vjp_temps=2)
def _linear_sigmoid_vjp(xp, g, saved, node, donate):
    x, w, y = saved
    fused = _fused_backward(xp, g, x, w, y, "sigmoid", node)
    if fused is not None:
        return fused
    if donate and dies_here(y, node, refs=2):      # g y (1 - y), in place in g and y
        dz = xp.multiply(g, y, out=g)
        return _linear_grads(xp, xp.multiply(dz, xp.subtract(1.0, y, out=y), out=dz), x, w, node.needs)
    t = xp.subtract(1.0, y)
    t = xp.multiply(t, y, out=_tmp(t))
    dz = xp.multiply(g, t, out=g if donate else _tmp(t))
    return _linear_grads(xp, dz, x, w, node.needs)


@primitive("linear_relu", nin=3, save=(0, 1, "out"), save_if=(1, 0, None))
def linear_relu(xp, x, w, b):
    """max(X W^T + b, 0), in place on the GEMM's output."""
    fused = _fused_forward(xp, x, w, b, "relu")
    if fused is not None:
        return fused[0]
    z = _affine(xp, x, w, b)
    return xp.maximum(z, 0, out=z)


@linear_relu.defvjp
def _linear_relu_vjp(xp, g, saved, node, donate):
    x, w, y = saved
    fused = _fused_backward(xp, g, x, w, y, "relu", node)
    if fused is not None:
        return fused
    if donate and dies_here(y, node, refs=2):      # sign(y) is the 0/1 mask, written into y
        dz = xp.multiply(g, xp.sign(y, out=y), out=g)
        return _linear_grads(xp, dz, x, w, node.needs)
    dz = xp.multiply(g, xp.greater(y, 0), out=g if donate else None)
    return _linear_grads(xp, dz, x, w, node.needs)


@primitive("linear_gelu", nin=3, save=(0, 1, 2), has_aux=True)
def linear_gelu(xp, x, w, b):
    """gelu(X W^T + b) (exact, erf); saves the pre-activation Z as aux."""
    from .elementwise import gelu
    fused = _fused_forward(xp, x, w, b, "gelu")
    if fused is not None:
        return fused[0], (fused[1],)
    z = _affine(xp, x, w, b)
    return gelu.fwd(xp, z), (z,)


@linear_gelu.defvjp(vjp_temps=8)
def _linear_gelu_vjp(xp, g, saved, node, donate):
    from .elementwise import _gelu_vjp
    x, w, b, z = saved
    fused = _fused_backward(xp, g, x, w, z, "gelu", node)
    if fused is not None:
        return fused
    if xp.name == "tensor":       # recompute Z from the wired inputs, so it is differentiable
        z = _affine(xp, x, w, b)
    (dz,) = _gelu_vjp(xp, g, (z,), _NoParams, donate)
    return _linear_grads(xp, dz, x, w, node.needs)


class _NoParams:
    params = None


# forward: bias add and activation each read and rewrite the MN output once
linear.fwd_temps = 1
linear_tanh.fwd_temps = linear_relu.fwd_temps = 2
linear_sigmoid.fwd_temps, linear_gelu.fwd_temps = 7, 7
softmax.fwd_temps = log_softmax.fwd_temps = 2

LINEAR_PRIMITIVES = {None: linear, "tanh": linear_tanh, "sigmoid": linear_sigmoid,
                     "relu": linear_relu, "gelu": linear_gelu}


# --- softmax cross-entropy -----------------------------------------------------
#
# Forward: one pass for the row max, one for exp and its sum (read NC twice),
# write N. Saves the logits (alive anyway as the last layer's output), the
# targets and the per-row log-sum-exp (N floats), not the NC probabilities:
# backward rebuilds them in its one pass, dlogits = (exp(logits - lse) - onehot) g.

@primitive("cross_entropy", nin=2, save=(0, 1), has_aux=True)
def cross_entropy(xp, logits, target, reduction="mean"):
    """-log softmax(logits)[target] per row, then mean, sum or none."""
    k = provider_for(xp)
    fused = k.cross_entropy_forward(xp, logits, target) if k is not None else None
    if fused is not None:
        losses, lse = fused
        losses = losses.astype(logits.dtype)
        out = xp.divide(xp.sum(losses), logits.shape[0]) if reduction == "mean" else (
            xp.sum(losses) if reduction == "sum" else losses)
        return out, (xp.reshape(lse.astype(logits.dtype), (-1, 1)),)
    # Work on logits - max: the target's term is then exact where it is the max,
    # so a small loss keeps its relative precision (lse - x_t would cancel).
    m = xp.max(logits, axis=-1, keepdims=True)
    shifted = xp.subtract(logits, m)
    s = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    picked = shifted[xp.arange(logits.shape[0]), target]
    losses = xp.subtract(s[:, 0], picked)
    lse = xp.add(s, m, out=s)
    if reduction == "mean":
        out = xp.divide(xp.sum(losses), logits.shape[0])
    elif reduction == "sum":
        out = xp.sum(losses)
    else:
        out = losses
    return out, (lse,)


cross_entropy.fwd_temps = 2


@cross_entropy.defvjp(vjp_temps=2)
def _cross_entropy_vjp(xp, g, saved, node, donate):
    logits, target, lse = saved
    reduction = (node.params or {}).get("reduction", "mean")
    n, c = logits.shape
    k = provider_for(xp)
    if k is not None:
        scale = xp.multiply(xp.ones((n,), logits.dtype), g if reduction != "mean" else xp.divide(g, n)) \
            if reduction != "none" else g
        fused = k.cross_entropy_backward(xp, logits, target, lse, scale)
        if fused is not None:
            return fused, None
    onehot = _onehot(target, n, c, logits.dtype)
    if xp.name == "tensor":
        p = xp.exp(xp.subtract(logits, _lse_tensor(xp, logits)))
    else:
        p = xp.exp(xp.subtract(logits, lse))
    d = xp.subtract(p, onehot, out=_tmp(p))
    if reduction == "none":
        scale = xp.reshape(g, (n, 1))
    elif reduction == "mean":
        scale = xp.divide(g, n)
    else:
        scale = g
    return xp.multiply(d, scale, out=_tmp(d)), None


def _lse_tensor(xp, logits):
    m = xp.max(logits, axis=-1, keepdims=True)
    m = m.detach()
    return xp.add(xp.log(xp.sum(xp.exp(xp.subtract(logits, m)), axis=-1, keepdims=True)), m)


def _onehot(target, n, c, dtype):
    t = getattr(target, "data", target)
    module = type(t).__module__.split(".")[0]
    mod = __import__(module) if module in ("cupy",) else __import__("numpy")
    out = mod.zeros((n, c), dtype=dtype)
    out[mod.arange(n), t] = 1
    return out


# --- dropout ---------------------------------------------------------------------
#
# The mask is drawn from the explicit generator and saved as aux (1 byte per
# element), so backward, and a checkpoint's recompute after restoring the
# generator state, see exactly the mask the forward used.

@primitive("dropout", nin=2, save=(1,))
def dropout(xp, x, mask, p):
    """x * mask / (1 - p). The mask (a GREY input) is drawn by the caller from gpuad's generator."""
    return xp.multiply(xp.multiply(x, mask), 1.0 / (1.0 - p))


@dropout.defvjp(grad_kinds=lambda node, donate: ("g" if donate else "fresh", None))
def _dropout_vjp(xp, g, saved, node, donate):
    (mask,) = saved
    gx = xp.multiply(g, mask, out=g if donate else None)
    return xp.multiply(gx, 1.0 / (1.0 - node.params["p"]), out=_tmp(gx)), None
