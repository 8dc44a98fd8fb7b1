"""Ops: one declaration per primitive, grouped by kind, and the functions made from them.

dispatch.py      apply(): kernel choice, record, account (the one core every op runs)
registry.py      Primitive: the declaration (forward, VJP, what it saves, kind, kernels)
derivatives.py   the table of simple unary elementwise ops, one line each
elementwise.py reduce.py shape.py contraction.py scan.py   the other primitives
fused.py attention.py norms.py   fused primitives (one kernel, their own backward)
conv.py pool.py  convolution (three primitives, each other's gradients) and max pooling
composite.py     the hand-written public functions (argument checks) and composite ops
indexing.py      index, selection and arrangement ops, composed from primitives
views.py         which tensor views which (for writes through views)
inplace.py       in-place ops, and writes through views
namespace.py     numpy's vocabulary on Tensors: the create_graph `xp`
methods.py       the hand-written Tensor methods

Importing this package loads the declarations only; gpuad/surface.py makes
the public functions, methods and operators from them.
"""
from . import registry, derivatives, elementwise, reduce, shape, contraction, fused, scan, attention, norms, conv, pool  # noqa: F401
from .registry import REGISTRY, Primitive, primitive  # noqa: F401
from .derivatives import unary  # noqa: F401
