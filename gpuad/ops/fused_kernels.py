"""The providers' kernels for the fused primitives, registered per (primitive, provider).

Each registration adapts a provider's host method (backends/triton_backend.py,
backends/cupy_backend.py) to the primitive's own forward and VJP signature.
The host objects are built on first use, so registering imports neither
Triton nor CuPy. A kernel that returns None declines (a dtype it does not
handle, with one warning from the provider) and the generic xp code runs.

Adding a kernel for another primitive is one register_kernel call here; no
op body changes.

>>> from gpuad.ops import fused
>>> sorted(fused.cross_entropy.kernels)
['cpu', 'triton']
"""
import numpy as np

from .. import providers
from . import attention, conv, derivatives, fused, norms

_hosts = {}


def host(name):
    """The host side of provider `name`, built on first use (imports Triton or CuPy then)."""
    p = _hosts.get(name)
    if p is None:
        if name == "triton":
            from ..backends.triton_backend import TritonKernels
            p = TritonKernels(interpret=providers.interpreting())
        else:
            from ..backends.cupy_backend import CupyKernels
            p = CupyKernels()
        _hosts[name] = p
    return p


def _linear(provider, activation):
    def forward(xp, x, w, b):
        out = host(provider).linear_forward(xp, x, w, b, activation)
        if out is None:
            return None
        y, z = out
        return (y, (z,)) if activation == "gelu" else y

    def backward(xp, g, saved, node, donate):
        # saved follows the declaration: x, w (linear); x, w, y; x, w, b, z (gelu)
        x, w = saved[0], saved[1]
        s = saved[3] if activation == "gelu" else (saved[2] if activation is not None else None)
        x_shape = node.parents[0].shape if node.needs[0] else None
        # (a bias-only gradient, BitFit's, saves neither x nor w, and needs no weight shape)
        w_shape = None if x is None and w is None else (g.shape[-1], x.shape[-1] if x is not None else w.shape[1])
        return host(provider).linear_backward(xp, g, x, w, s, activation, node.needs, x_shape, w_shape)
    return forward, backward


def _cross_entropy(provider):
    def forward(xp, logits, target, reduction="mean"):
        out = host(provider).cross_entropy_forward(xp, logits, target)
        if out is None:
            return None
        losses, lse = out
        losses = losses.astype(logits.dtype)
        # the log-sum-exp stays float32 whatever the logits' dtype: in float16 it would be
        # off by ~1% once it passes 16, and every gradient would inherit that
        return (fused.reduce_losses(xp, losses, reduction, logits.shape[0]),
                (xp.reshape(lse.astype(np.float32), (-1, 1)),))

    def backward(xp, g, saved, node, donate):
        logits, target, lse = saved
        n = logits.shape[0]
        reduction = (node.params or {}).get("reduction", "mean")
        # the kernel scales row i by scale[i]: the upstream gradient per row
        scale = g if reduction == "none" else xp.multiply(xp.ones((n,), logits.dtype),
                                                          fused.loss_scale(xp, g, reduction, n))
        d = host(provider).cross_entropy_backward(xp, logits, target, lse, scale)
        return None if d is None else (d, None)
    return forward, backward


def _norm(provider, rms):
    """layer_norm (rms=False) or rms_norm through one pair of kernels. They normalize the
    last dimension; other layouts run the generic code. layer_norm saves (x, w, mean,
    rstd) and returns (dX, dW, dB); rms_norm saves (x, w, rstd) and returns (dX, dW)."""
    def run(xp, x, weight, bias, ndims, eps):
        if ndims != 1:
            return None
        out = host(provider).layer_norm_forward(xp, x, weight, bias, eps, rms=rms)
        if out is None:
            return None
        y, mean, rstd = out
        return y, ((rstd,) if rms else (mean, rstd))

    if rms:
        def forward(xp, x, weight, ndims=1, eps=1e-6):
            return run(xp, x, weight, None, ndims, eps)
    else:
        def forward(xp, x, weight, bias, ndims=1, eps=1e-5):
            return run(xp, x, weight, bias, ndims, eps)

    def backward(xp, g, saved, node, donate):
        if (node.params or {}).get("ndims", 1) != 1:
            return None
        x, w, *stats = saved
        mean, rstd = (None, stats[0]) if rms else stats
        nx, nw, nb = tuple(node.needs) + ((False,) if rms else ())
        dx = host(provider).layer_norm_backward(xp, g, x, w, mean, rstd) if nx else None
        if nx and dx is None:
            return None
        rows = tuple(range(x.ndim - 1))
        xhat = (xp.multiply(x, rstd) if rms else xp.multiply(xp.subtract(x, mean), rstd)) if nw else None
        dw = xp.sum(xp.multiply(g, xhat), axis=rows).astype(w.dtype) if nw else None   # one more pass over x, g
        if rms:
            return dx, dw
        return dx, dw, (xp.sum(g, axis=rows) if nb else None)
    return forward, backward


def _attention(provider):
    """The FlashAttention kernels, unmasked, causal or with an attn_mask; attention with
    dropout runs the generic tiled code (its masks come from numpy's generator)."""
    def forward(xp, q, k, v, mask=None, causal=False, scale=1.0, dropout_p=0.0, seed=None):
        if dropout_p:
            return None
        out = host(provider).attention_forward(xp, q, k, v, causal, scale, mask=mask)
        return None if out is None else (out[0], (out[1].astype(q.dtype) if q.dtype == np.float64 else out[1],))

    def backward(xp, g, saved, node, donate):
        p = node.params or {}
        if p.get("dropout_p"):
            return None
        q, k, v, out, lse = saved
        return host(provider).attention_backward(xp, g, q, k, v, out, lse, p.get("causal", False),
                                                          p.get("scale", 1.0), node.needs, mask=p.get("mask"))
    return forward, backward


def _conv(provider):
    """The implicit-GEMM kernels for the three convolution primitives (2-D; others, and
    float64, decline to the generic im2col code). Each primitive's VJP is the other two,
    so each backward runs two kernels: no im2col buffer in either direction."""
    h = lambda: host(provider)  # noqa: E731

    def conv_fwd(xp, x, w, b, stride, padding, dilation, groups, size=None, kernel=None):
        return h().conv_forward(xp, x, w, b, stride, padding, dilation, groups)

    def transpose_fwd(xp, g, w, size, kernel, stride, padding, dilation, groups):
        return h().conv_dgrad(xp, g, w, size, stride, padding, dilation, groups)

    def weight_fwd(xp, x, g, size, kernel, stride, padding, dilation, groups):
        return h().conv_wgrad(xp, x, g, kernel, stride, padding, dilation, groups)

    def both(first, second, nfirst, nsecond):
        """A backward of two kernels, or None (the generic VJP) if a needed one declines."""
        a = first() if nfirst else None
        b = second() if nsecond else None
        return None if (nfirst and a is None) or (nsecond and b is None) else (a, b)

    def conv_bwd(xp, g, saved, node, donate):
        x, w = saved
        m = conv._meta(node)
        nx, nw, nb = node.needs
        out = both(lambda: transpose_fwd(xp, g, w, **m), lambda: weight_fwd(xp, x, g, **m), nx, nw)
        if out is None:
            return None
        return out + ((xp.sum(g, axis=(0,) + tuple(range(2, g.ndim))) if nb else None),)

    def transpose_bwd(xp, hg, saved, node, donate):
        g, w = saved
        m = conv._meta(node)
        pad_stride = (m["stride"], m["padding"], m["dilation"], m["groups"])
        return both(lambda: h().conv_forward(xp, hg, w, None, *pad_stride),
                    lambda: weight_fwd(xp, hg, g, **m), *node.needs)

    def weight_bwd(xp, hw, saved, node, donate):
        x, g = saved
        m = conv._meta(node)
        pad_stride = (m["stride"], m["padding"], m["dilation"], m["groups"])
        return both(lambda: transpose_fwd(xp, g, hw, **m),
                    lambda: h().conv_forward(xp, x, hw, None, *pad_stride), *node.needs)
    return (conv_fwd, conv_bwd), (transpose_fwd, transpose_bwd), (weight_fwd, weight_bwd)


def _gelu_cpu():
    """Exact GELU on the CPU kernels (backends/cpu_kernels.py): the forward in one pass, the
    gradient in two around numpy's exp, with the generic code's bits (float32, C order;
    the tanh form and other dtypes decline)."""
    from ..backends import cpu_kernels
    from ..backends.numpy_backend import ERF_TABLE

    def forward(xp, x, approximate="none"):
        return cpu_kernels.gelu(x, ERF_TABLE) if approximate == "none" else None

    def backward(xp, g, saved, node, donate):
        if (node.params or {}).get("approximate", "none") != "none":
            return None
        dx = cpu_kernels.gelu_grad(saved[0], g, ERF_TABLE, donate)
        return None if dx is None else (dx,)
    return forward, backward


def _norm_cpu(rms):
    """layer_norm (rms=False) or rms_norm over the last axis on the CPU kernels, forward and
    backward, with the generic code's bits; other layouts decline to it."""
    from ..backends import cpu_kernels

    if rms:
        def forward(xp, x, weight, ndims=1, eps=1e-6):
            out = cpu_kernels.rms_norm(x, weight, eps) if ndims == 1 else None
            return None if out is None else (out[0], (out[1],))
    else:
        def forward(xp, x, weight, bias, ndims=1, eps=1e-5):
            out = cpu_kernels.layer_norm(x, weight, bias, eps) if ndims == 1 else None
            return None if out is None else (out[0], (out[1], out[2]))

    def backward(xp, g, saved, node, donate):
        if (node.params or {}).get("ndims", 1) != 1:
            return None
        x, w, *stats = saved
        mean, rstd = (None, stats[0]) if rms else stats
        return cpu_kernels.norm_grad(x, g, w, mean, rstd, node.needs)
    return forward, backward


def _softmax_cpu(log):
    """softmax (log=False) or log_softmax over the last axis on the CPU kernels, forward
    and backward, the generic code's bits (numpy's exp between the kernels' row passes)."""
    from ..backends import cpu_kernels
    fwd, grad = (cpu_kernels.log_softmax, cpu_kernels.log_softmax_grad) if log else \
        (cpu_kernels.softmax, cpu_kernels.softmax_grad)

    def forward(xp, x, axis=-1):
        return fwd(x, axis)

    def backward(xp, g, saved, node, donate):
        dx = grad(g, saved[0], node.params["axis"])
        return None if dx is None else (dx,)
    return forward, backward


def _cross_entropy_cpu():
    """Cross-entropy over (N, C) logits on the CPU kernels, the generic code's bits."""
    from ..backends import cpu_kernels

    def forward(xp, logits, target, reduction="mean"):
        out = cpu_kernels.cross_entropy_rows(logits, target)
        if out is None:
            return None
        losses, lse = out
        return fused.reduce_losses(xp, losses, reduction, logits.shape[0]), (lse,)

    def backward(xp, g, saved, node, donate):
        logits, target, lse = saved
        scale = fused.loss_scale(xp, g, (node.params or {}).get("reduction", "mean"), logits.shape[0])
        d = cpu_kernels.cross_entropy_grad(logits, target, lse, np.asarray(scale) if np.ndim(scale) == 0 else scale)
        return None if d is None else (d, None)
    return forward, backward


for _provider in ("triton", "cupy"):
    for _activation, _prim in fused.LINEAR_PRIMITIVES.items():
        _prim.register_kernel(_provider, *_linear(_provider, _activation))
fused.cross_entropy.register_kernel("triton", *_cross_entropy("triton"))
norms.layer_norm.register_kernel("triton", *_norm("triton", rms=False))
norms.rms_norm.register_kernel("triton", *_norm("triton", rms=True))
attention.scaled_dot_product_attention.register_kernel("triton", *_attention("triton"))
for _prim, _pair in zip((conv.conv, conv.conv_transpose, conv.conv_weight), _conv("triton")):
    _prim.register_kernel("triton", *_pair)
derivatives.gelu.register_kernel("cpu", *_gelu_cpu())
norms.layer_norm.register_kernel("cpu", *_norm_cpu(rms=False))
norms.rms_norm.register_kernel("cpu", *_norm_cpu(rms=True))
fused.softmax.register_kernel("cpu", *_softmax_cpu(log=False))
fused.log_softmax.register_kernel("cpu", *_softmax_cpu(log=True))
fused.cross_entropy.register_kernel("cpu", *_cross_entropy_cpu())
