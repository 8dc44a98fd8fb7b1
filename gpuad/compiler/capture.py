"""Capture: trace one call of a step into a Graph, with how each graph input is
read at replay and where each output goes.

Before the step runs, every reachable array (the arguments' and parameters'
.data, gradients, optimizer state) is swapped for a Tracer input; the step
runs; what the slots hold afterwards are the outputs (an updated parameter,
a new gradient, new optimizer state); then everything is put back as it was,
so tracing changes nothing: the first replay computes the first call.

>>> import gpuad
>>> from gpuad.compiler.capture import capture
>>> w = gpuad.tensor([1.0, 2.0], requires_grad=True)
>>> def step(x):
...     loss = (w * x).sum()
...     loss.backward()
...     return loss
>>> cap = capture(step, (gpuad.tensor([3.0, 4.0]),), {})
>>> [str(v) for v in cap.graph.inputs], len(cap.writes)
(['x0', 'p0'], 1)
"""
import numpy as np

from ..backends.abstract import AbstractArray
from ..dtypes import grad_dtype
from ..memory.accounting import accountant
from ..random import default_generator
from ..tensor import Tensor
from .concrete import Concrete
from .state import DataSlot, GradSlot, ItemSlot, SettingSlot, discover, numeric_setting
from .trace import DrawingRNG, ItemValue, Trace, TraceError, Tracer, WeakNumber, is_real_array, tracing


class Capture:
    """A traced step: the graph; `reads` (one per graph input: a Slot, an arg path, or a
    captured array); `result` (the return value with Vars for arrays); `writes`
    ((slot, Var or None, in_place) per changed slot); `ext_writes` ((array, Var)
    for captured arrays written in place)."""

    def __init__(self, graph, reads, result, writes, ext_writes):
        self.graph, self.reads, self.result = graph, reads, result
        self.writes, self.ext_writes = writes, ext_writes


def _arg_tensors(args, path=()):
    """(path, Tensor) for every Tensor in the arguments (nested lists, tuples, dicts)."""
    if isinstance(args, Tensor):
        yield path, args
    elif isinstance(args, (list, tuple)):
        for i, a in enumerate(args):
            yield from _arg_tensors(a, path + (i,))
    elif isinstance(args, dict):
        for k, a in args.items():
            yield from _arg_tensors(a, path + (k,))


class ArgSlot(DataSlot):
    """A Tensor inside the arguments, by its path."""

    def owner(self, args):
        for k in self.arg:
            args = args[k]
        return args

    def __repr__(self):
        return "arg" + "".join(f"[{k!r}]" for k in self.arg)


class ArgGradSlot(ArgSlot, GradSlot):
    def get(self, args):
        return GradSlot.get(self, args)

    def set(self, args, value):
        GradSlot.set(self, args, value)


def capture(fn, args, kwargs, found=None, phantom_grads=False, values=False):
    """Trace one call of fn (see the module docstring). phantom_grads: a tensor that
    requires grad and has none is given a gradient input anyway, so the capture tells
    whether the step reads gradients it finds (`grads_read`): a step that starts with
    zero_grad() does not, and its trace serves calls with and without them. values: the
    step may branch on values; they are this call's (gpuad.compiler.concrete), and each
    replay checks them."""
    found = discover(fn) if found is None else found
    tr = Trace()
    if values:
        tr.concrete = Concrete(tr)
    g = tr.graph
    reads, swapped = [], []
    tensors = []
    seen = set()
    for path, t in _arg_tensors((list(args), dict(kwargs))):
        seen.add(id(t))
        tensors.append((ArgSlot(t, path), ArgGradSlot(t, path), t, "x"))
    for t in found.tensors:
        if id(t) not in seen:
            seen.add(id(t))
            tensors.append((DataSlot(t), GradSlot(t), t, "p"))
    snapshot = _snapshot(tensors, found)
    counters = {}

    def swap_in(slot, arr, prefix, like=None):
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype") or isinstance(arr, (np.generic, Tracer)):
            return None
        device = "cuda" if type(like if like is not None else arr).__module__.startswith("cupy") else "cpu"
        if devices and device not in devices:
            raise TraceError(f"gpuad.compile: the step reads arrays on the CPU and on a GPU ({slot}); "
                             f"move them to one device")
        devices.add(device)
        tr.ns.device = device
        n = counters.get(prefix, 0)
        counters[prefix] = n + 1
        tracer = tr.new_input(arr.shape, arr.dtype, f"{prefix}{n}")
        if tr.concrete is not None and not isinstance(arr, AbstractArray):
            tr.concrete.bind(tracer.var, arr)
        reads.append(slot)
        swapped.append((slot, tracer, tracer.var))
        return tracer

    call_args = (list(args), dict(kwargs))
    devices = set()
    grad_vars = set()                 # the gradient inputs' Vars (real and phantom)
    snapshot_data = {id(t): t.data for _, _, t, _ in tensors}
    old_acct, accountant.active = accountant.active, None
    generators = {id(x): (x, x._rng) for x in [default_generator] + found.generators}
    settings = []
    try:
        for data_slot, grad_slot, t, prefix in tensors:
            tracer = swap_in(data_slot, t.data, prefix)
            if tracer is not None:
                t.data = tracer
            if t.grad is not None:
                gt = swap_in(grad_slot, t.grad.data, "g")
                if gt is not None:
                    t.grad = Tensor._from(gt)
                    grad_vars.add(gt.var.id)
            elif phantom_grads and t.requires_grad and tracer is not None:
                gt = swap_in(grad_slot, AbstractArray(tracer.shape, grad_dtype(tracer.dtype)), "g", like=snapshot_data[id(t)])
                t.grad = Tensor._from(gt)
                grad_vars.add(gt.var.id)
        for st in found.state_dicts:
            for k, v in list(st.items()):
                tracer = swap_in(ItemSlot(st, k), v, "s")
                if tracer is not None:
                    st[k] = tracer
        for gen, rng in generators.values():
            if tr.concrete is not None:
                tr.concrete.generator(gen, rng)
            gen.rng = DrawingRNG(tr, gen)
        if tr.concrete is not None and "cuda" in devices:
            from ..backends import _cupy_namespace
            tr.concrete.xp = _cupy_namespace()
        settings[:] = _swap_settings(tr, found, reads, next(iter(devices), "cpu"))
        with tracing(tr):
            out = fn(*args, **kwargs)
        result = _result_tree(tr, out)
        writes = _writes(tr, swapped, tensors, found, call_args, snapshot)
        _check_settings(settings)
    finally:
        accountant.active = old_acct
        _restore(snapshot, generators)
        _restore_settings(settings)
    _check_leaks(fn, args, kwargs)
    for arr, v in tr.ext_inputs:
        reads.append(arr)
    ext_writes = [(arr, var) for arr, var in tr.external.values() if var is not _input_var(tr, arr)]
    cap = Capture(g, reads, result, writes, ext_writes)
    cap.device = next(iter(devices), "cpu")
    cap.grads_read = _reads_any(cap, grad_vars)
    cap.branches = list(tr.branches)
    return cap


def _check_leaks(fn, args, kwargs):
    """A traced value the step kept in a Python object outside it (`history.append(loss.item())`,
    `self.last = out`) is refused: a replay runs no Python, so it would never store the next
    one, and the step would silently differ from eager. What it appended to a list or set is
    taken out again, so a fallback to eager starts from what the call began with."""
    found = discover(fn, (list(args), dict(kwargs)))
    if not found.leaks:
        return
    leaked = {id(x) for x in found.leaks}
    for c in found.containers:
        kept = [x for x in c if id(x) not in leaked]
        if len(kept) != len(c):
            if isinstance(c, list):
                c[:] = kept
            else:
                c.clear()
                c.update(kept)
    x = found.leaks[0]
    what = (f"a Tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else
            "a .item() number" if isinstance(x, ItemValue) else f"an array of shape {tuple(x.shape)}")
    raise TraceError(f"gpuad.compile: the step kept {what} it computed in a Python object outside it (a list, "
                     f"a dict, an attribute); a replay runs no Python and would not store the next one. "
                     f"Return it from the step (it comes back at each call), or store it in a function "
                     f"marked gpuad.compiler.disable (it runs at each call)")


def _reads_any(cap, var_ids):
    """Whether the step reads one of these inputs: an equation takes it, it is returned,
    or it is written somewhere. (A gradient the step replaced before reading it is not
    read: zero_grad(), then backward.)"""
    outs = [v for v in result_vars(cap.result)] + [v for _, v, _ in cap.writes if v is not None] + \
        [v for _, v in cap.ext_writes]
    return any(v.id in var_ids for e in cap.graph.eqns for v in e.invars()) or any(v.id in var_ids for v in outs)


def _swap_settings(tr, found, reads, device):
    """Every number in the optimizers' param groups (lr, betas, eps, momentum, weight
    decay, ...) becomes a WeakNumber input read at each replay; a 0-d array setting, a
    plain input. Returns [(group, key, original, what was put there)] to check and undo."""
    from ..backends import _cupy_namespace, numpy_ns
    xp = numpy_ns if device == "cpu" else _cupy_namespace()
    swapped = []
    n = 0
    for opt in found.optimizers:
        for group in opt.param_groups:
            for key, v in list(group.items()):
                if key in ("params", "initial_lr"):
                    continue
                items = list(v) if isinstance(v, (tuple, list)) else [v]
                new = []
                for i, x in enumerate(items):
                    index = i if isinstance(v, (tuple, list)) else None
                    if numeric_setting(x):
                        dt = np.dtype(np.float64 if isinstance(x, (float, np.floating)) else np.int64)
                        slot = SettingSlot(group, key, index, dt, xp)
                        t = WeakNumber(tr, tr.graph.input((), dt, f"h{n}"), x.item() if hasattr(x, "item") else x,
                                       slot)
                        if tr.concrete is not None:
                            tr.concrete.bind(t.var, xp.asarray(np.asarray(x, dt)))
                    elif hasattr(x, "shape") and x.shape == () and x.dtype.kind in "iuf":
                        dt = x.dtype
                        slot = SettingSlot(group, key, index, dt, xp)
                        t = tr.new_input((), dt, f"h{n}")
                        if tr.concrete is not None:
                            tr.concrete.bind(t.var, x)
                    else:
                        new.append(x)
                        continue
                    reads.append(slot)
                    n += 1
                    new.append(t)
                if any(a is not b for a, b in zip(new, items)):
                    group[key] = type(v)(new) if isinstance(v, (tuple, list)) else new[0]
                    swapped.append((group, key, v, group[key]))
    return swapped


def _check_settings(settings):
    for group, key, _, mine in settings:
        if group[key] is not mine:
            raise TraceError(f"gpuad.compile: the step changed the optimizer setting {key!r}; a replay "
                             f"reads settings, it does not write them. Step the lr scheduler (or change "
                             f"the setting) outside the compiled function")


def _restore_settings(settings):
    for group, key, original, _ in reversed(settings):
        group[key] = original


def _input_var(tr, arr):
    for a, v in tr.ext_inputs:
        if a is arr:
            return v
    return None


def _result_tree(tr, out):
    """The return value with Tracers (and Tensors holding them) as Vars."""
    if isinstance(out, Tensor) and isinstance(out.data, np.ndarray) and id(out.data) in tr.external:
        return ("T", tr.external[id(out.data)][1])      # written into a numpy buffer while tracing
    if isinstance(out, Tensor):
        if not isinstance(out.data, Tracer):
            if not is_real_array(out.data):
                raise TraceError(f"gpuad.compile: the step returned a Tensor holding a "
                                 f"{type(out.data).__name__}; return Tensors of arrays")
            # made inside the step from no traced value (gpuad.zeros(())): a constant, copied
            # at each replay (N bytes), as eager makes a fresh one at each call
            return ("T", tr.call("copy", (out.data,), {}).var)
        return ("T", out.data.var)
    if isinstance(out, ItemValue):
        return ("I", out.var)              # a .item(): a Python number after each replay
    if isinstance(out, Tracer):
        return ("A", out.var)
    if isinstance(out, (list, tuple)):
        return (type(out), [_result_tree(tr, o) for o in out])
    if isinstance(out, dict):
        return (dict, {k: _result_tree(tr, v) for k, v in out.items()})
    if isinstance(out, (int, float, bool, str, type(None))):
        return ("py", out)
    raise TraceError(f"gpuad.compile: the step returned a {type(out).__name__}; return Tensors, "
                     f"numbers, or lists, tuples and dicts of them")


def build_result(result, leaf):
    """The step's return value from its _result_tree: leaf(kind, var) gives each array
    ("T": the step returned a Tensor, "A": an array, "I": a .item() number)."""
    kind = result[0]
    if kind in ("T", "A", "I"):
        return leaf(kind, result[1])
    if kind == "py":
        return result[1]
    typ, items = result
    if typ is dict:
        return {k: build_result(v, leaf) for k, v in items.items()}
    seq = [build_result(v, leaf) for v in items]
    return typ(seq) if typ in (list, tuple) else typ(*seq)

def rebuild(result, values):
    """The step's return value at replay: Tensors around the computed arrays."""
    return build_result(result, lambda kind, v: Tensor._from(values[v.id]) if kind == "T" else
                        values[v.id].item() if kind == "I" else values[v.id])


def result_vars(result):
    """The Vars of a _result_tree, in order."""
    vs = []
    build_result(result, lambda kind, v: vs.append(v))
    return vs


def _writes(tr, swapped, tensors, found, call_args, snapshot):
    writes = []
    inputs = {id(s) for s, _, _ in swapped}
    for slot, tracer, first in swapped:
        cur = slot.get(call_args)
        if cur is tracer:
            if tracer.var is not first:
                writes.append((slot, tracer.var, True))
        elif cur is None:
            writes.append((slot, None, False))
        elif isinstance(cur, Tracer):
            writes.append((slot, cur.var, False))
        else:
            raise TraceError(f"gpuad.compile: the step stored a {type(cur).__name__} in {slot}")
    # slots that were empty and now hold a value: new gradients, new optimizer state
    for data_slot, grad_slot, t, _ in tensors:
        if id(grad_slot) not in inputs and isinstance(getattr(t.grad, "data", None), Tracer):
            writes.append((grad_slot, t.grad.data.var, False))
    old_state = snapshot["state"]
    for opt in found.optimizers:
        for p, st in opt.state.items():
            before = old_state[id(opt)].get(p, (None, {}))[1]
            for k, v in st.items():
                if isinstance(v, Tracer):
                    if k not in before:
                        writes.append((ItemSlot(_StateEntry(opt, p), k), v.var, False))
                elif k not in before or (before[k] is not v and not isinstance(v, np.ndarray) and v != before[k]):
                    raise TraceError(f"gpuad.compile: the optimizer's state {k!r} is a Python value "
                                     f"that the step changes; a replay cannot follow it")
    return writes


class _StateEntry(dict):
    """The state dict of parameter p in optimizer opt, created by the first step:
    at replay, the optimizer's own dict for p (made if missing)."""

    def __init__(self, opt, p):
        super().__init__()
        self.opt, self.p = opt, p

    def get(self, key, default=None):
        return self.opt.state.get(self.p, {}).get(key, default)

    def __setitem__(self, key, value):
        self.opt.state.setdefault(self.p, {})[key] = value

    def pop(self, key, default=None):
        return self.opt.state.get(self.p, {}).pop(key, default)


def _snapshot(tensors, found):
    return {"tensors": [(t, t.data, t.grad, t._node) for _, _, t, _ in tensors],
            "state": {id(opt): {p: (st, dict(st)) for p, st in opt.state.items()} for opt in found.optimizers},
            "optimizers": found.optimizers,
            "modes": [(m, m.training) for m in found.modules]}


def _restore(snapshot, generators):
    for t, data, grad, node in snapshot["tensors"]:
        t.data, t.grad, t._node = data, grad, node
    for opt in snapshot["optimizers"]:
        saved = snapshot["state"][id(opt)]
        opt.state = {p: st for p, (st, _) in saved.items()}
        for st, items in saved.values():
            st.clear()
            st.update(items)
    for gen, rng in generators.values():
        gen.rng = rng
    for m, mode in snapshot["modes"]:
        object.__setattr__(m, "training", mode)


