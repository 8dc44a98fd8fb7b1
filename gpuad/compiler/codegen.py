"""Code generation: a Graph (and its buffer plan) becomes one straight-line Python
function over local variables, compiled once with exec. A replay is then one
call of it: no per-op interpretation, no dispatch, no graph recorded.

Each equation is one line. A value whose buffer is planned is computed with
`out=` into its view of the arena; a value is deleted right after its last
use, so the unplanned path frees as early as eager's planner does.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.codegen import generate
>>> g = Graph(); x = g.input((2,), np.float64, "x")
>>> y = g.add_eqn("multiply", (x, 3.0), {}, (2,), np.float64)
>>> g.outputs = [g.add_eqn("exp", (y,), {}, (2,), np.float64)]
>>> fn, src = generate(g)
>>> print(src.strip().splitlines()[2])
    v2 = multiply(x, 3.0)
>>> fn([np.zeros(2)])[0].tolist()
[1.0, 1.0]
"""
import math

import numpy as np

from .ir import Literal, Var, iter_vars, load
from .trace import resolve


class _Names:
    """The globals of the generated function: one name per callable and constant.
    xp: the namespace primitives resolve on (numpy's by default); run_group: how a
    fused group's kernel runs there (itself, on the CPU)."""

    def __init__(self, xp=None, run_group=None):
        self.scope = {"np": np}
        self._ids = {}
        self.xp = xp
        self.run_group = run_group

    def const(self, value, hint="c"):
        key = id(value)
        name = self._ids.get(key)
        if name is None:
            name = f"{hint}{len(self._ids)}"
            self._ids[key] = name
            self.scope[name] = value
        return name

    def fn(self, prim, impl=None):
        impl = resolve(prim, self.xp) if impl is None else impl
        name = "".join(ch if ch.isalnum() else "_" for ch in prim)
        if self.scope.get(name, impl) is not impl:
            name = self.const(impl, name + "_")
        self.scope[name] = impl
        return name


def src(a, names):
    """Python source for an operand."""
    if isinstance(a, Var):
        return a.name
    if isinstance(a, Literal):
        return names.const(a.value)
    if isinstance(a, tuple):
        return "(" + "".join(src(x, names) + ", " for x in a) + ")"
    if isinstance(a, list):
        return "[" + ", ".join(src(x, names) for x in a) + "]"
    if isinstance(a, dict):
        return "{" + ", ".join(f"{k!r}: {src(v, names)}" for k, v in a.items()) + "}"
    if isinstance(a, slice):
        return f"slice({src(a.start, names)}, {src(a.stop, names)}, {src(a.step, names)})"
    if a is Ellipsis:
        return "..."
    if isinstance(a, float) and not math.isfinite(a):
        return names.const(a)
    if isinstance(a, (bool, int, float, str, type(None))):
        return repr(a)
    return names.const(a)


def call_src(eqn, names, out=None):
    """The expression computing one equation (into `out` when given)."""
    if eqn.prim == "fused":
        k = eqn.params["kernel"].value
        kernel = names.const(k if names.run_group is None else names.run_group(k), "fused")
        return f"{kernel}({', '.join(src(a, names) for a in eqn.args)}{', outs=' + out if out else ''})"
    if eqn.prim == "getitem":
        return f"{src(eqn.args[0], names)}[{src(eqn.args[1], names)}]"
    args = [src(a, names) for a in eqn.args]
    args += [f"{k}={src(v, names)}" for k, v in eqn.params.items()]
    if out is not None:
        args.append(f"out={out}")
    return f"{names.fn(eqn.prim)}({', '.join(args)})"


def last_uses(graph):
    """eqn index -> the Vars read for the last time there (outputs never die)."""
    last = {}
    for i, e in enumerate(graph.eqns):
        for v in e.invars():
            last[v.id] = (i, v)
    keep = {v.id for v in iter_vars(graph.outputs)}
    dying = {}
    for vid, (i, v) in last.items():
        if vid not in keep:
            dying.setdefault(i, []).append(v)
    return dying


def generate(graph, plan=None, name="replay", xp=None, run_group=None):
    """(function(list of input arrays) -> list of outputs, its source). With an
    allocated plan (gpuad.compiler.passes.buffers), planned values are written
    into their views of the arena. xp and run_group: see _Names (a device replay
    resolves primitives on CuPy's namespace and runs groups as Triton kernels)."""
    names = _Names(xp, run_group)
    lines = [f"def {name}(inputs):"]
    if graph.inputs:
        lines.append(f"    {', '.join(v.name for v in graph.inputs)}, = inputs")
    if plan is not None:
        lines += [f"    {line}" for line in plan.prologue(names)]
    dying = last_uses(graph)
    for i, e in enumerate(graph.eqns):
        if plan is not None and plan.emits(e):
            lines += [f"    {line}" for line in plan.emit(e, names)]
        else:
            outs = ", ".join(o.name for o in e.outs) + ("," if len(e.outs) > 1 or e.prim == "fused" else "")
            lines.append(f"    {outs} = {call_src(e, names)}")
        dead = [v.name for v in dying.get(i, ()) if v not in graph.inputs]
        if dead:
            lines.append(f"    del {', '.join(dead)}")
    outs = [src(v, names) for v in graph.outputs]
    lines.append(f"    return [{', '.join(outs)}]")
    source = "\n".join(lines) + "\n"
    scope = names.scope
    load(source, name, scope)
    return scope[name], source
