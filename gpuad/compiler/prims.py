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


def stop_gradient(a, xp=None):
    """a itself: the value of Tensor.detach(). A mark for forward mode (no tangent)."""
    return a


HELPERS = ("broadcast_copy", "full", "ufunc_at", "random_draw", "stop_gradient", "host_callback")
