"""Dead-code elimination: drop equations whose results nothing reads.

Draws from the generator stay: removing one would shift every later draw, and
the replay must draw exactly what eager would.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import dce
>>> g = Graph(); x = g.input((2,), np.float32, "x")
>>> _ = g.add_eqn("exp", (x,), {}, (2,), np.float32)          # unused
>>> g.outputs = [g.add_eqn("sin", (x,), {}, (2,), np.float32)]
>>> [e.prim for e in dce.run(g).eqns]
['sin']
"""
from ...xp import lookup
from ..ir import iter_vars


def effect(prim):
    """Must an equation of this primitive run even when nothing reads it (its declaration's
    kind: gpuad/xp/vocabulary.py)?"""
    d = lookup(prim)
    return d is not None and d.effect


def kept_apart(prim):
    """Must each equation of this primitive stay itself: an effect, or a buffer whose
    contents are undefined (two `empty` calls are two buffers, never one: cse, remat)?"""
    d = lookup(prim)
    return d is not None and (d.effect or d.fresh)


def run(graph):
    live = {v.id for v in iter_vars(graph.outputs)}
    kept = []
    for e in reversed(graph.eqns):
        if effect(e.prim) or any(o.id in live for o in e.outs):
            kept.append(e)
            live.update(v.id for v in e.invars())
    g = graph.copy()
    g.eqns = kept[::-1]
    return g
