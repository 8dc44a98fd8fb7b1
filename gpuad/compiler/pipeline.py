"""From a captured step to something to run: the passes in order, the buffer
plan, the generated replay, and how its results go back where the step put them.

    capture -> dce -> cse -> fold -> dce -> fuse -> [remat] -> buffers -> codegen

>>> import gpuad
>>> from gpuad.compiler.capture import capture
>>> from gpuad.compiler.pipeline import build
>>> x = gpuad.tensor([1.0, 2.0])
>>> entry = build(capture(lambda x: (x * 2 + 0 * x).sum(), (x,), {}))
>>> float(entry.run((x,), {}))
6.0
"""
import numpy as np

from ..memory.accounting import accountant
from ..errors import BranchError
from .prims import as_python
from .ir import Eqn, Literal, Var, iter_vars
from .capture import rebuild, result_vars
from .state import SettingSlot, Slot
from .trace import GuardError
from .codegen import python_replay
from .passes import buffers, cse, dce, epilogue, fold, fuse, remat

DEFAULT_PASSES = ("dce", "cse", "fold", "dce", "fuse")
CHECKS = ("check_none", "check_value")       # what a replay checks of its trace's assumptions
PASSES = {"dce": dce.run, "cse": cse.run, "fold": fold.run, "fuse": fuse.run, "epilogue": epilogue.run}


class Entry:
    """One compiled trace: reads its inputs from the call, runs the generated
    replay, puts results back (in place into arrays the step updated in place)."""

    def __init__(self, cap, graph, plan, fn, source, xp=None):
        self.cap, self.graph, self.plan, self.fn, self.source = cap, graph, plan, fn, source
        self.arena = plan.arenas_allocated if plan is not None else None
        self.compile_seconds = 0.0
        self.xp = xp
        self.copyto = np.copyto if xp is None else xp.module.copyto
        self.clear = []
        # a replay that checks what its trace assumed (check_none) may stop midway; the
        # generators it drew from are then put back (Compiled runs the call eagerly)
        self.guarded = any(e.prim in CHECKS for e in graph.eqns)
        self.paths = any(e.prim == "check_value" for e in graph.eqns)     # a step with value branches
        self.generators = list({id(g): g for e in graph.eqns if e.prim == "random_draw"
                                for g in e.args[3:4] if hasattr(g, "rng")}.values())
        self.warned = False
        self.checks = []            # a device replay's guards: what each flag it returns means
        self.n_check_outs = 0       # the outputs they take (a value check: its flag and its value)
        self.device_copies = {}     # id(host array read by reference) -> its copy on the device

    def rng_states(self):
        return [g.rng.bit_generator.state for g in self.generators]

    def restore_rng(self, states):
        for g, st in zip(self.generators, states):
            g.rng.bit_generator.state = st

    def run(self, args, kwargs):
        call = (list(args), dict(kwargs))
        inputs = [r.get(call) if isinstance(r, Slot) else r for r in self.reads]
        for v, a in zip(self.graph.inputs, inputs):
            if a is None or tuple(a.shape) != v.shape:
                raise RuntimeError(f"gpuad.compile: input {v} changed shape since the trace")
        if not self.paths:
            for slot in self.clear:
                slot.set(call, None)
        outs = self.fn(inputs)
        if self.checks:
            # a device replay computes its guards' flags and returns them: read here, after
            # the replay (or the CUDA graph) and before anything is written back
            n = len(outs) - self.n_check_outs
            flags, outs = iter(outs[n:]), outs[:n]
            for prim, what, how in self.checks:
                flag = next(flags)
                value = next(flags) if prim == "check_value" else None
                if bool(flag) and prim == "check_value":
                    raise BranchError(f"gpuad.compile: the step branched on {what}, and this call's "
                                      f"value differs from the trace's", what, as_python(value, how))
                if bool(flag):
                    raise GuardError(f"gpuad.compile: the trace assumed otherwise, but {what}")
        if self.paths:
            # after the checks: another path may keep what this one replaces (a replay that
            # stops for a failed assumption runs the same step eagerly, which replaces it too)
            for slot in self.clear:
                slot.set(call, None)
        if accountant.active is not None:
            self._account(outs)
        values = dict(zip(self.out_ids, outs))
        for slot, var, in_place in self.cap.writes:
            if var is None:
                slot.set(call, None)
            elif in_place:
                target = slot.get(call)
                value = values[var.id]
                if value is not target:
                    self.copyto(target, value)
            else:
                slot.set(call, _own(values[var.id], self.arena))
        for arr, var in self.cap.ext_writes:
            value = values[var.id]
            if value is arr:
                continue
            copy = self.device_copies.get(id(arr))
            if copy is not None:
                # a host array a device replay wrote: its device copy (what the next replay
                # reads) and the host array itself (read back: D2H, N bytes)
                self.copyto(copy, value)
                np.copyto(arr, value.get())
            elif type(arr) is np.ndarray and type(value) is not np.ndarray:
                np.copyto(arr, value.get())        # a host array a device replay wrote: D2H
            else:
                self.copyto(arr, value)
        return rebuild(self.cap.result, {k: _own(v, self.arena) for k, v in values.items()})

    def _account(self, outs):
        """Report the replay to gpuad.memory as eager ops report themselves: its
        traffic by the model, the arenas and scratch it holds, its planned peak of
        short-lived buffers, and the arrays it hands out."""
        acct = accountant
        if self.plan is not None:
            held = list(self.arena.values()) + [a.base if a.base is not None else a for e in self.graph.eqns
                                                if e.prim == "fused" and self.cap.device == "cpu"
                                                for a in e.params["kernel"].value.scratch]
            for a in held:
                acct.alloc(a, "gpuad.compile arena", activation=False)
            extra = self.plan.dynamic_peak + (self.plan.arena_bytes if self.plan.per_call else 0)
            acct.peak_bytes = max(acct.peak_bytes, acct.live_bytes + extra)
        for a in outs:
            if isinstance(a, np.ndarray) and not _in(a, self.arena):
                acct.alloc(a, "gpuad.compile")
        acct.traffic("gpuad.compile replay", *self.traffic())
        acct.mark("gpuad.compile replay")

    def traffic(self):
        """(bytes read, bytes written) by the replay, by the same model as eager's
        ledger: each op reads its operands and writes its result; a view moves
        nothing; a fused group reads its inputs once and writes its outputs once."""
        read = written = 0
        for e in self.graph.eqns:
            if e.view:
                continue
            read += sum(v.nbytes for v in e.invars())
            written += sum(o.nbytes for o in e.outs)
        return read, written

    def describe(self):
        text = str(self.graph)
        if self.plan is not None:
            text += "\n" + self.plan.summary()
        return text


def _address(a):
    return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data.ptr


def _in(a, arena):
    """Does array a lie inside one of the arena's buffers (numpy or CuPy)?"""
    if not arena or not hasattr(a, "shape") or isinstance(a, np.generic):
        return False
    p = _address(a)
    return any(_address(b) <= p < _address(b) + b.nbytes for b in arena.values())


def _own(a, arena):
    """A result that lives in the arena is copied out: the next replay reuses it."""
    if _in(a, arena):
        return a.copy()
    return a if hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, np.generic) else np.asarray(a)


def outputs_of(cap):
    """Every Var the replay must hand back: the return value's, then the writes'."""
    outs = []
    seen = set()
    for v in result_vars(cap.result) + [v for _, v, _ in cap.writes if v is not None] + \
            [v for _, v in cap.ext_writes]:
        if v.id not in seen:
            seen.add(v.id)
            outs.append(v)
    return outs


SHARE_MIN = 1 << 16      # bytes: smaller handed-out values (a loss) are copied, never arena views,
                         # so keeping them does not keep an arena alive


def _escaping(cap, graph, before):
    """Ids (after the passes) of large values the step hands out in new arrays."""
    became = {b.id: a for b, a in zip(before, graph.outputs)}
    handed = result_vars(cap.result) + [v for _, v, ip in cap.writes if v is not None and not ip]
    return {became[v.id].id for v in handed
            if hasattr(became.get(v.id), "id") and became[v.id].nbytes >= SHARE_MIN}


def _is_arg(reads):
    """Per input: does each call bring a new array (an argument, a random draw, an optimizer
    setting)? Those are copied into a CUDA graph's own buffers; state is captured by pointer."""
    from .capture import ArgSlot
    return [isinstance(r, (ArgSlot, DrawSlot, MaskSlot, SettingSlot)) for r in reads]


class DrawSlot(Slot):
    """A random draw of the step, made before a device replay runs: drawn from gpuad's
    generator on the host, as eager draws it, then copied to the device (N bytes), so the
    replay (and its CUDA graph) only reads it."""

    def __init__(self, kind, shape, dtype, generator, extra, xp):
        self.kind, self.shape, self.dtype, self.generator, self.extra, self.xp = kind, shape, dtype, generator, extra, xp

    def get(self, args):
        from .prims import random_draw
        self.last = random_draw(self.kind, self.shape, self.dtype, self.generator, self.extra)
        return self.xp.asarray(self.last)

    def __repr__(self):
        return f"draw {self.kind}{list(self.shape)}"


class MaskSlot(Slot):
    """Attention dropout's mask for one tile, from a draw hoisted out of a device replay
    (its seed): made on the host after that draw, as eager makes it, then copied to the
    device, so the replay (and its CUDA graph) reads no host value."""

    def __init__(self, draw, tile, shape, p, xp):
        self.draw, self.tile, self.shape, self.p, self.xp = draw, tile, shape, p, xp

    def get(self, args):
        from ..backends import numpy_ns
        return self.xp.asarray(numpy_ns.dropout_keep(self.draw.last, self.tile, self.shape, self.p))

    def __repr__(self):
        return f"dropout mask {list(self.shape)}"


def _on_device(graph, reads, xp):
    """A device replay's graph and reads with every host constant on the device, put
    there once, here: folded literals (in fused groups too) and host arrays the step
    read by reference. (Such an array is then frozen: a step that reads a numpy array
    it changes between calls should pass it as an argument.)"""
    from .ir import Literal, map_leaves

    def move(a):
        if isinstance(a, Literal) and isinstance(a.value, np.ndarray):
            return Literal(xp.asarray(a.value), a.name)
        return a
    g = graph.copy()
    for e in g.eqns:
        e.args, e.params = map_leaves(e.args, move), map_leaves(e.params, move)
        if e.prim == "fused":
            for m in e.params["kernel"].value.members:
                m.args, m.params = map_leaves(m.args, move), map_leaves(m.params, move)
    copies = {id(r): xp.asarray(r) for r in reads if type(r) is np.ndarray}
    return g, [copies.get(id(r), r) for r in reads], copies


def _hoist_draws(graph, reads, xp):
    """A device replay draws before it runs: each random_draw becomes an input filled by
    a DrawSlot, in the step's order (so the generator gives what eager's draws get)."""
    g = graph.copy()
    kept, reads = [], list(reads)
    drawn = {}                          # var id -> the DrawSlot that fills it
    for e in g.eqns:
        if e.prim == "random_draw":
            kind, shape, dtype, generator, extra = e.args[:5]
            g.inputs = g.inputs + [e.out]
            drawn[e.out.id] = DrawSlot(kind, shape, dtype, generator, extra, xp)
            reads.append(drawn[e.out.id])
        elif e.prim == "dropout_keep" and isinstance(e.args[0], Var) and e.args[0].id in drawn:
            g.inputs = g.inputs + [e.out]              # its seed is a hoisted draw: made right after it
            reads.append(MaskSlot(drawn[e.args[0].id], *e.args[1:4], xp))
        else:
            kept.append(e)
    g.eqns = kept
    return g, reads


def _device_checks(graph, xp):
    """A device replay returns its guards' flags instead of reading them mid-replay (a
    host read, which a CUDA graph cannot capture): (graph with them as outputs, (prim,
    what) per flag). An array a check compares with is put on the device once, here."""
    g = graph.copy()
    g.eqns = [Eqn(e.prim, (e.args[0], Literal(xp.asarray(e.args[1].value), "expected")) + e.args[2:], e.params,
                  e.outs) if e.prim == "check_value" and isinstance(e.args[1], Literal) else e for e in graph.eqns]
    checks = [e for e in g.eqns if e.prim in CHECKS]
    # a value check's flag comes with the value it checked (0-d: read only when the flag is up,
    # to say which value this call met)
    g.outputs = list(graph.outputs) + [v for e in checks for v in (
        (e.out, e.args[0]) if e.prim == "check_value" else (e.out,))]
    return g, [(e.prim, e.args[-1], e.args[2] if e.prim == "check_value" else None) for e in checks]


def _before_checks(graph, donated, device):
    """The donations a guarded replay may make: a check that fails stops the replay, and
    the call runs again (eagerly, or on another path) from the arrays as they were, so
    no input is written in place before the last check (on a device, where the flags
    are read after the replay, none is). What it costs: a copy at the end per updated
    array whose final value came before that check."""
    at = [i for i, e in enumerate(graph.eqns) if e.prim in CHECKS]
    if not at or not donated:
        return donated, 0
    return ({}, 0) if device == "cuda" else (donated, at[-1] + 1)


def _escapes(cap, out_ids):
    """Per output: is it handed to the caller (returned, or a slot's new array)? Values
    written back in place are not: they are copied into their arrays anyway."""
    kept = {v.id for _, v, in_place in cap.writes if in_place and v is not None}
    handed = {v.id for v in result_vars(cap.result)} | {
        v.id for _, v, in_place in cap.writes if not in_place and v is not None}
    return [vid in handed or vid not in kept for vid in out_ids]


def _used_inputs(graph, cap):
    """(graph, reads) without the inputs nothing reads: reachable state the step never
    touched is not fetched at each replay."""
    used = {v.id for e in graph.eqns for v in e.invars()} | {v.id for v in iter_vars(graph.outputs)}
    keep = [(v, r) for v, r in zip(cap.graph.inputs, cap.reads) if v.id in used]
    g = graph.copy()
    g.inputs = [v for v, _ in keep]
    return g, [r for _, r in keep]


def _numba_groups():
    from .codegen import numba_groups
    return numba_groups


def _kernel_temps(graph):
    """The most bytes one generated CPU kernel of the graph takes while it runs."""
    return max((_numba_groups().temp_bytes(e.params["kernel"].value) for e in graph.eqns if e.prim == "fused"),
               default=0)


def _namespace(device):
    from ..backends import numpy_ns, _cupy_namespace
    return numpy_ns if device == "cpu" else _cupy_namespace()


def _donations(cap, graph, before):
    """{input var id: final var id} for inputs the step updates in place, when the
    final value is computed by the graph (not an input itself). `before`: the
    output Vars before the passes (graph.outputs holds what each became)."""
    index = {id(r): v for r, v in zip(cap.reads, cap.graph.inputs)}
    became = {b.id: a for b, a in zip(before, graph.outputs)}
    made = {o.id for e in graph.eqns for o in e.outs}
    out = {}
    for slot, var, in_place in cap.writes:
        v = index.get(id(slot))
        final = became.get(var.id) if var is not None else None
        if in_place and v is not None and getattr(final, "id", None) in made:
            out[v.id] = final.id
    return out


def build(cap, budget_bytes=None, passes=None, groups=None, cuda_graphs=True):
    """The Entry for a capture. groups: how fused groups run: None for the device's
    default (numpy's chunked kernels on the CPU, generated Triton kernels on a GPU),
    "triton" for Triton kernels on the CPU too (through the interpreter: how the
    GPU path is tested without a GPU)."""
    graph = cap.graph.copy()
    graph.outputs = before = outputs_of(cap)
    out_ids = [v.id for v in graph.outputs]
    names = DEFAULT_PASSES if passes is None else passes
    if passes is None and (groups == "triton" or cap.device == "cuda"):
        names += ("epilogue",)            # where groups are Triton kernels (see passes/epilogue.py)
    for name in names:
        graph = PASSES[name](graph)
    graph, reads = _used_inputs(graph, cap)
    generators = list({id(gen): gen for e in graph.eqns if e.prim == "random_draw"
                       for gen in e.args[3:4] if hasattr(gen, "rng")}.values())
    checks = []
    if cap.device == "cuda":
        xp = _namespace(cap.device)
        graph, reads, device_copies = _on_device(graph, reads, xp)
        graph, reads = _hoist_draws(graph, reads, xp)
        graph, checks = _device_checks(graph, xp)
    donated, writable_from = _before_checks(graph, _donations(cap, graph, before), cap.device)
    # On the CPU, large values the step hands out (new gradients) are planned into the
    # arena with everything else, and each call takes a fresh arena from the host pool:
    # they then share memory with activations that died before them, as in eager, instead
    # of coming on top of a held arena. (A GPU replay keeps one arena: its CUDA graph
    # needs fixed addresses.)
    escaping = _escaping(cap, graph, before) if cap.device == "cpu" else ()
    # the generated CPU kernels' temporaries come on top of what the planner places: a budget
    # leaves room for the largest (see codegen/numba_groups.temp_bytes)
    cpu_kernels = cap.device == "cpu" and groups is None and _numba_groups().enabled()
    temps = _kernel_temps(graph) if cpu_kernels else 0
    if budget_bytes is not None:
        graph = remat.run(graph, budget_bytes - temps, donated, escaping)
    plan = buffers.plan(graph, donated, escaping, extras=cap.device == "cpu", writable_from=writable_from)
    xp = _namespace(cap.device)
    run_group = None
    if groups == "triton" or cap.device == "cuda":
        from .codegen import triton_groups
        run_group = triton_groups.runner(xp)
        plan.scratch_bytes = 0            # Triton kernels keep intermediates in registers
    elif groups is None:
        run_group = _numba_groups().runner     # Numba kernels where a group has one, else numpy's
        # their temporaries live while one group runs: the largest on top of the dynamic peak
        # (an upper bound: the peak of the rest may fall elsewhere)
        plan.kernel_temp_bytes = _kernel_temps(graph) if cpu_kernels else 0
        plan.dynamic_peak += plan.kernel_temp_bytes
    plan.arenas_allocated = plan.allocate(xp)
    fn, source = python_replay.generate(graph, plan, xp=xp, run_group=run_group)
    entry = Entry(cap, graph, plan, fn, source, xp)
    entry.reads = reads
    entry.out_ids = out_ids
    entry.checks = checks
    entry.n_check_outs = sum(2 if prim == "check_value" else 1 for prim, _, _ in checks)
    entry.device_copies = device_copies if cap.device == "cuda" else {}
    entry.generators = generators
    entry.guarded = entry.guarded or bool(checks)
    used = {id(r) for r in reads}
    # slots the step replaces without reading (gradients under zero_grad): cleared before
    # the replay, so last step's gradients (and the arena they live in) are free for it
    entry.clear = [slot for slot, var, in_place in cap.writes if not in_place and id(slot) not in used]
    # (a host callback reads device values mid-replay: such a step runs without a CUDA graph)
    if cap.device == "cuda" and cuda_graphs and not any(e.prim == "host_callback" for e in graph.eqns):
        from .graphs import CupyGraphs, GraphReplay
        entry.fn = GraphReplay(fn, _is_arg(reads), _escapes(cap, out_ids) + [True] * entry.n_check_outs,
                               CupyGraphs())
    return entry
