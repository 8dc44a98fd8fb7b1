"""The hand-written Tensor methods: the public functions PyTorch also has as methods
(with their dim/keepdim spellings), conversions and the in-place ops.

tensor.py holds the data and imports no op; gpuad/surface.py installs this
table onto Tensor, after the methods and operators the primitives declare.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> x.sum(dim=0).tolist(), x.T.shape, x.double().dtype
([4.0, 6.0], (2, 2), dtype('float64'))
"""
import numpy as np

from . import composite as C, indexing, inplace
from ..backends import namespace_of
from ..dtypes import as_dtype
from ..tensor import Tensor

# Tensor.<name> is gpuad.<name>: the first argument is the tensor itself.
_COMPOSITE = ("sum", "mean", "amax", "amin", "var", "std", "logsumexp", "softmax", "log_softmax",
              "reshape", "view", "transpose", "permute", "swapaxes", "flatten", "squeeze", "unsqueeze",
              "expand_dims", "matmul", "clamp", "clip", "square", "gelu", "softplus", "astype", "norm")
_INDEXING = ("max", "min", "argmax", "argmin", "sort", "argsort", "topk", "gather", "take_along_dim",
             "index_select", "masked_fill", "tril", "triu", "flip", "roll", "split", "chunk", "repeat", "tile",
             "cumsum", "cumprod", "prod", "scatter_add", "index_add")


def _broadcast_to(self, *shape):
    """expand / broadcast_to; -1 keeps that dimension's size (torch's expand)."""
    shape = C._as_shape(shape)
    lead = len(shape) - self.ndim
    out = []
    for i, s in enumerate(shape):
        if s == -1:
            if i < lead:
                raise ValueError(f"gpuad.expand: the expanded size -1 isn't allowed in a leading, non-existing "
                                 f"dimension {i} (expanding shape {self.shape} to {tuple(shape)})")
            s = self.shape[i - lead]
        out.append(s)
    return C.broadcast_to(self, tuple(out))


def _to(self, target):
    """to(dtype) casts; to('cuda') / to('cpu') moves (a GREY copy on the new device)."""
    if isinstance(target, str) and target.split(":")[0] in ("cpu", "cuda"):
        return self._to_device(target)
    return C.astype(self, target)


def _clone(self):
    """A copy that stays in the graph (gradient flows through)."""
    return C.multiply(self, 1)


def _contiguous(self):
    """self when its buffer is in C order, else a C-order copy that stays in the graph."""
    flags = getattr(self.data, "flags", None)
    if flags is None or flags.c_contiguous:
        return self
    # flattening a non-contiguous view copies in C order (a ufunc's copy keeps the layout)
    return C.reshape(C.reshape(self, (-1,)), tuple(self.shape))


_TYPE_NAMES = {"float32": "FloatTensor", "float64": "DoubleTensor", "float16": "HalfTensor",
               "bfloat16": "BFloat16Tensor", "int64": "LongTensor", "int32": "IntTensor", "int16": "ShortTensor",
               "int8": "CharTensor", "uint8": "ByteTensor", "bool": "BoolTensor"}


def _type(self, dtype=None):
    """torch's Tensor.type: with a dtype, a cast; without, the type's name ('gpuad.FloatTensor')."""
    if dtype is None:
        return "gpuad." + _TYPE_NAMES.get(str(self.dtype), f"{self.dtype}Tensor")
    return C.astype(self, dtype)


def _new(fill):
    """Tensor.new_zeros / new_ones / new_full / new_empty: a new tensor of self's dtype and
    device unless told otherwise (torch's factory methods)."""
    def make(self, *size, fill_value=None, dtype=None, device=None, requires_grad=False):
        if fill is None:                            # new_full(size, fill_value)
            size, fill_value = (size[0], size[1]) if len(size) == 2 else (size[0], fill_value)
        shape = C._as_shape(size if fill is not None else (size,))
        dt = as_dtype(dtype) if dtype is not None else self.dtype
        return Tensor(np.full(shape, fill if fill is not None else fill_value, dtype=dt),
                      device=device or self.device, requires_grad=requires_grad)
    make.__name__ = {0: "new_zeros", 1: "new_ones", None: "new_full"}.get(fill, "new_empty")
    return make


def _binary_inplace(fn, name):
    def method(self, other):
        return inplace.binary_(self, fn, other, name)
    method.__name__ = name
    method.__doc__ = f"In place: self {fn.__name__} other (recorded when anything requires grad; see gpuad.ops.inplace)."
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
    return inplace.write_back(self, C.clamp(self, min, max), "clamp_")


def _setitem(self, index, value):
    """self[index] = value; recorded when self or value requires grad (outside no_grad)."""
    if isinstance(index, Tensor):
        index = index.data
    inplace.assign_(self, value, "__setitem__", index)


def table():
    """{Tensor attribute: value}, for gpuad/surface.py to install."""
    t = {name: getattr(C, name) for name in _COMPOSITE}
    t.update((name, getattr(indexing, name)) for name in _INDEXING)
    t.update(broadcast_to=_broadcast_to, expand=_broadcast_to, T=property(lambda self: C.transpose(self)),
             __getitem__=C.getitem, __pos__=lambda self: self, to=_to, clone=_clone,
             float=lambda self: C.astype(self, "float32"), double=lambda self: C.astype(self, "float64"),
             half=lambda self: C.astype(self, "float16"), bfloat16=lambda self: C.astype(self, "bfloat16"),
             long=lambda self: C.astype(self, "int64"), int=lambda self: C.astype(self, "int32"),
             bool=lambda self: C.astype(self, "bool"), contiguous=_contiguous,
             view_as=lambda self, other: C.reshape(self, tuple(other.shape)),
             type_as=lambda self, other: C.astype(self, other.dtype),
             new_zeros=_new(0), new_ones=_new(1), new_full=_new(None), type=_type,
             fill_=_fill_, zero_=_zero_, copy_=_copy_, clamp_=_clamp_, clip_=_clamp_, __setitem__=_setitem)
    for fn, name in ((C.add, "add"), (C.subtract, "sub"), (C.multiply, "mul"), (C.divide, "div")):
        t[name + "_"] = _binary_inplace(fn, name + "_")
    for fn, dunder, spelled in ((C.add, "__iadd__", "+="), (C.subtract, "__isub__", "-="),
                                (C.multiply, "__imul__", "*="), (C.divide, "__itruediv__", "/=")):
        t[dunder] = _binary_inplace(fn, spelled)
    return t
