"""Constant folding: an equation that reads no graph value is evaluated now (when
its result is small: a folded array lives as long as the compiled step), and
x * 1, x + 0, x - 0, x / 1 and astype to x's own dtype become x itself.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import fold
>>> g = Graph(); x = g.input((2,), np.float32, "x")
>>> c = g.add_eqn("sqrt", (4.0,), {}, (), np.float64)
>>> y = g.add_eqn("multiply", (x, 1.0), {}, (2,), np.float32)
>>> g.outputs = [g.add_eqn("add", (y, c), {}, (2,), np.float32)]
>>> print(fold.run(g))
{ lambda x:f32[2] .
  v4:f32[2] = add x 2.0:f64[]
  in ( v4 ) }
"""
import numpy as np

from ...xp import lookup
from ..ir import Eqn, Literal, Var, iter_vars, map_leaves, map_vars
from ..trace import resolve

MAX_FOLD = 1 << 12          # elements: larger constants would be held for the step's lifetime


def _unwrap(x):
    """x with every Literal replaced by its value."""
    return map_leaves(x, lambda a: a.value if isinstance(a, Literal) else a)


def _identity(e):
    """The Var that e returns unchanged, if it does."""
    d = lookup(e.prim)
    unit, sides = d.identity if d is not None and d.identity else (None, None)
    if unit is not None and len(e.args) == 2 and not e.params:
        a, b = e.args
        if isinstance(a, Var) and _is(b, unit) and a.shape == e.out.shape and a.dtype == e.out.dtype:
            return a
        if sides == "both" and isinstance(b, Var) and _is(a, unit) \
                and b.shape == e.out.shape and b.dtype == e.out.dtype:
            return b
    if e.prim == "astype" and isinstance(e.args[0], Var) and e.args[0].dtype == e.out.dtype \
            and e.params.get("copy", True) is False:
        return e.args[0]
    return None


def _is(x, unit):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == unit


def run(graph):
    alias = {}
    eqns = []
    sub = lambda v: alias.get(v.id, v)   # noqa: E731
    for e in graph.eqns:
        e = Eqn(e.prim, map_vars(e.args, sub), map_vars(e.params, sub), e.outs, e.view)
        same = _identity(e)
        if same is not None:
            alias[e.out.id] = same
            continue
        d = lookup(e.prim)
        if (d is not None and not d.effect and not d.fresh and not iter_vars(e.args)
                and not iter_vars(tuple(e.params.values())) and len(e.outs) == 1 and e.out.size <= MAX_FOLD
                and _on_host(e)):
            value = resolve(e.prim)(*_unwrap(e.args), **_unwrap(e.params))
            value = np.asarray(value).astype(e.out.dtype, copy=False)
            alias[e.out.id] = _literal(value)
            continue
        eqns.append(e)
    g = graph.copy()
    g.eqns = eqns
    g.outputs = map_vars(graph.outputs, sub)
    return g


def _on_host(e):
    """Whether every array e reads is a host array (folding runs on numpy)."""
    found = []
    map_leaves((e.args, e.params), lambda a: found.append(a.value) if isinstance(a, Literal) else None)
    return all(isinstance(v, np.ndarray) or not hasattr(v, "shape") or isinstance(v, np.generic) for v in found)


def _literal(value):
    """A folded value: an array, never a Python number (a 0-d float64 array is a
    strong type to numpy, a Python float a weak one: they promote differently)."""
    from ..ir import short_type
    name = f"{value.item()!r}:{short_type(value)}" if value.size == 1 else f"const:{short_type(value)}"
    return Literal(value, name)
