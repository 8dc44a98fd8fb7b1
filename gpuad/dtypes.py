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

# Names PyTorch users type, on top of the ones numpy already understands.
_ALIASES = {"float": float32, "double": float64, "half": float16, "long": int64, "int": int32, "bool": bool_}

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


def is_floating(dtype):
    """True for dtypes that can carry a gradient."""
    return dtype.kind == "f" or dtype.kind == "c"
