"""The few primitives the tracer records that numpy does not spell as a function:
functional forms of in-place writes, and draws from gpuad's generator.

Each is what the replay calls; its name is the primitive's name in the graph.
`xp` is the array namespace of the device the replay runs on (numpy's or
CuPy's ArrayNamespace), bound when the replay is generated.

>>> import numpy as np
>>> from gpuad.compiler.prims import broadcast_copy
>>> broadcast_copy(np.float32(2), (2,))
array([2., 2.], dtype=float32)
"""
import numpy as np


def broadcast_copy(a, shape, xp=None):
    """a broadcast to shape, as a fresh array (an in-place write of a smaller value)."""
    m = np if xp is None else xp.module
    return m.array(m.broadcast_to(a, shape))


def full(shape, value, dtype, xp=None):
    return (np if xp is None else xp.module).full(shape, value, dtype)


def ufunc_at(name, a, index, b=None, xp=None):
    """A copy of a with ufunc.at applied (np.add.at(a, index, b), functional)."""
    if xp is not None and xp.module is not np:
        if name != "add":
            raise NotImplementedError(f"gpuad.compile: {name}.at on a GPU")
        out = a.copy()
        xp._add_at(out, index, b)
        return out
    out = a.copy()
    getattr(np, name).at(out, index, *(() if b is None else (b,)))
    return out


def random_draw(kind, shape, dtype, generator, extra=(), xp=None):
    """The next draw from a gpuad Generator, as the eager call made it (drawn on the
    host, then moved to the device, as eager dropout does). `extra`: the draw's numbers
    (low and high, loc and scale, n and p). A 0-d shape gives a 0-d array, with the
    value numpy's scalar draw gives."""
    rng = generator.rng
    if kind in ("random", "standard_normal"):
        a = getattr(rng, kind)(shape, dtype=dtype)
    elif kind == "integers":
        a = rng.integers(extra[0], extra[1], size=shape, dtype=dtype)
    else:                                   # uniform, normal, binomial: float64 or int64, as numpy
        a = getattr(rng, kind)(*extra, size=shape)
    return a if xp is None or xp.module is np else xp.module.asarray(a)


class _TensorMark:
    """Marks, in a host callback's arguments, an array that was a Tensor."""

    def __repr__(self):
        return "TENSOR"


TENSOR = _TensorMark()


def host_callback(fn, tree, xp=None):
    """fn(*args, **kwargs) on the replay's values, with the Tensors it was given as Tensors
    again (gpuad.compiler.disable). Returns a dummy True: the equation's value."""
    from ..tensor import Tensor

    def back(x):
        if isinstance(x, tuple) and len(x) == 2 and x[0] is TENSOR:
            return Tensor._from(x[1])
        if isinstance(x, (tuple, list)):
            return type(x)(back(v) for v in x)
        if isinstance(x, dict):
            return {k: back(v) for k, v in x.items()}
        return x
    args, kwargs = back(tree)
    fn(*args, **kwargs)
    return np.bool_(True)


def as_python(value, how):
    """What Python saw of a traced value: bool(), int(), float(), or the host array
    (.tolist(), np.asarray()). `how` names the conversion; a replay's check repeats it."""
    if how == "bool":
        return bool(value)
    if how == "int":
        return int(value)
    if how == "float":
        return float(value)
    return np.array(value.get() if hasattr(value, "get") else value, copy=True)


def same_value(now, then):
    """Whether two values Python saw are the same (NaN as NaN): numbers, or host arrays."""
    if isinstance(now, np.ndarray) or isinstance(then, np.ndarray):
        return (isinstance(now, np.ndarray) and isinstance(then, np.ndarray) and now.shape == then.shape
                and np.array_equal(now, then, equal_nan=then.dtype.kind in "fc"))
    return now == then or (now != now and then != then)


def check_value(a, expected, how, what, xp=None):
    """A replay's check of a value its step branched on while traced (gpuad.compile's
    fallback="eager", gpuad.compiler.concrete): BranchError when this call's differs,
    before the replay writes anything back. On a device, the flag instead (read with the
    outputs, after the replay: a host read mid-replay would break a CUDA graph)."""
    if xp is not None and xp.module is not np:
        return _flag_value(a, expected, how, xp.module)
    now = as_python(a, how)
    if not same_value(now, expected):
        from ..errors import BranchError
        raise BranchError(f"gpuad.compile: the step branched on {what}: traced with {_show(expected)}, "
                          f"now {_show(now)}", what, now)
    return np.bool_(False)


def _flag_value(a, expected, how, m):
    """check_value's flag on a device: True when a differs from expected (computed there)."""
    if how == "bool":
        return m.not_equal(a.reshape(()).astype(bool), expected)
    if how == "int":
        v = a.reshape(())
        return m.not_equal(m.trunc(v) if v.dtype.kind == "f" else v, expected)
    e = expected if how == "float" else m.asarray(expected)
    v = a.reshape(()).astype(np.float64) if how == "float" else a
    same = v == e
    if np.dtype(v.dtype).kind in "fc":
        same = same | ((v != v) & (e != e))
    return m.logical_not(same.all())


def _show(v):
    return f"array of shape {v.shape}" if isinstance(v, np.ndarray) and v.size > 4 else repr(
        v.tolist() if isinstance(v, np.ndarray) else v)


def stop_gradient(a, xp=None):
    """a itself: the value of Tensor.detach(). A mark for forward mode (no tangent)."""
    return a


HELPERS = ("broadcast_copy", "full", "ufunc_at", "random_draw", "stop_gradient", "host_callback", "check_value")
