"""Static buffer assignment: lifetimes, then offsets in one arena per dtype.

A value computed by an op that can write into a given buffer (`out=`: ufuncs,
matmul, reductions, fused groups) gets a place in its dtype's arena, fixed
before anything runs: best fit among the free blocks, or the same place as an
input of the same size that dies at this op when the op is elementwise (in
place). Views (reshape, transpose, slices) live in their base's buffer and
keep it alive. The rest (graph outputs, which outlive the replay, and ops
without out=) are allocated by numpy when computed and freed at their last
use: the plan counts them too, so the peak of a replay is known before it runs:

    peak = arena bytes + fused groups' scratch + the most dynamic bytes live at once

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import buffers
>>> g = Graph(); x = g.input((1000,), np.float32, "x")
>>> a = g.add_eqn("exp", (x,), {}, (1000,), np.float32)
>>> b = g.add_eqn("sin", (a,), {}, (1000,), np.float32)      # a dies here: b takes its place
>>> g.outputs = [g.add_eqn("sum", (b,), {}, (), np.float32)]
>>> p = buffers.plan(g)
>>> p.arena_bytes, p.offsets[a.id] == p.offsets[b.id], p.peak_bytes
(4032, True, 4036)
"""
import numpy as np

from ...xp import OUT_COPY, OUT_KW, OUT_REDUCE, OUT_UFUNC, lookup
from ..ir import iter_vars

ALIGN = 64              # bytes: every buffer starts on a cache line


def writes_out(e, extras=True):
    """Can this equation compute into a buffer it is given (its declaration's `out`)?
    extras: also the copies into it (where, astype, erf, scatter_add: numpy's copyto,
    gpuad's erf(out=)) and, on the CPU, the functions that take out= there (attention's
    dropout masks and its backward's concatenations: planned like the rest, not
    allocated mid-replay)."""
    if e.view or len(e.outs) != 1 and e.prim != "fused":
        return False
    if e.prim == "fused":
        return True
    d = lookup(e.prim)
    if d is None:
        return False
    if d.out == OUT_COPY:
        return extras and not e.params
    if d.out == OUT_KW:
        return extras and e.out.dtype.kind in "fc"
    if d.out == OUT_REDUCE:
        return "dtype" not in e.params
    # matmul's out= needs an array: a vector-vector product has none
    return d.out == OUT_UFUNC and (d.elementwise or len(e.out.shape) >= 1)


def elementwise(e):
    """May the result share the buffer of a same-shape input that dies here?"""
    if e.prim == "fused":
        return e.params["kernel"].value.inplace_ok
    d = lookup(e.prim)
    return d is not None and d.inplace


def roots(graph):
    """var id -> the var whose buffer it uses (itself, or what it views)."""
    root = {}
    for e in graph.eqns:
        if e.view:
            src = next(iter(v for v in iter_vars(e.args)), None)
            for o in e.outs:
                root[o.id] = root.get(src.id, src) if src is not None else o
    return root


def lifetimes(graph):
    """(first, last): eqn indices where each buffer-owning var is made and last read
    (through any view of it); graph outputs and what they view live to the end."""
    root = roots(graph)
    end = len(graph.eqns)
    first, last = {}, {}
    for i, e in enumerate(graph.eqns):
        for o in e.outs:
            if o.id not in root:
                first[o.id] = i
                last[o.id] = i
        for v in e.invars():
            r = root.get(v.id, v)
            last[r.id] = max(last.get(r.id, i), i)
    for v in iter_vars(graph.outputs):
        r = root.get(v.id, v)
        last[r.id] = end
    return first, last, root


class Plan:
    """Offsets (per dtype, in bytes) for planned values; sizes and lifetimes for the rest."""

    def __init__(self, graph):
        self.graph = graph
        self.offsets = {}           # var id -> byte offset in its dtype's arena
        self.arenas = {}            # dtype str -> bytes
        self.planned = {}           # var id -> Var
        self.dynamic_peak = 0
        self.scratch_bytes = 0
        self.live_peak = 0          # the most planned bytes live at once: what packing can reach
        self.kernel_temp_bytes = 0  # (in dynamic_peak) the generated CPU kernels' temporaries, at most
        self.inplace = 0
        self.views = {}
        self.donated = {}           # var id -> the graph input whose array it is written into
        self.per_call = False       # the step hands out planned values: a fresh arena each call

    @property
    def arena_bytes(self):
        return sum(self.arenas.values())

    @property
    def peak_bytes(self):
        return self.arena_bytes + self.scratch_bytes + self.dynamic_peak

    def allocate(self, xp=None):
        """The arenas (allocated once, here, on xp's device) and each planned value's
        view of them; nothing when each call takes its own (per_call)."""
        if self.per_call:
            return {}
        m = np if xp is None else xp.module
        arenas = {dt: m.empty(n, np.uint8) for dt, n in self.arenas.items()}
        for vid, v in self.planned.items():
            off = self.offsets[vid]
            self.views[vid] = arenas[v.dtype.str][off:off + v.nbytes].view(v.dtype).reshape(v.shape)
        return arenas

    def emits(self, e):
        return any(o.id in self.views or o.id in self.donated or (self.per_call and o.id in self.planned)
                   for o in e.outs)

    def prologue(self, names):
        """Per-call arenas: one block per dtype from the host pool (cached: no page
        faults after the first call). The values the step hands out are views of it, so
        it lives until the caller drops them; the pool then hands it to the next call."""
        if not self.per_call:
            return []
        from ...memory.pool import host_pool
        new = names.const(lambda n: host_pool.empty((n,), np.uint8), "new_arena")
        return [f"A{i} = {new}({n})" for i, n in enumerate(self.arenas.values())]

    def _target(self, o, names):
        if o.id in self.donated:
            return self.donated[o.id].name       # the input's own array (a parameter updated in place)
        if self.per_call and o.id in self.planned:
            i = list(self.arenas).index(o.dtype.str)
            off = self.offsets[o.id]
            return f"A{i}[{off}:{off + o.nbytes}].view({names.const(o.dtype)}).reshape({o.shape!r})"
        return names.const(self.views[o.id], "b") if o.id in self.views else "None"

    def emit(self, e, names):
        from ..codegen.python_replay import call_src
        if e.prim == "fused":
            outs = "(" + "".join(self._target(o, names) + ", " for o in e.outs) + ")"
            return [f"{', '.join(o.name for o in e.outs)}, = {call_src(e, names, outs)}"]
        if e.prim == "scatter_add" and isinstance(e.args[3], bool):
            # zeros, then the gradient written (unique indices) or added (repeats) at index
            from ..codegen.python_replay import src
            target = self._target(e.out, names)
            g, index = src(e.args[0], names), src(e.args[2], names)
            write = f"{target}[{index}] = {g}" if e.args[3] else f"np.add.at({target}, {index}, {g})"
            return [f"{e.out.name} = {target}", f"{e.out.name}.fill(0)", write.replace(target, e.out.name, 1)]
        if getattr(lookup(e.prim), "out", None) == OUT_COPY:
            from ..codegen.python_replay import _into, src
            target = self._target(e.out, names)
            fn = names.fn(e.prim) if e.prim != "astype" else None
            return _into(e.prim, fn, [src(a, names) for a in e.args], target) + [f"{e.out.name} = {target}"]
        return [f"{e.out.name} = {call_src(e, names, self._target(e.out, names))}"]

    def summary(self):
        arenas = ", ".join(f"{np.dtype(dt).name} {n:,} B" for dt, n in self.arenas.items()) or "none"
        return (f"# planned peak {self.peak_bytes:,} B = arenas ({arenas}) + scratch {self.scratch_bytes:,} B "
                f"+ dynamic peak {self.dynamic_peak:,} B; {len(self.planned)} values planned, "
                f"{self.inplace} in place")


def _donated_home(e, o, i, holder, last, donated, outputs, root, taken=()):
    """The donated input whose array o can be written into, if any: e is elementwise,
    one of its inputs lives in that array and dies here, shapes and dtypes match, and
    o is no other output than that input's final value. A fused group with several
    outputs qualifies output by output (FusedKernel.may_alias: an optimizer's update
    writes the parameter and each state array back into its own), each array once
    (`taken`)."""
    if not writes_out(e):
        return None
    if e.prim == "fused":
        k = e.params["kernel"].value
        ok = getattr(k, "may_alias", None)
        if ok is None:
            return None
    elif elementwise(e) and len(e.outs) == 1:
        ok = None
    else:
        return None
    for v in e.invars():
        home = holder.get(root.get(v.id, v).id)
        if home is None or last.get(v.id) != i or v.id in outputs or home.id in taken:
            continue
        if ok is not None and not ok(o, v):
            continue
        if home.shape != o.shape or home.dtype != o.dtype:
            continue
        if o.id in outputs and donated[home.id] != o.id:
            continue
        return home
    return None


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan(graph, donated=None, escaping=(), extras=True, writable_from=0):
    """The static plan of `graph` (see the module's docstring). donated: {input var
    id: the id of its final value} for inputs the step updates in place (parameters,
    optimizer state): elementwise results of their shape may be written straight
    into the input's array once it is dead (at equation writable_from or later: after
    the replay's last check), and its final value lands there with no copy at the end.

    Two steps. First, walking the equations: which values are planned, and which
    share a buffer with an input that dies at their (elementwise) op; a chain of
    such values is one buffer, live from its first value's op to its last
    value's last read. Then offsets, offline: buffers by size, largest first,
    each at the lowest offset clear of every placed buffer whose life overlaps
    (the greedy-by-size packing of TFLite's and XNNPACK's arena planners; it
    comes close to the most bytes ever live at once, where first-fit in
    execution order fragments)."""
    donated = donated or {}
    escaping = set(escaping)
    p = Plan(graph)
    first, last, root = lifetimes(graph)
    outputs = {v.id for v in iter_vars(graph.outputs)}
    inputs = {v.id for v in graph.inputs}
    dying_at = {}
    for vid, i in last.items():
        dying_at.setdefault(i, []).append(vid)
    dynamic = {}
    scratch = {}
    live_dynamic = 0
    group = {}          # planned var id -> its buffer (a list: [size, dtype str, start, end, [var ids]])
    holder = {vid: next(v for v in graph.inputs if v.id == vid) for vid in donated}   # var id -> donated input
    for i, e in enumerate(graph.eqns):
        dead_here = [vid for vid in dying_at.get(i, ()) if vid not in inputs]
        taken = set()
        for o in e.outs:
            if o.id in root:
                continue
            home = _donated_home(e, o, i, holder, last, donated, outputs, root, taken) if i >= writable_from else None
            if home is not None:
                taken.add(home.id)
                p.donated[o.id] = holder[o.id] = home
                p.inplace += 1
                continue
            if writes_out(e, extras) and (o.id not in outputs or o.id in escaping) and o.nbytes > 0:
                n = _aligned(o.nbytes)
                buf = None
                if elementwise(e) and len(e.outs) == 1:
                    for v in e.invars():
                        b = group.get(v.id)
                        if (v.id in dead_here and b is not None and b[0] == n and b[1] == o.dtype.str
                                and p.planned[v.id].shape == o.shape):
                            buf = b
                            dead_here.remove(v.id)
                            p.inplace += 1
                            break
                if buf is None:
                    buf = [n, o.dtype.str, i, i, []]
                buf[3] = max(buf[3], last.get(o.id, i))
                buf[4].append(o.id)
                group[o.id] = buf
                p.planned[o.id] = o
            else:
                dynamic[o.id] = o.nbytes
                live_dynamic += o.nbytes
        if e.prim == "fused" and extras:                  # (the numpy executor's: the CPU's)
            for a in e.params["kernel"].value.scratch:     # shared between kernels: count each once
                base = a.base if a.base is not None else a
                if id(base) not in scratch:
                    scratch[id(base)] = base.nbytes
        p.dynamic_peak = max(p.dynamic_peak, live_dynamic)
        for vid in dead_here:
            if vid in dynamic:
                live_dynamic -= dynamic.pop(vid)
    p.per_call = any(vid in p.planned for vid in escaping)
    bufs = list({id(b): b for b in group.values()}.values())
    p.live_peak = _most_live(bufs)
    p.arenas = _pack(bufs)
    for b in bufs:
        for vid in b[4]:
            p.offsets[vid] = b[5]
    p.scratch_bytes = sum(scratch.values())
    return p


def _most_live(bufs):
    """The most bytes of buffers [size, dtype, start, end, ...] live at one equation."""
    events = sorted([(b[2], b[0]) for b in bufs] + [(b[3] + 1, -b[0]) for b in bufs])
    live = most = 0
    for _, n in events:          # (at one index the frees, negative, come first)
        live += n
        most = max(most, live)
    return most


def _pack(bufs):
    """Offsets for buffers [size, dtype, start, end, vars] (appended as b[5]), per
    dtype: in some order, each at the lowest offset clear of the placed buffers whose
    lives overlap its own. Returns {dtype: arena bytes}. Several orders are tried and
    the smallest arenas kept: largest first (TFLite's and XNNPACK's greedy-by-size),
    largest area (bytes x lifetime) first, longest-lived first. Each is O(n^2) in the
    buffers, at trace time only; no one order wins on every graph (on the train bench's
    GPT step the best is 4% under the worst)."""
    orders = (lambda b: (-b[0], b[2]), lambda b: (-b[0] * (b[3] - b[2] + 1), b[2]),
              lambda b: (b[2] - b[3], -b[0]))
    best = None
    for key in orders:
        offsets, arenas = _place(sorted(bufs, key=key))
        if best is None or sum(arenas.values()) < sum(best[1].values()):
            best = (offsets, arenas)
    offsets, arenas = best
    for b in bufs:
        b.append(offsets[id(b)])
    return arenas


def _place(bufs):
    """({id(buffer): offset}, {dtype: arena bytes}) placing bufs in this order."""
    arenas, placed, offsets = {}, {}, {}
    for b in bufs:
        size, dt, start, end = b[:4]
        clash = sorted((offsets[id(q)], offsets[id(q)] + q[0]) for q in placed.get(dt, ())
                       if not (q[3] < start or end < q[2]))
        off = 0
        for lo, hi in clash:
            if off + size <= lo:
                break
            off = max(off, hi)
        offsets[id(b)] = off
        placed.setdefault(dt, []).append(b)
        arenas[dt] = max(arenas.get(dt, 0), off + size)
    return offsets, arenas
