"""Rematerialization over the whole compiled graph: recompute values instead of
holding them, until the planned peak fits a budget.

Greedy, as Checkmate's and XLA's heuristics start: find the moment of the
planned peak; among the values alive across it but not read there, recompute
the one that frees the most bytes per unit of recompute cost just before its
next read (its producer, and the producers of any of the producer's inputs
that are dead by then, up to MAX_CHAIN ops); re-plan; repeat. Cost is the
traffic model's bytes plus FLOPs at BYTES_PER_FLOP (a GEMM costs its 2mnk
multiply-adds, an elementwise op its bytes). Values that leave the step
(returned, or stored as gradients and state) are never candidates. When no
candidate is left and the peak is still above the budget, the error names the
lowest peak reached: the least budget this schedule can meet.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import remat, buffers
>>> g = Graph(); x = g.input((1000,), np.float32, "x")
>>> a = g.add_eqn("exp", (x,), {}, (1000,), np.float32)       # held across the peak...
>>> b = g.add_eqn("sin", (x,), {}, (1000,), np.float32)
>>> c = g.add_eqn("cos", (b,), {}, (1000,), np.float32)
>>> d = g.add_eqn("multiply", (c, b), {}, (1000,), np.float32)
>>> g.outputs = [g.add_eqn("add", (d, a), {}, (1000,), np.float32)]   # ...to be read here
>>> buffers.plan(g).peak_bytes, buffers.plan(remat.run(g, 13000)).peak_bytes
(16096, 12064)
>>> [e.prim for e in remat.run(g, 13000).eqns]          # exp, moved to where it is read
['sin', 'cos', 'multiply', 'exp', 'add']
"""
import math

from ...errors import BudgetError

from ..ir import Eqn, iter_vars, map_vars
from . import buffers, dce
from .dce import kept_apart

MAX_CHAIN = 12              # ops recomputed for one value at most
BYTES_PER_FLOP = 0.1        # a FLOP costs a tenth of a byte moved (a CPU's balance, roughly)
MAX_STEPS = 2000
MAX_STALE = 16         # steps in a row that do not lower the peak: stop


def cost(e):
    """The modelled cost of running e once, in bytes."""
    moved = sum(v.nbytes for v in e.invars()) + sum(o.nbytes for o in e.outs)
    if e.prim == "matmul":
        a, b = (v for v in e.args[:2])
        k = a.shape[-1] if hasattr(a, "shape") and a.shape else 1
        moved += 2 * e.out.size * k * BYTES_PER_FLOP
    return 0 if e.view else moved


def run(graph, budget_bytes, donated=None, escaping=()):
    """graph with recomputation added until its planned peak is at most budget_bytes
    (BudgetError, naming the least reachable peak, when it cannot be)."""
    g = graph
    peak = buffers.plan(g, donated, escaping).peak_bytes
    lowest = peak
    steps = stale = 0
    while peak > budget_bytes:
        choice = _best_candidate(g)
        if choice is None or steps >= MAX_STEPS or stale >= MAX_STALE:
            raise BudgetError(f"gpuad.compile: the planned peak is {peak:,} B and recomputation gets it down "
                              f"to {lowest:,} B at best; budget_bytes={budget_bytes:,} cannot be met "
                              f"(the minimum feasible budget for this step is {lowest:,} B)")
        g = dce.run(_recompute(g, *choice))
        peak = buffers.plan(g, donated, escaping).peak_bytes
        stale = stale + 1 if peak >= lowest else 0
        lowest = min(lowest, peak)
        steps += 1
    return g


def _profile(g):
    """(the eqn index where live bytes peak, first, last, root) from the lifetimes."""
    first, last, root = buffers.lifetimes(g)
    inputs = {v.id for v in g.inputs}
    n = len(g.eqns) + 2
    delta = [0] * n
    sizes = {o.id: o.nbytes for e in g.eqns for o in e.outs}
    for vid, f in first.items():
        if vid in inputs:
            continue
        delta[f] += sizes.get(vid, 0)
        delta[last[vid] + 1] -= sizes.get(vid, 0)
    live, best, at = 0, -1, 0
    for i in range(len(g.eqns)):
        live += delta[i]
        if live > best:
            best, at = live, i
    return at, first, last, root


def _uses(g):
    uses = {}
    for i, e in enumerate(g.eqns):
        for v in e.invars():
            uses.setdefault(v.id, []).append(i)
    return uses


def _best_candidate(g):
    t, first, last, root = _profile(g)
    uses = _uses(g)
    outputs = {v.id for v in iter_vars(g.outputs)}
    producer = {o.id: (i, e) for i, e in enumerate(g.eqns) for o in e.outs}
    best = None
    for vid, f in first.items():
        if not (f < t < last[vid]) or vid in outputs or vid not in producer:
            continue
        later = [u for u in uses.get(vid, ()) if u > t]
        if not later:
            continue            # read only through a view made earlier: that view holds it
        at = later[0]
        chain = _chain(g, vid, at, first, last, producer, outputs)
        if chain is None:
            continue
        saved = producer[vid][1].outs[[o.id for o in producer[vid][1].outs].index(vid)].nbytes
        price = sum(cost(e) for e in chain) or 1
        score = saved / price
        if best is None or score > best[0]:
            best = (score, vid, at, chain)
    return None if best is None else best[1:]


def _chain(g, vid, at, first, last, producer, outputs, depth=0):
    """The eqns to rerun (in order) to remake vid just before eqn `at`, or None."""
    if depth >= MAX_CHAIN or vid not in producer:
        return None
    _, e = producer[vid]
    if kept_apart(e.prim) or len(e.outs) != 1 and e.prim != "fused":
        return None
    chain = []
    inputs = {v.id for v in g.inputs}
    for u in e.invars():
        alive = u.id in inputs or (first.get(u.id, math.inf) < at <= last.get(u.id, -1))
        if alive:
            continue
        sub = _chain(g, u.id, at, first, last, producer, outputs, depth + 1)
        if sub is None:
            return None
        chain += [s for s in sub if all(s is not c for c in chain)]
    if len(chain) + 1 > MAX_CHAIN:
        return None
    return chain + [e]


def _recompute(g, vid, at, chain):
    """g with `chain` cloned just before eqn `at`, and reads of vid from `at` on
    (and of anything else the chain remakes) pointing at the clones."""
    fresh = {}
    clones = []
    for e in chain:
        outs = [g.new_var(o.shape, o.dtype) for o in e.outs]
        sub = lambda v: fresh.get(v.id, v)       # noqa: E731
        clones.append(Eqn(e.prim, map_vars(e.args, sub), map_vars(e.params, sub), outs, e.view))
        for o, n in zip(e.outs, outs):
            fresh[o.id] = n
    redirect = {vid: fresh[vid]}
    sub = lambda v: redirect.get(v.id, v)        # noqa: E731
    eqns = g.eqns[:at] + clones + [Eqn(e.prim, map_vars(e.args, sub), map_vars(e.params, sub), e.outs, e.view)
                                   for e in g.eqns[at:]]
    out = g.copy()
    out.eqns = eqns
    return out
