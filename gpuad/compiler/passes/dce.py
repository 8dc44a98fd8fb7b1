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
from ..ir import iter_vars

EFFECTS = {"random_draw", "check_none", "check_value", "host_callback"}


def run(graph):
    live = {v.id for v in iter_vars(graph.outputs)}
    kept = []
    for e in reversed(graph.eqns):
        if e.prim in EFFECTS or any(o.id in live for o in e.outs):
            kept.append(e)
            live.update(v.id for v in e.invars())
    g = graph.copy()
    g.eqns = kept[::-1]
    return g
