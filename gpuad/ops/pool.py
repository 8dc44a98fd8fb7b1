"""Max pooling as a primitive: the max of each window, saving only where it was.

The forward stacks each kernel offset's strided view of the (-inf padded)
input, (N, C, prod(kernel), *out), takes the max and the argmax over it, and
turns the argmax into torch's index: the flat position in the input plane.
It saves those indices (8 bytes per output), never the input. The backward
adds each output's gradient at its index (scatter_add, itself differentiable:
its VJP is a gather), so overlapping windows accumulate as they should.

>>> import gpuad, numpy as np
>>> x = gpuad.tensor(np.array([[[[1.0, 3.0], [2.0, 0.0]]]]), requires_grad=True)
>>> y = gpuad.nn.functional.max_pool2d(x, 2)
>>> y.backward(gpuad.ones_like(y)); x.grad.numpy().tolist()
[[[[0.0, 1.0], [0.0, 0.0]]]]
"""
import math

import numpy as np

from ..backends import namespace_of
from .conv import pad_spatial, windows
from .registry import primitive, call, OTHER
from .shape import scatter_add


def _pads(size, kernel, stride, padding, dilation, out):
    """(lo, hi) per axis: the padding, and on the right enough to reach the last window
    (ceil_mode may walk past the input)."""
    return tuple((p, max(p, (q - 1) * s + d * (k - 1) + 1 - n - p))
                 for n, k, s, p, d, q in zip(size, kernel, stride, padding, dilation, out))


@primitive("max_pool", inputs=("x",), kind=OTHER, retain={}, has_aux=True)
def max_pool(xp, x, kernel, stride, padding, dilation, out, size=None):
    """Each window's max (NaN if it holds one, as torch); aux: the flat input index of each."""
    size = tuple(x.shape[2:])
    lo_hi = _pads(size, kernel, stride, padding, dilation, out)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win = windows(xp, pad_spatial(xp, x, lo_hi, low), kernel, out, stride, dilation)
    y = xp.max(win, axis=2)
    arg = xp.argmax(win, axis=2)                    # the first max (or the first NaN), as torch
    # kernel offset -> input position per axis, then the flat index in the input plane
    flat = None
    rest = arg
    for i in range(len(kernel) - 1, -1, -1):
        k = xp.remainder(rest, kernel[i]) if i else rest
        rest = xp.floor_divide(rest, kernel[i]) if i else rest
        shape = (1, 1) + tuple(out[j] if j == i else 1 for j in range(len(kernel)))
        start = xp.reshape(xp.arange(out[i]) * stride[i] - padding[i], shape)
        pos = xp.add(xp.multiply(k, dilation[i]), start)
        stride_of = math.prod(size[i + 1:])
        term = xp.multiply(pos, stride_of) if stride_of != 1 else pos
        flat = term if flat is None else xp.add(flat, term)
    return y, (flat,)


@max_pool.defvjp
def _max_pool_vjp(xp, g, saved, node, donate):
    (idx,) = saved
    # create_graph: xp records Tensors, but the indices (aux) stay a raw constant array
    ns = xp if xp.name != "tensor" else namespace_of(idx)
    n, c = g.shape[:2]
    plane = math.prod(node.params["size"])
    rows = ns.reshape(ns.arange(n * c) * plane, (n * c, 1))
    index = ns.reshape(ns.add(ns.reshape(idx, (n * c, -1)), rows), (-1,))
    flat = call(scatter_add, xp, xp.reshape(g, (-1,)), shape=(n * c * plane,), index=index, unique=False)
    return (xp.reshape(flat, (n, c) + tuple(node.params["size"])),)
