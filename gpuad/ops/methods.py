"""Tensor methods that call ops, installed onto Tensor by the ops package.

tensor.py holds the data and the autograd API and imports no op; the ops
install what they offer: install.py the methods and operators declared on
primitives, this module the hand-written public functions that PyTorch also
has as methods (with their dim/keepdim spellings) and a few conversions.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> x.sum(dim=0).tolist(), x.T.shape, x.double().dtype
([4.0, 6.0], (2, 2), dtype('float64'))
"""
from . import api
from ..tensor import Tensor

# Tensor.<name> is api.<name>: the first argument is the tensor itself.
_SAME = ("sum", "mean", "max", "min", "amax", "amin", "var", "std", "logsumexp", "softmax", "log_softmax",
         "reshape", "view", "transpose", "permute", "swapaxes", "flatten", "squeeze", "unsqueeze", "expand_dims",
         "matmul", "clamp", "clip", "square", "gelu", "softplus", "astype")


def _broadcast_to(self, *shape):
    return api.broadcast_to(self, api._as_shape(shape))


def _to(self, target):
    """to(dtype) casts; to('cuda') / to('cpu') moves (a GREY copy on the new device)."""
    if isinstance(target, str) and target.split(":")[0] in ("cpu", "cuda"):
        return self._to_device(target)
    return api.astype(self, target)


def _clone(self):
    """A copy that stays in the graph (gradient flows through)."""
    return api.multiply(self, 1)


def install():
    for name in _SAME:
        setattr(Tensor, name, getattr(api, name))
    Tensor.broadcast_to = Tensor.expand = _broadcast_to
    Tensor.T = property(lambda self: api.transpose(self))
    Tensor.__getitem__ = api.getitem
    Tensor.__pos__ = lambda self: self
    Tensor.to = _to
    Tensor.float = lambda self: api.astype(self, "float32")
    Tensor.double = lambda self: api.astype(self, "float64")
    Tensor.half = lambda self: api.astype(self, "float16")
    Tensor.clone = _clone
