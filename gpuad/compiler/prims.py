"""The few primitives the tracer records that numpy does not spell as a function:
functional forms of in-place writes, and draws from gpuad's generator.

Each is what the replay calls; its name is the primitive's name in the graph.

>>> import numpy as np
>>> from gpuad.compiler.prims import broadcast_copy
>>> broadcast_copy(np.float32(2), (2,))
array([2., 2.], dtype=float32)
"""
import numpy as np


def broadcast_copy(a, shape):
    """a broadcast to shape, as a fresh array (an in-place write of a smaller value)."""
    return np.array(np.broadcast_to(a, shape))


def full(shape, value, dtype):
    return np.full(shape, value, dtype)


def ufunc_at(name, a, index, b=None):
    """A copy of a with ufunc.at applied (np.add.at(a, index, b), functional)."""
    out = a.copy()
    getattr(np, name).at(out, index, *(() if b is None else (b,)))
    return out


def random_draw(kind, shape, dtype, generator):
    """The next draw from a gpuad Generator, as the eager call made it."""
    if kind == "random":
        return generator.rng.random(shape, dtype=dtype)
    return generator.rng.standard_normal(shape, dtype=dtype)
