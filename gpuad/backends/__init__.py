"""Backends: the array decides where an op runs (numpy: CPU, cupy: GPU).

Every forward and every VJP is written once against an `xp` namespace. For
arrays, `xp` is an ArrayNamespace wrapping numpy or cupy; during a
create_graph backward it is gpuad's own differentiable namespace
(gpuad.ops.namespace.tensor_ns), so the same VJP code records itself.

The vocabulary is numpy's (add, multiply, tanh, sum, matmul, where, ...) plus
a few extras below that numpy does not spell the same way on every backend.

>>> import numpy as np
>>> from gpuad.backends import namespace_of
>>> namespace_of(np.zeros(2)).name
'numpy'
"""
import numpy as np

from .numpy_backend import ArrayNamespace, numpy_ns  # noqa: F401  (ArrayNamespace: the vocabulary)
from .batched import BatchedArray

# Non-empty while gpuad.compile traces a step: then an op whose first operand is a plain
# numpy array still records, when another operand is a Tracer (see tracing_namespace).
TRACING = []


def tracing_namespace(arrays):
    """The namespace of the first Tracer among `arrays`, or None."""
    for a in arrays:
        xp = getattr(a, "_xp", None)
        if xp is not None:
            return xp
    return None

_cupy_ns = None


def _cupy_namespace():
    global _cupy_ns
    if _cupy_ns is None:
        from . import cupy_backend
        _cupy_ns = cupy_backend.namespace()
    return _cupy_ns


def refuse_any(mask, error):
    """Raise `error` where any element of `mask` is True (a value check: ids in range,
    finite norms). Under gpuad.compile the values are unknown: the trace takes the branch
    where none is and the replay checks it; a call that finds one runs eagerly, and raises
    there, as it would have.

    >>> import numpy as np
    >>> refuse_any(np.array([False, False]), ValueError("never"))
    >>> refuse_any(np.array([False, True]), ValueError("an element is set"))
    Traceback (most recent call last):
    ValueError: an element is set
    """
    while isinstance(mask, BatchedArray):       # under vmap: any example's
        mask = mask.value
    xp = getattr(mask, "_xp", None)
    if xp is not None:
        xp.assume_none(mask, str(error))
    elif bool(mask.any()):
        raise error


def any_true(mask):
    """bool(mask.any()), where under vmap it is whether any example's is (a VJP's choice
    of the exact path, taken for the whole batch)."""
    while isinstance(mask, BatchedArray):
        mask = mask.value
    return bool(mask.any())


def writeable(a):
    """Whether a's buffer may be written in place: numpy's flag (a broadcast view is
    read-only); a CuPy array is always writeable (its Flags has no such field)."""
    flags = getattr(a, "flags", None)
    return getattr(flags, "writeable", flags is not None)


def namespace_of(a):
    """The ArrayNamespace that owns array `a`."""
    if type(a) is np.ndarray or isinstance(a, (np.ndarray, np.generic)):
        return numpy_ns
    module = type(a).__module__
    if module.startswith("cupy"):
        return _cupy_namespace()
    if module == "gpuad.backends.abstract":      # the planner's sizes: ops on them compute shapes
        from .abstract import abstract_ns
        return abstract_ns
    xp = getattr(a, "_xp", None)        # a Tracer of gpuad.compile records into its trace
    return numpy_ns if xp is None else xp


def device_of(a):
    """'cpu' for numpy arrays, 'cuda' for cupy arrays."""
    while isinstance(a, BatchedArray):
        a = a.value
    xp = namespace_of(a)
    return "cpu" if xp is numpy_ns else getattr(xp, "device", "cuda")
