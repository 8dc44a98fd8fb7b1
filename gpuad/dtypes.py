"""Dtypes: gpuad uses numpy's dtype objects, and names them as PyTorch does.

>>> import gpuad
>>> gpuad.as_dtype("float64") is gpuad.float64
True
>>> gpuad.tensor(1.5).dtype          # Python floats default to float32
dtype('float32')
"""
import numpy as np

float16 = np.dtype("float16")
float32 = np.dtype("float32")
float64 = np.dtype("float64")
int32 = np.dtype("int32")
int64 = np.dtype("int64")
bool_ = np.dtype("bool")

# bfloat16: the dtype numpy lacks, from ml_dtypes. gpuad stores it and computes in
# float32 (every op upcasts its bfloat16 inputs and rounds its output back), so
# matmul and reductions accumulate in float32, as torch's CPU kernels do.
try:
    import ml_dtypes as _ml_dtypes
    bfloat16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:                      # pragma: no cover  (a dependency; kept optional for bare checkouts)
    bfloat16 = None

# Names PyTorch users type, on top of the ones numpy already understands.
_ALIASES = {"float": float32, "double": float64, "half": float16, "long": int64, "int": int32, "bool": bool_}
if bfloat16 is not None:
    _ALIASES.update(bfloat16=bfloat16, bf16=bfloat16)

default_float = float32


def as_dtype(dtype):
    """Normalise a dtype given as a numpy dtype, a type, or a name ("float64", "double")."""
    if dtype is None or isinstance(dtype, np.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in _ALIASES:
        return _ALIASES[dtype]
    try:
        return np.dtype(dtype)
    except TypeError:
        # cupy and bfloat16-like dtypes come through here as objects with a numpy twin.
        twin = getattr(dtype, "dtype", None)
        if twin is not None:
            return np.dtype(twin)
        raise TypeError(f"gpuad: {dtype!r} is not a dtype (try 'float32', 'float64' or gpuad.float32)") from None


def grad_dtype(dtype):
    """The dtype gradients of a `dtype` value travel in during backward: float32 for
    bfloat16 (its values are computed in float32 too), the dtype itself otherwise."""
    return float32 if dtype == bfloat16 and bfloat16 is not None else dtype


def is_floating(dtype):
    """True for dtypes that can carry a gradient."""
    return dtype.kind == "f" or dtype.kind == "c" or dtype == bfloat16


# --- promotion, as PyTorch does it ---------------------------------------------------
#
# Categories bool < integer < floating. Between tensors of one category the wider
# dtype wins (int32 + int64 -> int64, float16 + float32 -> float32); across
# categories the higher category's dtype wins (int64 + float32 -> float32, where
# numpy says float64). A 0-d tensor, a Python number or a numpy scalar only
# decides the dtype when its category is higher than the tensors' (float32 *
# np.float64(2) stays float32; int64 * 2.5 becomes the default float, float32).

_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3, "V": 2}      # V: bfloat16


def _category(v):
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return 1
    if isinstance(v, float):
        return 2
    if isinstance(v, complex):
        return 3
    return _CATEGORY[v.dtype.kind]


def _scalar_dtype(v):
    """The dtype a weak operand brings when its category wins."""
    if isinstance(v, (bool, int, float, complex)) or isinstance(v, np.generic):
        kind = 0 if isinstance(v, (bool, np.bool_)) else (1 if isinstance(v, (int, np.integer)) else 2)
        return (bool_, int64, default_float)[kind] if kind < 3 else np.dtype("complex64")
    return v.dtype                                      # a 0-d array keeps its own


def result_type(a, b):
    """torch.result_type for two operands (arrays, 0-d arrays, Python or numpy numbers).

    >>> import numpy as np
    >>> from gpuad.dtypes import result_type
    >>> result_type(np.ones(2, np.int64), np.ones(2, np.float32)), result_type(np.ones(2, np.float32), np.float64(1))
    (dtype('float32'), dtype('float32'))
    >>> result_type(np.ones(2, np.int64), 2.5), result_type(np.ones(2, np.int64), np.array(1.5))
    (dtype('float32'), dtype('float64'))
    """
    a_dim = getattr(a, "ndim", 0) > 0 and not isinstance(a, np.generic)
    b_dim = getattr(b, "ndim", 0) > 0 and not isinstance(b, np.generic)
    if a_dim != b_dim:                                  # one dimensioned tensor, one weak operand
        strong, weak = (a, b) if a_dim else (b, a)
        if _category(weak) > _category(strong):
            return _scalar_dtype(weak)
        return strong.dtype
    ca, cb = _category(a), _category(b)
    if ca != cb:
        return _scalar_dtype(a) if ca > cb else _scalar_dtype(b)
    if not hasattr(a, "dtype") and not hasattr(b, "dtype"):
        return _scalar_dtype(a)
    if not hasattr(a, "dtype") or not hasattr(b, "dtype"):
        return (b if not hasattr(a, "dtype") else a).dtype
    if bfloat16 is not None and bfloat16 in (a.dtype, b.dtype) and a.dtype != b.dtype:
        other = b.dtype if a.dtype == bfloat16 else a.dtype
        return float32 if other in (float16, float32) else other    # torch: bf16 + f16 -> f32
    return np.promote_types(a.dtype, b.dtype)


def promote(a, b, float_result=False):
    """a and b cast to their torch result type (constants stay Python numbers when
    that suffices); float_result: integer results become the default float (true division)."""
    dt = result_type(a, b)
    if float_result and dt.kind in "biu":
        dt = default_float
    return _cast(a, dt), _cast(b, dt)


def _cast(v, dt):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, int, float)):
        return v if (dt.kind == "f" or (dt.kind in "iu" and not isinstance(v, float)) or dt.kind == "b") else \
            np.asarray(v, dtype=dt)
    if v.dtype != dt:
        return v.astype(dt)
    return v
