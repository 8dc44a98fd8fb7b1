"""Elementwise fusion: maximal groups of elementwise ops of one shape become one
generated kernel that streams its inputs in cache-sized chunks.

Eager numpy writes every intermediate of `gelu(x*w+b)+x` to memory and reads it
back: each op moves its full operands. A fused group reads each input once and
writes each output once; its intermediates live in scratch buffers of CHUNK
elements (allocated once, reused every replay), so nothing full-size is made
for them. Modelled traffic of a group: inputs + outputs, instead of the sum
over its ops.

Legality, in program order: an elementwise op joins the open group that made
one of its inputs when that group has its output shape (groups it bridges are
merged). A sum, max, min or mean over the last axis of a group's value closes
the group: each chunk of rows is reduced as it is made (bitwise numpy's
per-row result; reductions over other axes would reorder the additions, so
they stay outside). A group is emitted, and closed, where anything outside it first reads
one of its values (fan-out and in-place updates stay ordered: the graph is SSA,
so a write is a new value). Values read outside the group, or returned, are the
group's outputs; everything else stays in scratch.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import fuse
>>> g = Graph(); x = g.input((4, 3), np.float32, "x"); b = g.input((3,), np.float32, "b")
>>> y = g.add_eqn("add", (x, b), {}, (4, 3), np.float32)
>>> g.outputs = [g.add_eqn("tanh", (g.add_eqn("multiply", (y, 2.0), {}, (4, 3), np.float32),), {}, (4, 3), np.float32)]
>>> print(fuse.run(g).eqns[0])
v5:f32[4,3] = fused x b kernel={add,multiply,tanh}
>>> k = fuse.run(g).eqns[0].params["kernel"].value
>>> xs, bs = np.ones((4, 3), np.float32), np.arange(3, dtype=np.float32)
>>> bool(np.allclose(k(xs, bs)[0], np.tanh((xs + bs) * 2)))
True
"""
from ...xp import OUT_COPY, OUT_UFUNC, REDUCTION, lookup
from ..ir import Eqn, Literal, Var, iter_vars

HORIZON = 8              # ops after its last member that a group stays open


def fusible(e):
    """An elementwise primitive written into a buffer (a ufunc, or where/astype/erf as
    copies), with no keyword changing what it computes."""
    if len(e.outs) != 1 or e.view or e.out.size == 0 or e.params:
        return False
    d = lookup(e.prim)
    return d is not None and d.elementwise and d.out in (OUT_UFUNC, OUT_COPY)


class _Group:
    def __init__(self, shape):
        self.shape = shape
        self.members = []
        self.open = True
        self.last = 0


def run(graph):
    owner = {}
    out_eqns = []
    groups = []
    consumers = {}
    for e in graph.eqns:
        for v in e.invars():
            consumers.setdefault(v.id, []).append(e)

    def emit(grp):
        grp.open = False
        out_eqns.extend(_group_eqns(grp, graph, consumers))

    for i, e in enumerate(graph.eqns):
        for grp in groups:
            # a group nothing joined for a while is emitted now: waiting longer would keep
            # its inputs (and what it made) alive for nothing
            if grp.open and grp.members and grp.last < i - HORIZON:
                emit(grp)
        joined = None
        closing = _row_reduction(e, owner)
        if closing is not None:
            # a reduction over the last axis of a group's value ends that group: each chunk
            # of rows is reduced as it is made, so the value is never written in full (and
            # each row's result is bitwise what numpy gives for the whole array)
            closing.members.append(e)
            closing.last = i
            for v in e.invars():
                grp = owner.get(v.id)
                if grp is not None and grp.open and grp is not closing:
                    emit(grp)
            emit(closing)
            continue
        if fusible(e):
            cands = []
            for v in e.invars():
                grp = owner.get(v.id)
                if grp is not None and grp.open and grp.shape == e.out.shape and grp not in cands:
                    cands.append(grp)
            if cands:
                joined = cands[0]
                for other in cands[1:]:
                    joined.members = sorted(joined.members + other.members, key=_order(graph))
                    for m in other.members:
                        owner[m.out.id] = joined
                    other.open = False
                    other.members = []
            else:
                joined = _Group(e.out.shape)
                groups.append(joined)
        for v in e.invars():
            grp = owner.get(v.id)
            if grp is not None and grp.open and grp is not joined:
                emit(grp)
        if joined is not None:
            joined.members.append(e)
            joined.last = i
            owner[e.out.id] = joined
        else:
            out_eqns.append(e)
    for grp in groups:
        if grp.open and grp.members:
            emit(grp)
    g = graph.copy()
    g.eqns = out_eqns
    return g


def _row_reduction(e, owner):
    """The open group e can close, if e reduces one of its values over the last axis."""
    d = lookup(e.prim)
    if d is None or not d.row_reduce or len(e.outs) != 1 or not isinstance(e.args[0], Var):
        return None
    v = e.args[0]
    grp = owner.get(v.id)
    nd = len(v.shape)
    axis = e.params.get("axis", e.args[1] if len(e.args) > 1 else None)
    if isinstance(axis, tuple) and len(axis) == 1:
        axis = axis[0]
    if grp is None or not grp.open or grp.shape != v.shape or nd < 2 or not isinstance(axis, int) \
            or axis % nd != nd - 1 or set(e.params) - {"axis", "keepdims"} or len(e.args) > 1:
        return None
    return grp


def _order(graph):
    index = {id(e): i for i, e in enumerate(graph.eqns)}
    return lambda e: index[id(e)]


def _group_eqns(grp, graph, consumers):
    members = grp.members
    if len(members) == 1:
        return members
    inside = {id(m) for m in members}
    made = {m.out.id for m in members}
    returned = {v.id for v in iter_vars(graph.outputs)}
    outs = [m.out for m in members
            if m.out.id in returned or any(id(c) not in inside for c in consumers.get(m.out.id, ()))]
    ins = []
    for m in members:
        for v in m.invars():
            if v.id not in made and all(v is not i for i in ins):
                ins.append(v)
    kernel = FusedKernel(members, ins, outs, grp.shape)
    return [Eqn("fused", tuple(ins), {"kernel": Literal(kernel, "{" + ",".join(m.prim for m in members) + "}")},
                outs)]


class FusedKernel:
    """One generated function for a group: `kernel(*inputs, outs=None) -> outputs`."""

    def __init__(self, members, ins, outs, shape):
        self.members, self.ins, self.outs, self.shape = members, ins, outs, tuple(shape)
        self.reduces = lookup(members[-1].prim).kind == REDUCTION
        self.inplace_ok = len(outs) == 1 and outs[0] is members[-1].out and not self.reduces
        self._made = None

    def _render(self):
        # the numpy executor's function, generated on first use (gpuad/compiler/codegen/
        # python_replay.py: this pass decides groups; the generators render them)
        if self._made is None:
            from ..codegen.python_replay import numpy_group
            self._made = numpy_group(self)
        return self._made

    @property
    def fn(self):
        return self._render()[0]

    @property
    def source(self):
        return self._render()[1]

    @property
    def scratch(self):
        """The shared chunk buffers the numpy executor's function uses (the plan counts them)."""
        return self._render()[2]

    def __call__(self, *inputs, outs=None):
        return self.fn(*inputs, outs=outs or (None,) * len(self.outs))

    def may_alias(self, out, inp):
        """May output `out` be written into input `inp`'s array (same shape and dtype)?
        Each executor reads an input's elements before it writes that place of an output
        computed after the input's last read: the chunk loop runs the members in order
        (the output is written by its member), the scalar and Triton kernels load every
        input first. Not in a reducing group (its rows are whole)."""
        if self.reduces or inp.shape != out.shape or inp.dtype != out.dtype:
            return False
        order = {m.out.id: j for j, m in enumerate(self.members)}
        if out.id not in order or all(inp is not v for v in self.ins):
            return False
        reads = [j for j, m in enumerate(self.members) if any(v is inp for v in m.invars())]
        return max(reads, default=-1) <= order[out.id]

    def unfused(self, xp):
        """The group op by op on namespace xp, full-size temporaries and all: how a
        device runs a group that has no Triton form."""
        from ..trace import resolve
        calls = [(resolve(m.prim, xp), m) for m in self.members]

        def run(*inputs, outs=None):
            vals = {v.id: a for v, a in zip(self.ins, inputs)}
            sub = lambda a: vals[a.id] if isinstance(a, Var) else (a.value if isinstance(a, Literal) else a)  # noqa
            for fn, m in calls:
                vals[m.out.id] = fn(*[sub(a) for a in m.args], **{k: sub(v) for k, v in m.params.items()})
            result = []
            for j, o in enumerate(self.outs):
                dst = outs[j] if outs is not None else None
                if dst is None:
                    result.append(vals[o.id])
                else:
                    xp.module.copyto(dst, vals[o.id])
                    result.append(dst)
            return tuple(result)
        return run


__all__ = ["run", "fusible", "FusedKernel"]
