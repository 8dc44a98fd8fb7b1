"""The xp vocabulary: one declaration per primitive of the numpy-spelled language
that forwards and VJPs are written in (entry.py: what a declaration holds;
vocabulary.py: the declarations; tangents.py: their JVP rules; batching.py: their
batching rules, for vmap; subscripts.py: einsum's equations).

>>> from gpuad import xp
>>> xp.lookup("add").kind, xp.lookup("no_such_call") is None
('elementwise', True)
"""
from .entry import (CAST, CREATION, EFFECT, ELEMENTWISE, KINDS, NUMPY_PHASE, OUT_COPY, OUT_KW,  # noqa: F401
                    OUT_REDUCE, OUT_UFUNC, REDUCTION, STRUCTURAL, VIEW, ZERO, XpPrim, declared, lookup,
                    set_jvp)
from . import vocabulary  # noqa: F401  (the declarations)
