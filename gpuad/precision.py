"""Autocast's op policy and state: which primitives run in the low dtype, which in float32,
and which promote their operands, per device type, as torch.autocast's lists say.

torch keeps different lists for CUDA and for the CPU (torch/csrc/autograd/... and
aten/src/ATen/autocast_mode.cpp); the entries below are those of its lists that
name an op gpuad has, by gpuad's primitive name. Casting happens where a
primitive is applied (gpuad/ops/dispatch.py), only for ops named here and only
while an autocast region is active for the device the op's inputs live on; the
casts are recorded ops, so gradients flow back to float32 parameters in float32.

Rules, as torch's: "lower" casts float32 (and the other low dtype) operands to the
region's dtype; "fp32" casts float16 and bfloat16 operands to float32; "promote"
casts every floating operand to the widest among them. float64 is never cast.

>>> from gpuad.precision import policy
>>> policy("matmul", "cpu"), policy("softmax", "cuda"), policy("softmax", "cpu"), policy("concatenate", "cpu")
('lower', 'fp32', None, 'promote')
"""
import numpy as np

from .dtypes import bfloat16

LOWER, FP32, PROMOTE = "lower", "fp32", "promote"

# torch's CUDA lists (lower_precision_fp, fp32, promote), as gpuad primitives
_CUDA = {
    LOWER: {"matmul", "linear", "linear_relu", "linear_gelu", "linear_tanh", "linear_sigmoid", "conv",
            "conv_transpose", "einsum", "scaled_dot_product_attention"},
    FP32: {"acos", "asin", "cosh", "sinh", "tan", "exp", "expm1", "log", "log10", "log1p", "log2", "power",
           "reciprocal", "rsqrt", "softplus", "sum", "cumsum", "cumprod", "softmax", "log_softmax", "layer_norm",
           "cross_entropy", "vector_norm", "rms_norm"},
    PROMOTE: {"atan2", "scatter_add"},
}
# torch's CPU lists: fewer float32 ops (the losses, prod), stack and cat promote
_CPU = {
    LOWER: {"matmul", "linear", "linear_relu", "linear_gelu", "linear_tanh", "linear_sigmoid", "conv",
            "conv_transpose", "einsum", "scaled_dot_product_attention"},    # (einsum: torch's runs bmm)
    FP32: {"cross_entropy"},
    PROMOTE: {"concatenate", "stack"},
}
POLICIES = {"cuda": _CUDA, "cpu": _CPU}
# Composite functions (gpuad.nn.functional) on the lists: they run with their inputs cast
# (gpuad/amp/autocast.py wraps them); the primitives inside then see float32.
FUNCTIONS = {
    "cuda": {FP32: {"cross_entropy", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "nll_loss",
                    "binary_cross_entropy_with_logits", "softmin", "normalize", "cosine_similarity",
                    "group_norm"}},
    "cpu": {FP32: {"cross_entropy", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "nll_loss",
                   "binary_cross_entropy", "binary_cross_entropy_with_logits"}},
}

AMP_OPS = frozenset(n for p in POLICIES.values() for names in p.values() for n in names)


class _State:
    """The active autocast regions: device type -> the low dtype (None: off)."""
    __slots__ = ("active", "dtype")

    def __init__(self):
        self.active = False              # any region on: the one flag dispatch reads
        self.dtype = {"cpu": None, "cuda": None}


AUTOCAST = _State()
_cast = [None]          # the recorded cast (a Tensor, a dtype) -> Tensor: set by gpuad/ops/elementwise.py


def set_caster(fn):
    _cast[0] = fn


def policy(name, device):
    """'lower', 'fp32', 'promote' or None for primitive `name` on device type `device`."""
    for rule, names in POLICIES[_kind(device)].items():
        if name in names:
            return rule
    return None


def _floating(dt):
    dt = np.dtype(dt)
    return dt.kind == "f" or (bfloat16 is not None and dt == bfloat16)


def targets(rule, dtypes, low):
    """The dtype each operand is cast to (None: left as it is)."""
    if rule == LOWER:
        return [low if dt is not None and _floating(dt) and np.dtype(dt) != np.float64 and np.dtype(dt) != low
                else None for dt in dtypes]
    if rule == FP32:                     # float16 and bfloat16 (itemsize 2) up to float32
        return [np.dtype(np.float32) if dt is not None and _floating(dt) and np.dtype(dt).itemsize < 4 else None
                for dt in dtypes]
    floats = [np.dtype(dt) for dt in dtypes if dt is not None and _floating(dt)]
    if len(set(floats)) < 2:
        return [None] * len(dtypes)
    widest = max(floats, key=lambda d: (d.itemsize, d.kind == "f"))
    return [widest if dt is not None and _floating(dt) and np.dtype(dt) != widest else None for dt in dtypes]


def _kind(device):
    return "cpu" if device == "cpu" else "cuda"


def _cast_by(rule, args, low):
    """args with their Tensor operands cast as `rule` says (args itself when none is)."""
    dtypes = [getattr(a, "dtype", None) if hasattr(a, "_node") else None for a in args]
    want = targets(rule, dtypes, low)
    if not any(w is not None for w in want):
        return args
    return type(args)(a if w is None else _cast[0](a, w) for a, w in zip(args, want))


def autocast_args(name, args, device):
    """args (Tensors and constants) cast for primitive `name` under the region active for
    `device`, or args unchanged."""
    low = AUTOCAST.dtype.get(_kind(device))
    rule = policy(name, device) if low is not None else None
    return args if rule is None else _cast_by(rule, args, low)


def _device_of(args):
    for a in args:
        if hasattr(a, "_node"):
            return a.device
    return "cpu"


def autocast_function(name):
    """A composite function (a loss, a norm) on torch's float32 list for some device: its
    Tensor operands cast first while a region is active there (one flag read when none is)."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            if AUTOCAST.active:
                kind = _kind(_device_of(args))
                low = AUTOCAST.dtype.get(kind)
                if low is not None and name in FUNCTIONS[kind][FP32]:
                    args = _cast_by(FP32, args, low)
            return fn(*args, **kwargs)
        return wrapped
    return wrap
