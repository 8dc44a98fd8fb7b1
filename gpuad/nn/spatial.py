"""Spatial layers as functions, with torch's names and signatures (they are part of
gpuad.nn.functional): convolution, padding, pooling, resizing.

conv1d/2d/3d and conv_transpose1d/2d are the three convolution primitives of
gpuad/ops/conv.py; max pooling is a primitive that saves its argmax indices
(8 bytes per output); average pooling is a depthwise convolution with a constant
kernel, adaptive average pooling two small matmuls, padding and nearest
resizing index ops: each differentiable through primitives that already have
their own VJPs.

>>> import gpuad, numpy as np
>>> import gpuad.nn.functional as F
>>> x = gpuad.tensor(np.arange(16.0, dtype=np.float32).reshape(1, 1, 4, 4))
>>> F.max_pool2d(x, 2).numpy().tolist()
[[[[5.0, 7.0], [13.0, 15.0]]]]
>>> F.avg_pool2d(x, 2).numpy().tolist()
[[[[2.5, 4.5], [10.5, 12.5]]]]
>>> F.conv2d(x, gpuad.ones((2, 1, 3, 3)), padding="same").shape
(1, 2, 4, 4)
"""
import math

import numpy as np

from ..precision import autocast_function
from ..ops import conv as K, pool as P, norms as N
from ..creation import full
from ..ops import composite as C, indexing as I
from ..backends import namespace_of, numpy_ns
from ..ops.dispatch import apply
from ..graph import is_recomputing
from ..tensor import Tensor


def _t(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def _const(arr, like):
    """A constant made on the host (a kernel of ones, a window count, an interpolation
    matrix), on like's device."""
    return Tensor(arr, device=like.device)


def _tuple(v, n, what, name):
    """An int or a sequence of n ints, as a tuple of n ints (torch's _pair and _triple)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v),) * n
    t = tuple(v)
    if len(t) == 1:
        t = t * n
    if len(t) != n or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in t):
        raise ValueError(f"gpuad.nn.functional.{name}: {what} must be an int or {n} ints, got {v!r}")
    return tuple(int(i) for i in t)


def _batched(x, nd, name):
    """x with a batch axis (torch takes an unbatched (C, *S) input too), and whether one was added."""
    if x.ndim == nd + 1:
        return x.unsqueeze(0), True
    if x.ndim != nd + 2:
        raise ValueError(f"gpuad.nn.functional.{name}: expected a {nd + 1}-d (unbatched) or {nd + 2}-d "
                         f"(batched) input, got shape {x.shape}")
    return x, False


def _conv_padding(padding, kernel, stride, dilation, name):
    """torch's padding argument as (lo, hi) per spatial axis: an int, ints, 'valid' or
    'same' (stride 1 only: total d (k - 1), the extra element after, as torch)."""
    nd = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"gpuad.nn.functional.{name}: padding='same' is not supported for strided "
                                 f"convolutions (stride {stride}), as in torch")
            return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))
        raise ValueError(f"gpuad.nn.functional.{name}: padding must be an int, a tuple, 'same' or 'valid', "
                         f"not {padding!r}")
    return tuple((p, p) for p in _tuple(padding, nd, "padding", name))


def _conv(x, weight, bias, stride, padding, dilation, groups, nd, name):
    x, weight = _t(x), _t(weight)
    bias = _t(bias) if bias is not None else None
    x, unbatched = _batched(x, nd, name)
    if weight.ndim != nd + 2:
        raise ValueError(f"gpuad.nn.functional.{name}: weight must be {nd + 2}-d (out_channels, "
                         f"in_channels / groups, *kernel), got shape {weight.shape}")
    groups = int(groups)
    if groups < 1 or x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"gpuad.nn.functional.{name}: an input of shape {x.shape} ({x.shape[1]} channels) "
                         f"does not fit a weight of shape {weight.shape} with groups={groups}: the input needs "
                         f"weight.shape[1] * groups = {weight.shape[1] * groups} channels and out_channels "
                         f"divisible by groups")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"gpuad.nn.functional.{name}: bias of shape {bias.shape} for {weight.shape[0]} "
                         f"output channels")
    dts = {t.dtype for t in (x, weight, bias) if t is not None}
    if len(dts) > 1:
        raise TypeError(f"gpuad.nn.functional.{name}: input, weight and bias must share a dtype, got "
                        f"{', '.join(sorted(str(d) for d in dts))} (cast with .to(dtype), as torch requires)")
    kernel = tuple(weight.shape[2:])
    stride = _tuple(stride, nd, "stride", name)
    dilation = _tuple(dilation, nd, "dilation", name)
    pads = _conv_padding(padding, kernel, stride, dilation, name)
    extent = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    if any(s + lo + hi < e for s, (lo, hi), e in zip(x.shape[2:], pads, extent)):
        raise ValueError(f"gpuad.nn.functional.{name}: an input of shape {x.shape} padded by {pads} is smaller "
                         f"than the kernel's extent {extent} (weight {weight.shape}, dilation {dilation})")
    y = apply(K.conv, (x, weight, bias), dict(stride=stride, padding=pads, dilation=dilation, groups=groups,
                                              size=tuple(x.shape[2:]), kernel=kernel))
    return y.squeeze(0) if unbatched else y


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """torch.nn.functional.conv1d: (N, C, L) * (O, C/groups, k) -> (N, O, L_out)."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """torch.nn.functional.conv2d: (N, C, H, W) * (O, C/groups, kh, kw) -> (N, O, H_out, W_out).

    >>> import gpuad
    >>> gpuad.nn.functional.conv2d(gpuad.ones((1, 4, 5, 5)), gpuad.ones((6, 2, 3, 3)), groups=2).shape
    (1, 6, 3, 3)
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """torch.nn.functional.conv3d."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 3, "conv3d")


def _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, nd, name):
    x, weight = _t(x), _t(weight)
    bias = _t(bias) if bias is not None else None
    x, unbatched = _batched(x, nd, name)
    groups = int(groups)
    if weight.ndim != nd + 2 or x.shape[1] != weight.shape[0] or weight.shape[0] % groups:
        raise ValueError(f"gpuad.nn.functional.{name}: an input of shape {x.shape} does not fit a weight of "
                         f"shape {weight.shape} (in_channels, out_channels / groups, *kernel) with groups={groups}")
    kernel = tuple(weight.shape[2:])
    stride, dilation = _tuple(stride, nd, "stride", name), _tuple(dilation, nd, "dilation", name)
    pad, extra = _tuple(padding, nd, "padding", name), _tuple(output_padding, nd, "output_padding", name)
    if any(e >= max(s, d) for e, s, d in zip(extra, stride, dilation)):
        raise ValueError(f"gpuad.nn.functional.{name}: output_padding {extra} must be smaller than stride "
                         f"{stride} or dilation {dilation}")
    size = tuple((q - 1) * s - 2 * p + d * (k - 1) + e + 1
                 for q, s, p, d, k, e in zip(x.shape[2:], stride, pad, dilation, kernel, extra))
    if min(size) < 1:
        raise ValueError(f"gpuad.nn.functional.{name}: the output size {size} is not positive")
    y = apply(K.conv_transpose, (x, weight), dict(size=size, kernel=kernel, stride=stride,
                                                  padding=tuple((p, p) for p in pad), dilation=dilation,
                                                  groups=groups))
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * nd)
    return y.squeeze(0) if unbatched else y


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,  # noqa: A002
                     dilation=1):
    """torch.nn.functional.conv_transpose1d (weight: (in_channels, out_channels / groups, k))."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 1,
                           "conv_transpose1d")


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,  # noqa: A002
                     dilation=1):
    """torch.nn.functional.conv_transpose2d: the gradient of conv2d with respect to its input.

    >>> import gpuad
    >>> gpuad.nn.functional.conv_transpose2d(gpuad.ones((1, 2, 3, 3)), gpuad.ones((2, 4, 3, 3)), stride=2).shape
    (1, 4, 7, 7)
    """
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 2,
                           "conv_transpose2d")


# -- padding ------------------------------------------------------------------------

def pad(input, pad, mode="constant", value=None):  # noqa: A002
    """torch.nn.functional.pad: `pad` lists (before, after) pairs from the last axis
    backwards; mode 'constant' (value, default 0), 'reflect', 'replicate' or
    'circular'. Negative amounts crop. Built from slices and concatenations, so its
    gradient is theirs.

    >>> import gpuad
    >>> gpuad.nn.functional.pad(gpuad.tensor([[1.0, 2.0, 3.0]]), (2, 1), mode="reflect").tolist()
    [[3.0, 2.0, 1.0, 2.0, 3.0, 2.0]]
    """
    x = _t(input)
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"gpuad.nn.functional.pad: pad {pad} must hold (before, after) pairs for at most "
                         f"{x.ndim} axes of the input of shape {x.shape}")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"gpuad.nn.functional.pad: mode must be 'constant', 'reflect', 'replicate' or "
                         f"'circular', not {mode!r}")
    if mode != "constant" and value:
        raise ValueError(f"gpuad.nn.functional.pad: value applies to mode='constant' only (mode={mode!r})")
    for i in range(len(pad) // 2):
        axis = x.ndim - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        x = _pad_axis(x, axis, lo, hi, mode, 0.0 if value is None else float(value))
    return x


def _take(x, axis, start, stop, step=1):
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop, step)
    return x[tuple(idx)]


def _pad_axis(x, axis, lo, hi, mode, value):
    n = x.shape[axis]
    if lo < 0:
        x, n, lo = _take(x, axis, -lo, None), n + lo, 0
    if hi < 0:
        x, n, hi = _take(x, axis, 0, n + hi), n + hi, 0
    if not lo and not hi:
        return x
    if mode == "reflect" and (lo >= n or hi >= n):
        raise ValueError(f"gpuad.nn.functional.pad: reflect padding ({lo}, {hi}) must be smaller than the "
                         f"axis it pads ({n} elements), as in torch")
    if mode == "circular" and (lo > n or hi > n):
        raise ValueError(f"gpuad.nn.functional.pad: circular padding ({lo}, {hi}) is larger than the axis "
                         f"({n} elements)")
    parts = []
    if mode == "constant":
        shape = list(x.shape)
        if lo:
            shape[axis] = lo
            parts.append(full(tuple(shape), value, dtype=x.dtype, device=x.device))
        parts.append(x)
        if hi:
            shape[axis] = hi
            parts.append(full(tuple(shape), value, dtype=x.dtype, device=x.device))
    elif mode == "reflect":
        parts = [_take(x, axis, lo, 0, -1)] if lo else []
        parts.append(x)
        if hi:
            parts.append(_take(x, axis, n - 2, n - 2 - hi, -1))
    elif mode == "replicate":
        edge = lambda i, k: C.concatenate([_take(x, axis, i, i + 1)] * k, axis=axis)  # noqa: E731
        parts = ([edge(0, lo)] if lo else []) + [x] + ([edge(n - 1, hi)] if hi else [])
    else:
        parts = ([_take(x, axis, n - lo, n)] if lo else []) + [x] + ([_take(x, axis, 0, hi)] if hi else [])
    return C.concatenate(parts, axis=axis)


# -- pooling -------------------------------------------------------------------------

def _pool_args(x, kernel_size, stride, padding, dilation, nd, name):
    kernel = _tuple(kernel_size, nd, "kernel_size", name)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(tuple(stride)) == 0) \
        else _tuple(stride, nd, "stride", name)
    pad = _tuple(padding, nd, "padding", name)
    dilation = _tuple(dilation, nd, "dilation", name)
    if any(2 * p > k for p, k in zip(pad, kernel)):
        raise ValueError(f"gpuad.nn.functional.{name}: padding {pad} must be at most half the kernel "
                         f"{kernel}, as in torch")
    return kernel, stride, pad, dilation


def _pool_out(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling output size: floor or ceil, and a last window must start inside the
    input or its left padding."""
    out = []
    for s, k, st, p, d in zip(size, kernel, stride, pad, dilation):
        span = s + 2 * p - d * (k - 1) - 1
        q = (-(-span // st) if ceil_mode else span // st) + 1
        if ceil_mode and (q - 1) * st >= s + p:
            q -= 1
        out.append(q)
    return tuple(out)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,  # noqa: A002
               return_indices=False):
    """torch.nn.functional.max_pool1d."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 1, "max_pool1d")


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,  # noqa: A002
               return_indices=False):
    """torch.nn.functional.max_pool2d: the max of each window (NaN if any is NaN); with
    return_indices also each max's flat index into its input plane, as torch."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 2, "max_pool2d")


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, nd, name):
    x, unbatched = _batched(_t(x), nd, name)
    kernel, stride, pad, dilation = _pool_args(x, kernel_size, stride, padding, dilation, nd, name)
    out = _pool_out(x.shape[2:], kernel, stride, pad, dilation, ceil_mode)
    if min(out) < 1:
        raise ValueError(f"gpuad.nn.functional.{name}: an input of shape {x.shape} gives an empty output {out}")
    params = dict(kernel=kernel, stride=stride, padding=pad, dilation=dilation, out=out, size=tuple(x.shape[2:]))
    y = apply(P.max_pool, (x,), params)
    # the indices again, as a value (the node keeps its own only when a gradient is wanted)
    idx = Tensor._from(P.max_pool.fwd(namespace_of(x.data), x.data, **params)[1][0]) if return_indices else None
    if unbatched:
        y = y.squeeze(0)
        idx = idx.squeeze(0) if idx is not None else None
    return (y, idx) if return_indices else y


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):  # noqa: A002
    """torch.nn.functional.avg_pool1d."""
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1, "avg_pool1d")


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,  # noqa: A002
               divisor_override=None):
    """torch.nn.functional.avg_pool2d: a depthwise convolution with a constant kernel, then
    each window's sum divided by its count (torch's rule for padding and ceil_mode)."""
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 2,
                     "avg_pool2d")


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor, nd, name):
    x, unbatched = _batched(_t(x), nd, name)
    kernel, stride, pad, _ = _pool_args(x, kernel_size, stride, padding, 1, nd, name)
    size = tuple(x.shape[2:])
    out = _pool_out(size, kernel, stride, pad, (1,) * nd, ceil_mode)
    # the right padding that reaches the last window (ceil_mode may walk past the padding)
    hi = tuple(max(p, (q - 1) * s + k - s_ - p) for q, s, k, s_, p in zip(out, stride, kernel, size, pad))
    pads = tuple(zip(pad, hi))
    c = x.shape[1]
    ones = np.ones((c, 1) + kernel, x.dtype)
    meta = dict(stride=stride, padding=pads, dilation=(1,) * nd, groups=c, size=size, kernel=kernel)
    total = apply(K.conv, (x, _const(ones, x), None), meta)
    if divisor:
        return _unbatch(total / float(divisor), unbatched)
    # each window's count: its places inside the input (count_include_pad=False), or inside the
    # input and its padding, never the ceil_mode overhang (torch)
    region = np.zeros((1, 1) + tuple(s + 2 * p for s, p in zip(size, pad)), x.dtype)
    inner = (slice(None), slice(None)) + (tuple(slice(p, p + s) for p, s in zip(pad, size)) if not count_include_pad
                                          else ())
    region[inner] = 1
    region = np.pad(region, ((0, 0), (0, 0)) + tuple((0, h - p) for h, p in zip(hi, pad)))
    counts = K.conv.fwd(numpy_ns, region, np.ones((1, 1) + kernel, x.dtype), None, stride, ((0, 0),) * nd,
                        (1,) * nd, 1)
    return _unbatch(total / _const(counts.astype(x.dtype), x), unbatched)


def _unbatch(y, unbatched):
    return y.squeeze(0) if unbatched else y


def _adaptive_matrix(n, m, dtype):
    """(m, n): row i averages input places floor(i n / m) .. ceil((i + 1) n / m) - 1 (torch's windows)."""
    a = np.zeros((m, n), dtype)
    for i in range(m):
        s, e = (i * n) // m, -(-((i + 1) * n) // m)
        a[i, s:e] = 1.0 / (e - s)
    return a


def adaptive_avg_pool1d(input, output_size):  # noqa: A002
    """torch.nn.functional.adaptive_avg_pool1d."""
    x, unbatched = _batched(_t(input), 1, "adaptive_avg_pool1d")
    (m,) = _tuple(output_size, 1, "output_size", "adaptive_avg_pool1d")
    return _unbatch(x @ _const(_adaptive_matrix(x.shape[-1], m, x.dtype).T, x), unbatched)


def adaptive_avg_pool2d(input, output_size):  # noqa: A002
    """torch.nn.functional.adaptive_avg_pool2d: averages over torch's windows, as two small
    matmuls with averaging matrices (None in output_size keeps that axis).

    >>> import gpuad
    >>> gpuad.nn.functional.adaptive_avg_pool2d(gpuad.ones((2, 3, 7, 5)), 1).shape
    (2, 3, 1, 1)
    """
    x, unbatched = _batched(_t(input), 2, "adaptive_avg_pool2d")
    size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    mh, mw = (x.shape[2 + i] if s is None else int(s) for i, s in enumerate(size))
    if mh == 1 and mw == 1:
        return _unbatch(x.mean(dim=(2, 3), keepdim=True), unbatched)
    ah = _const(_adaptive_matrix(x.shape[2], mh, x.dtype), x)
    aw = _const(_adaptive_matrix(x.shape[3], mw, x.dtype).T, x)
    return _unbatch(ah @ x @ aw, unbatched)


# -- resizing ------------------------------------------------------------------------

def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None):  # noqa: A002
    """torch.nn.functional.interpolate for 3-d and 4-d inputs: mode 'nearest' (torch's
    index rule floor(i * in / out)) or 'linear'/'bilinear' (align_corners as torch).
    Built from index gathers and matmuls with interpolation matrices, so differentiable.

    >>> import gpuad
    >>> gpuad.nn.functional.interpolate(gpuad.ones((1, 1, 2, 2)), scale_factor=2).shape
    (1, 1, 4, 4)
    """
    x = _t(input)
    nd = x.ndim - 2
    if nd not in (1, 2):
        raise ValueError(f"gpuad.nn.functional.interpolate: expected a 3-d or 4-d input, got shape {x.shape}")
    if (size is None) == (scale_factor is None):
        raise ValueError("gpuad.nn.functional.interpolate: give exactly one of size and scale_factor")
    if size is not None:
        out = _tuple(size, nd, "size", "interpolate")
        scales = tuple(None for _ in range(nd))
    else:
        sf = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * nd
        out = tuple(int(math.floor(s * f)) for s, f in zip(x.shape[2:], sf))
        scales = tuple(float(f) for f in sf)
    if mode == "nearest":
        if align_corners is not None:
            raise ValueError("gpuad.nn.functional.interpolate: align_corners applies to linear modes only")
        for i, (n, m) in enumerate(zip(x.shape[2:], out)):
            scale = (1.0 / scales[i]) if scales[i] else n / m
            idx = np.minimum(np.floor(np.arange(m) * scale).astype(np.int64), n - 1)
            x = I.index_select(x, 2 + i, _const(idx, x))
        return x
    if mode not in ("linear", "bilinear"):
        raise ValueError(f"gpuad.nn.functional.interpolate: mode {mode!r} is not supported ('nearest', "
                         f"'linear', 'bilinear')")
    if (mode == "linear") != (nd == 1):
        raise ValueError(f"gpuad.nn.functional.interpolate: mode {mode!r} needs a {3 if mode == 'linear' else 4}-d "
                         f"input, got shape {x.shape}")
    mats = [_const(_linear_matrix(n, m, bool(align_corners), s, x.dtype), x) for n, m, s in zip(x.shape[2:], out, scales)]
    if nd == 1:
        return x @ mats[0].T
    return mats[0] @ x @ mats[1].T


def _linear_matrix(n, m, align_corners, scale, dtype):
    """(m, n) weights of linear interpolation from n places to m (torch's source index rule)."""
    a = np.zeros((m, n), np.float64)
    for i in range(m):
        if align_corners:
            src = i * (n - 1) / (m - 1) if m > 1 else 0.0
        else:
            r = (1.0 / scale) if scale else n / m
            src = max((i + 0.5) * r - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n - 1)
        i1 = min(i0 + 1, n - 1)
        w1 = src - i0
        a[i, i0] += 1.0 - w1
        a[i, i1] += w1
    return a.astype(dtype)


# -- normalization over channels -------------------------------------------------------

def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,  # noqa: A002
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm over axis 1 of (N, C, ...). training: the batch's
    statistics (the batch_norm primitive), and the running ones, when given, updated in
    place: mean <- (1 - m) mean + m batch_mean, var <- (1 - m) var + m unbiased batch_var
    (momentum may be a 0-d array: BatchNorm's cumulative average), once per batch: not
    again when gpuad.checkpoint recomputes the segment. Otherwise the running
    statistics normalize.

    >>> import gpuad
    >>> rm, rv = gpuad.zeros(3, dtype="float64"), gpuad.ones(3, dtype="float64")
    >>> x = gpuad.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype="float64")
    >>> y = gpuad.nn.functional.batch_norm(x, rm, rv, training=True)
    >>> rm.tolist(), rv.tolist()
    ([0.2, 0.2, 0.2], [1.1, 0.9, 1.1])
    """
    x = _t(input)
    if x.ndim < 2:
        raise ValueError(f"gpuad.nn.functional.batch_norm: expected an input of at least 2 dims (N, C, ...), "
                         f"got shape {x.shape}")
    c = x.shape[1]
    for what, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"gpuad.nn.functional.batch_norm: {what} of shape {tuple(t.shape)} for an input "
                             f"of shape {x.shape} ({c} channels)")
    weight = _t(weight) if weight is not None else None
    bias = _t(bias) if bias is not None else None
    shape = (1, c) + (1,) * (x.ndim - 2)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("gpuad.nn.functional.batch_norm: training=False needs running_mean and running_var")
        rstd = (running_var.detach() + eps).rsqrt().reshape(shape)
        y = (x - running_mean.detach().reshape(shape)) * rstd
        if weight is not None:
            y = y * weight.reshape(shape)
        return y + bias.reshape(shape) if bias is not None else y
    n = x.numel() // c
    if n <= 1:
        raise ValueError(f"gpuad.nn.functional.batch_norm: expected more than 1 value per channel when "
                         f"training, got an input of shape {x.shape}")
    y = apply(N.batch_norm, (x, weight, bias), {"eps": float(eps)})
    # a checkpointed segment's recompute normalizes as its first run did, but takes the
    # batch into the running statistics only once (torch's checkpoint takes it twice)
    if (running_mean is not None or running_var is not None) and not is_recomputing():
        axes = (0,) + tuple(range(2, x.ndim))
        data = x.data
        xs = namespace_of(data)
        mean = xs.mean(data, axis=axes)
        var = xs.mean(xs.square(xs.subtract(data, xs.reshape(mean, (c,) + (1,) * (x.ndim - 2)))), axis=axes)
        for buf, batch in ((running_mean, mean), (running_var, var * (n / (n - 1)))):
            if buf is not None:
                b = buf.data
                b *= 1 - momentum
                b += momentum * batch.astype(b.dtype, copy=False)
    return y


@autocast_function("group_norm")
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):  # noqa: A002
    """torch.nn.functional.group_norm: each sample's channels in num_groups groups, each group
    normalized over its channels and positions (layer norm's primitive on (N, G, -1)),
    then a per-channel affine."""
    x = _t(input)
    if x.ndim < 2 or x.shape[1] % num_groups:
        raise ValueError(f"gpuad.nn.functional.group_norm: {x.shape[1] if x.ndim > 1 else '?'} channels of an "
                         f"input of shape {x.shape} do not split into {num_groups} groups")
    n, c = x.shape[:2]
    y = apply(N.layer_norm, (x.reshape(n, num_groups, -1), None, None), {"ndims": 1, "eps": float(eps)})
    y = y.reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * _t(weight).reshape(shape)
    return y + _t(bias).reshape(shape) if bias is not None else y


# -- sliding blocks ------------------------------------------------------------------------

def _blocks_kernel(c, kernel, dtype, like):
    """(C K, 1, kh, kw): output channel c K + k of a depthwise conv reads tap k of channel c,
    so the conv is im2col itself and its transpose the adding back."""
    k = kernel[0] * kernel[1]
    w = np.zeros((c * k, 1) + tuple(kernel), dtype)
    taps = np.eye(k, dtype=dtype).reshape(k, 1, *kernel)
    for i in range(c):
        w[i * k:(i + 1) * k] = taps
    return _const(w, like)


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):  # noqa: A002
    """torch.nn.functional.unfold: (N, C, H, W) -> (N, C kh kw, L), every sliding block's
    values as a column (channel-major, then kernel row, then kernel column, as torch).

    >>> import gpuad, numpy as np
    >>> x = gpuad.tensor(np.arange(9.0, dtype=np.float32).reshape(1, 1, 3, 3))
    >>> gpuad.nn.functional.unfold(x, 2)[0].tolist()
    [[0.0, 1.0, 3.0, 4.0], [1.0, 2.0, 4.0, 5.0], [3.0, 4.0, 6.0, 7.0], [4.0, 5.0, 7.0, 8.0]]
    """
    x, unbatched = _batched(_t(input), 2, "unfold")
    kernel = _tuple(kernel_size, 2, "kernel_size", "unfold")
    c = x.shape[1]
    y = _conv(x, _blocks_kernel(c, kernel, x.dtype, x), None, stride, padding, dilation, c, 2, "unfold")
    return _unbatch(y.reshape(y.shape[0], y.shape[1], -1), unbatched)


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):  # noqa: A002
    """torch.nn.functional.fold: (N, C kh kw, L) -> (N, C, *output_size), each column added
    back where unfold took it (overlaps sum): unfold's adjoint, a transposed conv.

    >>> import gpuad
    >>> gpuad.nn.functional.fold(gpuad.ones((1, 4, 4)), (3, 3), 2)[0, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    """
    cols = _t(input)
    unbatched = cols.ndim == 2
    if unbatched:
        cols = cols.unsqueeze(0)
    if cols.ndim != 3:
        raise ValueError(f"gpuad.nn.functional.fold: expected a 2-d (unbatched) or 3-d input, got shape {cols.shape}")
    size = _tuple(output_size, 2, "output_size", "fold")
    kernel = _tuple(kernel_size, 2, "kernel_size", "fold")
    dil, pad, st = (_tuple(v, 2, w, "fold") for v, w in ((dilation, "dilation"), (padding, "padding"),
                                                          (stride, "stride")))
    k = kernel[0] * kernel[1]
    out = K.output_size(size, kernel, st, tuple((p, p) for p in pad), dil)
    n, ck, blocks = cols.shape
    if ck % k or blocks != out[0] * out[1]:
        raise ValueError(f"gpuad.nn.functional.fold: an input of shape {tuple(cols.shape)} does not fit "
                         f"kernel {kernel} over output_size {size}: expected C * {k} rows and "
                         f"{out[0] * out[1]} blocks ({out[0]} x {out[1]})")
    c = ck // k
    g = cols.reshape(n, ck, *out)
    y = apply(K.conv_transpose, (g, _blocks_kernel(c, kernel, cols.dtype, cols)),
              dict(size=size, kernel=kernel, stride=st, padding=tuple((p, p) for p in pad), dilation=dil, groups=c))
    return _unbatch(y, unbatched)
