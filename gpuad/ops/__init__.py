"""Ops: one registry entry per primitive, grouped by kind, and the public functions.

registry.py    Primitive, apply() (dispatch, record, account)
elementwise.py reduce.py shape.py linalg.py nn.py   the primitives
api.py         the public functions (argument checks, composites)
namespace.py   the same vocabulary on Tensors, so VJPs can record themselves
"""
from . import registry, elementwise, reduce, shape, linalg, nn  # noqa: F401  (registration)
from . import api  # noqa: F401
from .registry import REGISTRY, Primitive, primitive  # noqa: F401
