"""The Jacobian of any function by its traced structure: the cut points of its graph as a
chain, multiplied in the order the matrix-chain program picks.

gpuad.compile's tracer turns f into a graph of xp calls. A value every path from
the input to the output goes through (a dominator of the output) is a cut: the
Jacobian factors there, J = J(cut_k -> out) ... J(x -> cut_1). The cuts in order,
with their widths and the FLOPs of the calls between them, are a chain, and
chain.py's dynamic program picks how to form its product: an hourglass written
as a plain function splits at its bottleneck exactly as an nn.Sequential does.
Each segment is evaluated from the graph's own calls, recorded as gpuad ops
(the create_graph namespace), by jacfwd or jacrev.

>>> import gpuad
>>> w1, w2 = gpuad.ones(2, 6), gpuad.ones(6, 2)
>>> J, (plan, cost) = gpuad.jacobian(lambda x: gpuad.tanh(w2 @ gpuad.tanh(w1 @ x)), gpuad.zeros(6), return_plan=True)
>>> J.shape, [w for _, w in plan.cuts], plan[0]
((6, 6), [6, 2, 6], 'split')
"""
import weakref

import numpy as np

from ..backends import namespace_of
from ..backends.batched import BatchedArray, BatchedNamespace
from ..compiler.capture import ArgGradSlot, ArgSlot, build_result
from ..compiler.ir import Literal, Var, map_leaves
from ..compiler.trace import resolve
from ..graph import _next_index
from ..ops.namespace import tensor_ns
from ..tensor import Tensor
from .forward_mode import _input_values, _ops, _rule, _traced, _value, push_tangent, run
from .vmap import _levels


class ChainPlan(tuple):
    """A plan (as chain_plan gives it: ("forward"|"reverse", i, j) or ("split", m, left,
    right)) over the cuts found: `cuts` [(what made it, width)], input first."""

    def __new__(cls, plan, cuts):
        t = super().__new__(cls, plan)
        t.cuts = cuts
        return t


def _flops(e):
    """Modelled FLOPs of one call: 2 m k n for a matmul or einsum's output times its
    contraction, else the elements it writes."""
    out = e.outs[0]
    n = int(np.prod(out.shape)) if out.shape else 1
    if e.prim == "matmul":
        a = e.args[0]
        k = a.shape[-1] if isinstance(a, Var) and a.shape else 1
        return 2 * n * k
    return n


def _dominators(graph, src, dst):
    """The Vars on every path from src to dst (src and dst included), in graph order;
    None when dst does not depend on src."""
    order = {v.id: k for k, e in enumerate(graph.eqns) for v in e.outs}
    relevant = {src.id}
    for e in graph.eqns:                       # forward: what depends on src
        if any(v.id in relevant for v in e.invars()):
            relevant.update(o.id for o in e.outs)
    if dst.id not in relevant:
        return None
    needed = {dst.id}
    for e in reversed(graph.eqns):             # backward: what dst depends on
        if any(o.id in needed for o in e.outs):
            needed.update(v.id for v in e.invars() if v.id in relevant)
    live = relevant & needed
    dom = {src.id: {src.id}}
    for e in graph.eqns:
        ins = [v.id for v in e.invars() if v.id in live]
        for o in e.outs:
            if o.id not in live:
                continue
            common = set.intersection(*(dom[i] for i in ins)) if ins else set()
            dom[o.id] = common | {o.id}
    cut = sorted(dom[dst.id], key=lambda i: -1 if i == src.id else order[i])
    return cut, live


def _result_vars(cap):
    found = []
    build_result(cap.result, lambda kind, v: found.append(v) or v)
    return found


_ANALYSES = weakref.WeakKeyDictionary()     # a trace -> its chain (what plan_by_structure derives)


def _analyse(cap):
    """The chain of a trace, once per trace: (cut ids, widths, per-segment calls and FLOPs,
    descriptions, shapes), or None when it has none (several outputs, no dependence)."""
    outs = _result_vars(cap)
    if len(outs) != 1 or not isinstance(outs[0], Var):
        return None
    inputs = [v for v, r in zip(cap.graph.inputs, cap.reads) if isinstance(r, ArgSlot) and not
              isinstance(r, ArgGradSlot)]
    if len(inputs) != 1:
        return None
    src, dst = inputs[0], outs[0]
    found = _dominators(cap.graph, src, dst)
    if found is None:
        return None
    cuts, live = found
    vars_by_id = {v.id: v for e in cap.graph.eqns for v in e.outs}
    vars_by_id[src.id] = src
    width = {c: int(np.prod(vars_by_id[c].shape)) if vars_by_id[c].shape else 1 for c in cuts}
    # of consecutive cuts of one width (a matmul, its bias add, its tanh) keep the last: the
    # chain's order cannot gain from a split between equal widths, and the program is cubic
    cuts = [c for k, c in enumerate(cuts) if k in (0, len(cuts) - 1) or width[c] != width[cuts[k + 1]]]
    made_by = {o.id: e.prim for e in cap.graph.eqns for o in e.outs}
    position = {o.id: k for k, e in enumerate(cap.graph.eqns) for o in e.outs}
    pos = [-1] + [position[c] for c in cuts[1:]]
    parts = []
    for i in range(len(cuts) - 1):
        eqns = [e for e in cap.graph.eqns[pos[i] + 1:pos[i + 1] + 1] if any(o.id in live for o in e.outs)]
        parts.append((eqns, sum(_flops(e) for e in eqns)))
    dims = [width[c] for c in cuts]
    described = [("input" if c == src.id else made_by[c], d) for c, d in zip(cuts, dims)]
    return cuts, dims, parts, described, {c: vars_by_id[c].shape for c in cuts}


def plan_by_structure(f, x):
    """(chain widths, per-segment FLOPs, segment functions, cut descriptions, the cuts'
    values) of f at x, or None when the trace has no usable chain. The trace and its
    analysis are cached (per function and argument shapes); each call runs the trace once
    on numbers for the values."""
    cap, leaves, spec, args = _traced(f, (x,))
    if cap not in _ANALYSES:
        _ANALYSES[cap] = _analyse(cap)
    found = _ANALYSES[cap]
    if found is None:
        return None
    cuts, dims, parts, described, shapes = found
    env, _ = run(cap.graph, _input_values(cap, args), [None] * len(cap.graph.inputs), cap.device)
    segments = [_Segment(eqns, cuts[i], cuts[i + 1], env, shapes[cuts[i]]) for i, (eqns, _) in enumerate(parts)]
    return dims, [c for _, c in parts], segments, described, [Tensor._from(env[c]) for c in cuts]


class _Segment:
    """The calls from cut `start` to cut `end`, with the trace run's values of everything
    else they read (constants: nothing outside the segment depends on the input)."""

    def __init__(self, eqns, start, end, env, shape):
        self.eqns, self.start, self.end, self.env, self.shape = eqns, start, end, env, shape

    def __call__(self, v):
        """The segment as gpuad ops (the create_graph namespace), for reverse mode."""
        env, shape = self.env, self.shape
        vals = {self.start: v.reshape(shape) if tuple(v.shape) != tuple(shape) else v}

        def operand(a):
            if isinstance(a, Var):
                return vals[a.id] if a.id in vals else env[a.id]
            return a.value if isinstance(a, Literal) else a
        for e in self.eqns:
            args = map_leaves(e.args, operand)
            params = map_leaves(e.params, operand)
            if e.prim == "getitem":
                out = args[0][args[1]] if isinstance(args[0], Tensor) else Tensor._from(env[e.outs[0].id])
            else:
                fn = getattr(tensor_ns, e.prim, None) or resolve(e.prim, tensor_ns)
                out = fn(*args, **params)
            outs = list(out) if len(e.outs) > 1 else [out]
            for o, val in zip(e.outs, outs):
                vals[o.id] = val if isinstance(val, Tensor) else Tensor._from(np.asarray(val))
        return vals[self.end]


def _forward_jacobian(segments, xp):
    """J of a run of segments by forward mode on the trace itself: the JVP rules of its
    calls, with the input's whole basis as one batched tangent (no retrace, no loop)."""
    first, last = segments[0], segments[-1]
    env = first.env
    start = env[first.start]
    n = int(np.prod(start.shape)) if start.shape else 1
    ns = BatchedNamespace(len(_levels) + 1, n, xp, start=_next_index())
    eye = xp.reshape(xp.eye(n, dtype=start.dtype), (n,) + tuple(start.shape))
    tan = {first.start: BatchedArray(eye, ns)}
    ops = _ops(xp)
    for seg in segments:
        for e in seg.eqns:
            if any(v.id in tan for v in e.invars()):
                push_tangent(e, _rule(e.prim), ops, _value(e.args, env), _value(e.params, env), env, tan, True)
    end = env[last.end]
    m = int(np.prod(end.shape)) if end.shape else 1
    t = tan.get(last.end)
    if t is None:
        return Tensor._from(xp.zeros((m, n), end.dtype))
    return Tensor._from(xp.transpose(xp.reshape(t.value, (n, m))))


def evaluate(plan, segments, values):
    """The chain's Jacobian as an (out size, in size) matrix, formed by the plan: a
    forward segment by the trace's JVP rules on the batched basis, a reverse one by a
    backward of its calls vmapped over the output basis, a split by their product."""
    from .jacobians import jacrev
    kind = plan[0]
    if kind == "split":
        _, m, left, right = plan
        return Tensor._from(np.matmul(evaluate(right, segments, values).data, evaluate(left, segments, values).data))
    _, i, j = plan
    if kind == "forward":
        return _forward_jacobian(segments[i:j], namespace_of(values[i].data))

    def run_segments(v):
        for s in segments[i:j]:
            v = s(v)
        return v
    jac = jacrev(run_segments)(values[i])
    n_out, n_in = int(np.prod(values[j].shape)), int(np.prod(values[i].shape))
    return Tensor._from(jac.data.reshape(n_out, n_in))
