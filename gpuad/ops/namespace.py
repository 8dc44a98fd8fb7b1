"""numpy's vocabulary on Tensors: the `xp` of a create_graph backward.

Every VJP is written against `xp`. On arrays that is numpy (or cupy); with
create_graph=True the engine passes `tensor_ns` instead, whose functions are
gpuad ops, so the backward pass records itself and can be differentiated
again. `out=` is accepted and ignored: a recorded op never writes in place.

>>> import gpuad
>>> from gpuad.ops.namespace import tensor_ns
>>> x = gpuad.tensor(2.0, requires_grad=True)
>>> tensor_ns.multiply(x, x, out=None).requires_grad
True
"""
import numpy as np

from . import composite as C, indexing as I
from ..backends import namespace_of, numpy_ns
from ..backends.devices import to_device
from ..tensor import Tensor


class TensorNamespace:
    """Hand-written entries where numpy's signature differs from gpuad's function;
    gpuad/surface.py adds one entry per primitive (out= dropped). `device`: where the
    constants a VJP makes (ones, arange, asarray of a host mask) are put: the device
    of the gradients it runs on (tensor_ns_on)."""
    name = "tensor"

    def __init__(self, device="cpu"):
        self.device = device

    def _const(self, arr):
        return Tensor._from(to_device(arr, self.device))        # a constant (GREY)

    def asarray(self, a, dtype=None):
        if isinstance(a, Tensor):
            return a if dtype is None or a.dtype == dtype else C.astype(a, dtype)
        return self._const(np.asarray(a, dtype=dtype))

    def buffer(self, shape, dtype):
        return None                    # recorded ops allocate their own outputs

    def getitem(self, a, index):
        return C.getitem(a, index)

    def transpose(self, a, axes=None):
        return C.transpose(a, axes) if axes is not None else C.transpose(a)

    def swapaxes(self, a, i, j):
        return C.swapaxes(a, i, j)

    def reshape(self, a, shape):
        return C.reshape(a, shape)

    def astype(self, a, dtype):
        return C.astype(a, dtype)

    def sum(self, a, axis=None, keepdims=False):
        return C.sum(a, axis, keepdims)

    def mean(self, a, axis=None, keepdims=False):
        return C.mean(a, axis, keepdims)

    def max(self, a, axis=None, keepdims=False):
        return C.amax(a, axis, keepdims)

    def min(self, a, axis=None, keepdims=False):
        return C.amin(a, axis, keepdims)

    def concatenate(self, arrays, axis=0):
        return C.concatenate(arrays, axis)

    def stack(self, arrays, axis=0):
        return C.stack(arrays, axis)

    def setitem(self, a, index, value):
        return C.setitem(a, index, value)

    def zero_where(self, a, drop):
        return C.where(drop, 0.0, a)         # recorded: never in place

    def logical_and(self, a, b):
        a, b = (t.data if isinstance(t, Tensor) else t for t in (a, b))
        return Tensor._from(namespace_of(a).logical_and(a, b))       # a mask: a constant (GREY)

    def flip(self, a, axis):
        return I.flip(a, axis)

    def cumsum(self, a, axis):
        return I.cumsum(a, axis)

    def cumprod(self, a, axis):
        return I.cumprod(a, axis)

    def zeros_like(self, a, dtype=None):
        return self._const(np.zeros(a.shape, dtype or a.dtype))

    def ones(self, shape, dtype=None):
        return self._const(np.ones(shape, dtype=dtype))

    def eye(self, n, dtype=None):
        return self._const(np.eye(n, dtype=dtype))

    def einsum(self, equation, *operands, optimize=True):
        return C.einsum(equation, *operands)

    def dropout_keep(self, seed, tile, shape, p):
        return self._const(numpy_ns.dropout_keep(seed, tile, shape, p))     # a mask: a constant (GREY)

    def arange(self, n, dtype=None):
        return self._const(np.arange(n, dtype=dtype))


tensor_ns = TensorNamespace()
_on = {"cpu": tensor_ns}


def tensor_ns_on(device):
    """The create_graph namespace whose constants land on `device`."""
    ns = _on.get(device)
    if ns is None:
        ns = _on[device] = TensorNamespace(device)
    return ns
