"""Ops: one declaration per primitive, grouped by kind, and the entry points made from them.

registry.py     Primitive: the declaration (forward, VJP, what it saves, kind, kernels)
dispatch.py     apply(): kernel choice, record, account (the one core)
abstract.py     abstract arrays: the shape-and-dtype rule, and the planner's view of a VJP
derivatives.py  the table of simple unary elementwise ops, one line each
elementwise.py reduce.py shape.py linalg.py fused.py   the other primitives
api.py          the hand-written public functions (argument checks, composites)
install.py      gpuad.<name>, Tensor methods and operators, namespace entries, from the declarations
methods.py      Tensor methods that are hand-written functions
namespace.py    the same vocabulary on Tensors, so VJPs can record themselves
"""
from . import registry, derivatives, elementwise, reduce, shape, contraction, fused, scan, attention, norms  # noqa: F401
from . import api, install, methods
from .registry import REGISTRY, Primitive, primitive  # noqa: F401
from .derivatives import unary  # noqa: F401

install.install_all()
methods.install()
