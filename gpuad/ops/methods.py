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
from . import api, inplace
from .elementwise import add, subtract, multiply, divide
from ..backends import namespace_of
from ..tensor import Tensor

# Tensor.<name> is api.<name>: the first argument is the tensor itself.
_SAME = ("sum", "mean", "max", "min", "amax", "amin", "var", "std", "logsumexp", "softmax", "log_softmax",
         "reshape", "view", "transpose", "permute", "swapaxes", "flatten", "squeeze", "unsqueeze", "expand_dims",
         "matmul", "clamp", "clip", "square", "gelu", "softplus", "astype",
         "argmax", "argmin", "sort", "argsort", "topk", "gather", "take_along_dim", "index_select", "masked_fill",
         "tril", "triu", "flip", "roll", "split", "chunk", "repeat", "tile", "cumsum", "cumprod", "prod",
         "scatter_add", "index_add", "norm")


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


def _binary_inplace(op, name):
    def method(self, other):
        return inplace.binary_(self, op, other, name)
    method.__name__ = name
    method.__doc__ = f"In place: self {op.name} other (recorded when anything requires grad; see gpuad.ops.inplace)."
    return method


def _fill_(self, value):
    """Set every element to value, in place."""
    return inplace.assign_(self, value, "fill_")


def _zero_(self):
    """Set every element to 0, in place."""
    return inplace.assign_(self, 0.0, "zero_")


def _copy_(self, src):
    """Copy src (broadcast, cast to self's dtype) into self; the gradient flows to src."""
    return inplace.assign_(self, src, "copy_")


def _clamp_(self, min=None, max=None):  # noqa: A002
    """clamp, in place."""
    if not inplace.writes(self, "clamp_"):
        lo = min.data if isinstance(min, Tensor) else min
        hi = max.data if isinstance(max, Tensor) else max
        namespace_of(self.data).clip(self.data, lo, hi, out=self.data)
        inplace.mark_mutated(self, "clamp_")
        return self
    return inplace.write_back(self, api.clamp(self, min, max), "clamp_")


def _setitem(self, index, value):
    """self[index] = value; recorded when self or value requires grad (outside no_grad)."""
    if isinstance(index, Tensor):
        index = index.data
    inplace.assign_(self, value, "__setitem__", index)


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
    Tensor.bfloat16 = lambda self: api.astype(self, "bfloat16")
    Tensor.clone = _clone
    for op, name in ((add, "add"), (subtract, "sub"), (multiply, "mul"), (divide, "div")):
        setattr(Tensor, name + "_", _binary_inplace(op, name + "_"))
    for op, dunder, spelled in ((add, "__iadd__", "+="), (subtract, "__isub__", "-="), (multiply, "__imul__", "*="),
                                (divide, "__itruediv__", "/=")):
        setattr(Tensor, dunder, _binary_inplace(op, spelled))
    Tensor.fill_, Tensor.zero_, Tensor.copy_, Tensor.clamp_ = _fill_, _zero_, _copy_, _clamp_
    Tensor.clip_ = _clamp_
    Tensor.__setitem__ = _setitem
