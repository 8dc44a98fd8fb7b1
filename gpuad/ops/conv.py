"""Convolution as three primitives that are each other's gradients.

    conv(x, w, b)          y = x (*) w + b             (torch's conv1d/conv2d/conv3d)
    conv_transpose(g, w)   the input gradient of conv  (torch's conv_transpose, sized)
    conv_weight(x, g)      the weight gradient of conv

for x (N, C, *S), w (O, C/G, *K), y (N, O, *Q), any number of spatial dims,
with stride, per-side padding, dilation and groups. Their VJPs are written with
one another (conv's dx is conv_transpose, its dw conv_weight; conv_transpose's
are conv and conv_weight; conv_weight's are conv_transpose and conv), so
create_graph works to any order, and each forward is plain xp code (slices,
stack, reshape, matmul), so gpuad.compile traces it, forward mode differentiates
it and the planner runs it on shapes.

On the CPU each forward is im2col + GEMM in batch chunks: the columns of
`chunk` samples, (C K, chunk Q) elements, are made, multiplied (one GEMM per
group) and dropped before the next chunk's. The work runs channels-first: the
input is read as (C, N, *S) and the result is an (N, O, *Q) view of an (O, N, *Q)
buffer, so a stack of convolutions (through batch norm and ReLU, whose outputs
keep their input's layout) never transposes; a padded layer pays one copy of its
input, which the im2col reads. The workspace of one call is therefore at most
max(WORKSPACE, one sample's columns) bytes, plus the chunk's GEMM result; the
planner sees it because it runs this same code on abstract arrays.
conv_transpose runs as a conv of the stride-dilated gradient with the flipped
kernel (no scatter), so strided layers pay s^d times the columns there.

>>> import gpuad, numpy as np
>>> x = gpuad.tensor(np.arange(16.0).reshape(1, 1, 4, 4), requires_grad=True)
>>> w = gpuad.tensor(np.ones((1, 1, 2, 2)), requires_grad=True)
>>> y = gpuad.nn.functional.conv2d(x, w, stride=2)
>>> y.numpy().tolist()
[[[[10.0, 18.0], [42.0, 50.0]]]]
>>> y.sum().backward(); x.grad.numpy()[0, 0, 0].tolist()
[1.0, 1.0, 1.0, 1.0]
"""
import itertools
import math

from ..memory.accounting import counting
from .registry import primitive, call, OTHER

WORKSPACE = 32 << 20       # bytes of im2col columns per chunk of samples (see the docstring)


def output_size(size, kernel, stride, padding, dilation):
    """The spatial output size of a convolution (or pooling) window walk."""
    return tuple((s + lo + hi - d * (k - 1) - 1) // st + 1
                 for s, k, st, (lo, hi), d in zip(size, kernel, stride, padding, dilation))


def pad_spatial(xp, x, padding, value=0.0):
    """x with (lo, hi) elements of `value` around each spatial axis (after N, C)."""
    if not any(lo or hi for lo, hi in padding):
        return x
    return xp.pad(x, ((0, 0), (0, 0)) + tuple(padding), constant_values=value)


def windows(xp, xpad, kernel, out, stride, dilation, axis=2):
    """Every kernel offset's strided view of the padded input, stacked on `axis`: for
    (n, C, *S) and axis 2, (n, C, prod(kernel), *out). One copy of the chunk's columns."""
    parts = []
    for offs in itertools.product(*(range(k) for k in kernel)):
        idx = (slice(None), slice(None)) + tuple(slice(o * d, o * d + s * (q - 1) + 1, s)
                                                 for o, d, s, q in zip(offs, dilation, stride, out))
        parts.append(xp.getitem(xpad, idx))
    return xp.stack(parts, axis=axis)


def _chunks(n, per_sample_bytes):
    step = max(1, WORKSPACE // max(1, per_sample_bytes))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _channels_first(xp, x, padding):
    """x (N, C, *S) as (C, N, *S_padded), C order: one copy (the padding's, which the
    im2col needs anyway). A channels-first view (what conv returns) is already in
    this layout, so only the padding is paid."""
    return pad_spatial(xp, xp.swapaxes(x, 0, 1), padding)


def _columns(xp, xc, n0, n1, kernel, out, stride, dilation, groups):
    """(G, C/G prod(kernel), (n1 - n0) prod(out)): samples n0..n1's im2col columns, from
    the channels-first padded input: one GEMM per group then covers the whole chunk
    (a batch of small per-sample GEMMs runs 2-3x slower on narrow layers)."""
    c = xc.shape[0]
    x = xp.getitem(xc, (slice(None), slice(n0, n1)))
    kt, qt = math.prod(kernel), math.prod(out)
    if kt == 1 and all(s == 1 for s in stride) and tuple(xc.shape[2:]) == tuple(out):
        cols = x                          # a 1 x 1 convolution: the input is its own columns
    else:
        cols = windows(xp, x, kernel, out, stride, dilation, axis=1)      # (C, K, n, *out)
    return xp.reshape(cols, (groups, (c // groups) * kt, (n1 - n0) * qt))


def _per_sample(x, kernel, out):
    return x.shape[1] * math.prod(kernel) * math.prod(out) * x.dtype.itemsize


@primitive("conv", inputs=("x", "w", "b"), kind=OTHER, retain={"x": "w", "w": "x"})
def conv(xp, x, w, b, stride, padding, dilation, groups, size=None, kernel=None):
    """y = x (*) w + b (cross-correlation, as torch) in batch chunks of im2col + GEMM."""
    xp = counting(xp, "conv")               # the padded input, columns, partial results: in the peak
    n, o, kernel = x.shape[0], w.shape[0], tuple(w.shape[2:])
    out = output_size(x.shape[2:], kernel, stride, padding, dilation)
    if min(out, default=1) < 1:
        raise ValueError(f"gpuad.conv: an input of spatial size {tuple(x.shape[2:])} (padding {padding}) is "
                         f"smaller than the kernel's extent {tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))}")
    xc = _channels_first(xp, x, padding)
    w2 = xp.reshape(w, (groups, o // groups, -1))
    ys = [xp.reshape(xp.matmul(w2, _columns(xp, xc, n0, n1, kernel, out, stride, dilation, groups)),
                     (o, n1 - n0) + out)
          for n0, n1 in _chunks(n, _per_sample(x, kernel, out))]
    y = ys[0] if len(ys) == 1 else xp.concatenate(ys, axis=1)
    if b is not None:
        y = xp.add(y, xp.reshape(b, (o, 1) + (1,) * len(out)))
    # (N, O, *out) as a view of the channels-first result: no transposing copy, and the
    # next convolution (through batch norm and ReLU, which keep the layout) reads it as is
    return xp.swapaxes(y, 0, 1)


META = ("size", "kernel", "stride", "padding", "dilation", "groups")


def _meta(node):
    """What every one of the three needs: the input's spatial size, the kernel's, and the walk."""
    return {k: node.params[k] for k in META}


@conv.defvjp
def _conv_vjp(xp, g, saved, node, donate):
    x, w = saved
    nx, nw, nb = node.needs
    meta = _meta(node)
    dx = call(conv_transpose, xp, g, w, **meta) if nx else None
    dw = call(conv_weight, xp, x, g, **meta) if nw else None
    db = xp.sum(g, axis=(0,) + tuple(range(2, g.ndim))) if nb else None
    return dx, dw, db


@primitive("conv_transpose", inputs=("g", "w"), kind=OTHER, retain={"g": "w", "w": "g"})
def conv_transpose(xp, g, w, size, kernel, stride, padding, dilation, groups):
    """The input gradient of conv: x-shaped (N, C, *size) from g (N, O, *Q), as a conv of
    g dilated by the stride and padded by the kernel's extent with w flipped and
    transposed per group (a gather, never a scatter)."""
    xp = counting(xp, "conv_transpose")
    n, o = g.shape[:2]
    kernel = tuple(w.shape[2:])
    cg = w.shape[1]
    c = cg * groups
    out = tuple(g.shape[2:])
    nd = len(kernel)
    full = tuple(s + lo + hi for s, (lo, hi) in zip(size, padding))       # the padded input's extent
    if any(s > 1 for s in stride):
        dil = tuple((q - 1) * s + 1 for q, s in zip(out, stride))
        gd = xp.zeros((n, o) + dil, dtype=g.dtype)
        gd = xp.setitem(gd, (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride), g)
    else:
        gd = g
    # correlating with the flipped kernel: d (k - 1) before, and up to the padded extent after
    pads = tuple((d * (k - 1), f - e) for d, k, f, e in zip(dilation, kernel, full, gd.shape[2:]))
    wt = xp.reshape(w, (groups, o // groups, cg) + kernel)
    wt = xp.reshape(xp.swapaxes(wt, 1, 2), (c, o // groups) + kernel)
    wt = xp.flip(wt, axis=tuple(range(2, 2 + nd)))
    dxp = conv.fwd(xp, gd, wt, None, (1,) * nd, pads, dilation, groups)
    crop = (slice(None), slice(None)) + tuple(slice(lo, lo + s) for (lo, _), s in zip(padding, size))
    return xp.getitem(dxp, crop)


@conv_transpose.defvjp
def _conv_transpose_vjp(xp, h, saved, node, donate):
    g, w = saved
    ng, nw = node.needs
    meta = _meta(node)
    dg = call(conv, xp, h, w, None, **meta) if ng else None
    dw = call(conv_weight, xp, h, g, **meta) if nw else None
    return dg, dw


@primitive("conv_weight", inputs=("x", "g"), kind=OTHER, retain={"x": "g", "g": "x"})
def conv_weight(xp, x, g, size, kernel, stride, padding, dilation, groups):
    """The weight gradient of conv: (O, C/G, *kernel), summed over the batch chunk by chunk."""
    xp = counting(xp, "conv_weight")
    n, c = x.shape[:2]
    o, out = g.shape[1], tuple(g.shape[2:])
    xc = _channels_first(xp, x, padding)
    gc = xp.swapaxes(g, 0, 1)                 # (O, N, *out): free when g is channels-first
    dw = None
    for n0, n1 in _chunks(n, _per_sample(x, kernel, out)):
        cols = _columns(xp, xc, n0, n1, kernel, out, stride, dilation, groups)
        g2 = xp.reshape(xp.getitem(gc, (slice(None), slice(n0, n1))),
                        (groups, o // groups, (n1 - n0) * math.prod(out)))
        part = xp.matmul(g2, xp.swapaxes(cols, -1, -2))                      # (G, O/G, C/G K)
        dw = part if dw is None else xp.add(dw, part)
    return xp.reshape(dw, (o, c // groups) + tuple(kernel))


@conv_weight.defvjp
def _conv_weight_vjp(xp, h, saved, node, donate):
    x, g = saved
    nx, ng = node.needs
    meta = _meta(node)
    dx = call(conv_transpose, xp, g, h, **meta) if nx else None
    dg = call(conv, xp, x, h, None, **meta) if ng else None
    return dx, dg
