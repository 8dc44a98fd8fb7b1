"""Common-subexpression elimination: an equation with the same primitive, the same
operands and the same parameters as an earlier one reuses its result (the
graph is SSA, so equal inputs mean equal values). Draws are never merged.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import cse
>>> g = Graph(); x = g.input((2,), np.float32, "x")
>>> a = g.add_eqn("exp", (x,), {}, (2,), np.float32)
>>> b = g.add_eqn("exp", (x,), {}, (2,), np.float32)
>>> g.outputs = [g.add_eqn("add", (a, b), {}, (2,), np.float32)]
>>> print(cse.run(g).eqns[-1])
v4:f32[2] = add v2 v2
"""
import numpy as np

from ..ir import Eqn, Literal, Var, iter_vars, map_vars
from .dce import kept_apart


def _key(x):
    if isinstance(x, Var):
        return ("v", x.id)
    if isinstance(x, Literal):
        return ("l", id(x.value))
    if isinstance(x, (tuple, list)):
        return (type(x).__name__,) + tuple(_key(t) for t in x)
    if isinstance(x, dict):
        return ("d",) + tuple((k, _key(v)) for k, v in sorted(x.items()))
    if isinstance(x, slice):
        return ("s", _key(x.start), _key(x.stop), _key(x.step))
    if isinstance(x, np.ndarray):
        return ("a", id(x))
    if isinstance(x, float) and x != x:
        return ("nan",)
    return ("c", type(x).__name__, x)


SMALL = 1 << 16         # bytes: results this small are always merged


def run(graph):
    """Merge repeated computations, except where keeping the first result alive
    until the repeat would hold more than SMALL bytes longer than the graph does:
    a FlashAttention backward recomputes its scores, a GELU backward its erf, on
    purpose; merging them with the forward's would keep L x S scores across the
    whole step."""
    last = {}
    for i, e in enumerate(graph.eqns):
        for v in e.invars():
            last[v.id] = i
    for v in iter_vars(graph.outputs):
        last[v.id] = len(graph.eqns)
    seen, alias = {}, {}
    eqns = []
    sub = lambda v: alias.get(v.id, v)   # noqa: E731
    for i, e in enumerate(graph.eqns):
        e = Eqn(e.prim, map_vars(e.args, sub), map_vars(e.params, sub), e.outs, e.view)
        if not kept_apart(e.prim):
            k = (e.prim, _key(e.args), _key(e.params), tuple((o.shape, o.dtype.str) for o in e.outs))
            hit = seen.get(k)
            if hit is not None and sum(o.nbytes for o in hit.outs) > SMALL and \
                    max(last.get(o.id, -1) for o in hit.outs) < i:
                seen[k] = e                 # recompute (as the step does) rather than hold it
                hit = None
            if hit is not None:
                for o, h in zip(e.outs, hit.outs):
                    alias[o.id] = h
                    last[h.id] = max(last.get(h.id, -1), last.get(o.id, -1))
                continue
            seen[k] = e
        eqns.append(e)
    g = graph.copy()
    g.eqns = eqns
    g.outputs = map_vars(graph.outputs, sub)
    return g
