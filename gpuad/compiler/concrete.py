"""Values while tracing: what the trace so far computes on this call's own arrays.

A trace knows shapes, not values. A step that branches on a value (`if loss > 10:`,
`while err.item() > tol:`, `int(n)` as a size) cannot be traced on shapes alone.
Under `gpuad.compile(fallback="eager")` such a step is traced on the values of the
call being traced: where Python asks for a value, the equations recorded so far are
run on the call's inputs (the arguments, the parameters, the optimizer's state, the
settings, each generator from where it stood), the value is handed to Python, and a
check is recorded (`check_value`). A replay computes the value again and compares: the
same, and the whole step ran compiled; another, and the replay stops before writing
anything back and the step takes another path (gpuad.compiler.compiled).

What it costs: the prefix of the step runs once more, eagerly, at trace time only,
and its values are held until the trace ends (about eager's peak without frees).
A replay pays one comparison per check (a 0-d read on the host; on a GPU the flags
come back with the outputs).

>>> import numpy as np
>>> from gpuad.compiler.trace import Trace
>>> from gpuad.compiler.concrete import Concrete
>>> tr = Trace()
>>> x = tr.new_input((3,), np.float64, "x")
>>> tr.concrete = Concrete(tr)
>>> tr.concrete.bind(x.var, np.array([1.0, 2.0, 3.0]))
>>> y = (x * 2.0).sum()
>>> tr.concrete.value(y.var).item()
12.0
"""
import copy

import numpy as np

from ..errors import TraceError
from .ir import Literal, Var, map_leaves
from .trace import resolve


class _Drawn:
    """A generator's stand-in for the evaluation: a copy of its numpy generator as it
    stood when the trace began, so the evaluation draws what the call draws and leaves
    the real one where it is."""

    def __init__(self, rng):
        self.rng = rng


class Concrete:
    """Runs a trace's equations, in order, on one call's arrays (see the module docstring)."""

    def __init__(self, trace, xp=None):
        self.trace = trace
        self.xp = xp                # the namespace the call's arrays live on (None: numpy's)
        self.values = {}            # var id -> array
        self.done = 0               # equations run so far
        self.generators = {}        # id(gpuad Generator) -> _Drawn

    def bind(self, var, array):
        """The value of an input of the trace."""
        self.values[var.id] = array

    def generator(self, gen, rng):
        """gen's numpy generator as it stood when the trace began (copied)."""
        self.generators[id(gen)] = _Drawn(copy.deepcopy(rng))

    def value(self, var):
        """var's value on this call: every equation recorded so far is run (draws stay in
        order), once."""
        eqns = self.trace.graph.eqns
        while self.done < len(eqns):
            e = eqns[self.done]
            self.done += 1
            try:
                self._run(e)
            except KeyError as missing:
                raise TraceError(f"gpuad.compile: the step needs the value of {var} to branch on it, "
                                 f"and it depends on a value this call does not have ({missing}: a "
                                 f"gradient the step did not find)") from None
        if var.id not in self.values:
            raise TraceError(f"gpuad.compile: the step needs the value of {var}, which depends on a "
                             f"gradient this call does not have")
        return self.values[var.id]

    def _arg(self, a):
        if isinstance(a, Var):
            return self.values[a.id]
        if isinstance(a, Literal):
            return a.value
        return a

    def _run(self, e):
        if e.prim in ("host_callback", "check_value"):
            out = np.bool_(True)        # a callback runs at each replay, not while tracing
        elif e.prim == "check_none":
            out = np.bool_(False)       # the trace assumed it; the replay checks it
        else:
            args = map_leaves(e.args, self._arg)
            params = map_leaves(e.params, self._arg)
            if e.prim == "getitem":
                out = args[0][args[1]]
            elif e.prim == "random_draw":
                gen = self.generators[id(args[3])]
                out = resolve(e.prim, self.xp)(*args[:3], gen, *args[4:], **params)
            else:
                out = resolve(e.prim, self.xp)(*args, **params)
        outs = out if len(e.outs) > 1 else (out,)
        for v, o in zip(e.outs, outs):
            self.values[v.id] = o

