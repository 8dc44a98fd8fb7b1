"""Gradient checkpointing: keep a segment's inputs, recompute the rest during backward.

checkpoint(fn, *args) runs fn without recording its inner graph and keeps
only the tensor arguments (and the generator state, so dropout replays).
When backward reaches it, it runs fn again with recording on, backpropagates
through that local graph, and releases it at once. Tensors fn reads that
require grad (arguments, or parameters it closes over) are its node's inputs,
so their gradients flow even when no argument requires grad.

checkpoint_sequential(layers, x) applies this to a chain: ceil(sqrt(L))
segments by default (the lecture's k = sqrt(L), O(w sqrt(L)) activation
memory for about one extra forward), a given number of segments, or, with
budget_bytes, the schedule with the least recomputation that fits (see
gpuad.schedule), recomputing at several levels where that pays.

>>> import gpuad
>>> from gpuad import nn
>>> net = nn.MLP([16] * 10, activation="tanh")
>>> x = gpuad.randn(4, 16)
>>> y = gpuad.checkpoint_sequential(list(net), x)
>>> y.sum().backward()
>>> net[0].weight.grad.shape
(16, 16)
"""
import contextlib
import re
import time

import numpy as np

from . import graph
from .backends import namespace_of
from .engine import walk
from .engine.walk import run
from .graph import Node, CheckpointScope, _Mode
from .memory.accounting import accountant
from .ops import composite as C
from .ops.registry import primitive
from .random import get_rng_state, set_rng_state
from .schedule import Chain, Schedule, optimal, segments_tree, sqrt_segments
from .tensor import Tensor


# --- the checkpoint primitive ----------------------------------------------------------

@primitive("checkpoint", inputs=("*",))
def _checkpoint_fwd(xp, *args, **params):
    raise RuntimeError("gpuad: the checkpoint primitive is built by gpuad.checkpoint(), not applied")


def _checkpoint_vjp(xp, g, saved, node, donate):
    """Recompute fn with recording on, backpropagate through the local graph, release it."""
    if xp.name == "tensor":
        return _checkpoint_vjp_recorded(xp, g, saved, node)
    p = node.params
    start = graph._next_index()
    leaves = {b: Node(None, (), (), None, (), b.shape, b.dtype) for b in node.parents}
    outer = _Mode.checkpoint
    sp = CheckpointScope(remaps=p.get("remaps", ()) + (leaves,), start=start, record=True, outer=outer)
    args = _rebuild(p["template"], saved, p["arg_nodes"])
    with _replaying(p, sp):
        out = p["fn"](*args, **p["kwargs"])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        _check_same(p, outs)
        root = _pack([outs[i] for i in p["packed"]]) if p["pack"] else outs[p["packed"][0]]
        root_node = root._node
        # Hold no recomputed value here: the local graph alone keeps what it
        # saved, and releases it as its backward passes (nested recomputes
        # below would otherwise stack one output per level).
        del out, outs, root, args
        if root_node is None:
            return (None,) * len(node.parents)
        targets = {leaf: [n] for n, leaf in enumerate(leaves.values())}
        # Gradients already waiting at the boundary continue to accumulate in the
        # local run, in the same order as without checkpointing (so the sums are
        # bitwise equal); the totals then replace them (walk.TAKES_PENDING).
        roots, seeds = [root_node], [(g, donate)]
        for b, leaf in leaves.items():
            if b.grad is not None:
                roots.append(leaf)
                seeds.append((b.grad, b.owned))
        found = run(roots, seeds, xp, retain_graph=False, create_graph=False, targets=targets)
    return tuple(found.get(leaf) for leaf in leaves.values())


@contextlib.contextmanager
def _replaying(p, sp):
    """A recompute's surroundings: the first run's generator state (dropout replays), the
    scope that remaps its reads, recording through that scope only, the accountant's
    'recompute' phase; all put back after."""
    rng_now = get_rng_state() if p["rng"] is not None else None
    prev_enabled, prev_special, prev_phase = _Mode.enabled, _Mode.checkpoint, accountant.phase
    try:
        if rng_now is not None:
            set_rng_state(p["rng"])
        _Mode.enabled, _Mode.checkpoint = False, sp
        accountant.phase = "recompute"
        yield
    finally:
        _Mode.enabled, _Mode.checkpoint = prev_enabled, prev_special
        accountant.phase = prev_phase
        if rng_now is not None:
            set_rng_state(rng_now)


@primitive("checkpoint_input", inputs=("x",))
def CHECKPOINT_INPUT(xp, x):
    """What a recompute under create_graph reads in place of an outer tensor: the tensor
    itself, so the recorded backward reaches the outer graph through it."""
    return x


@CHECKPOINT_INPUT.defvjp
def _checkpoint_input_vjp(xp, g, saved, node, donate):
    return (g,)


def _checkpoint_vjp_recorded(xp, g, saved, node):
    """create_graph=True: recompute fn on identity nodes over the checkpoint's inputs (not
    local leaves), so the backward recorded through the local graph is wired to the outer
    one; the walk stops at those nodes (targets), so no gradient passes an input twice."""
    p = node.params
    start = graph._next_index()
    ident = {b: graph.new_node(CHECKPOINT_INPUT, (b,), (), None, (True,), b.shape, b.dtype) for b in node.parents}
    outer = _Mode.checkpoint
    sp = CheckpointScope(remaps=p.get("remaps", ()) + (ident,), start=start, record=True, outer=outer)
    arrays = tuple(s.data if isinstance(s, Tensor) else s for s in saved)   # the walk wraps saved by position
    args = _rebuild(p["template"], arrays, p["arg_nodes"])
    prev_special = _Mode.checkpoint
    with _replaying(p, sp):
        out = p["fn"](*args, **p["kwargs"])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    _check_same(p, outs)
    root = _pack([outs[i] for i in p["packed"]]) if p["pack"] else outs[p["packed"][0]]
    if root._node is None:
        return (None,) * len(node.parents)
    targets = {n: [k] for k, n in enumerate(ident.values())}
    # the backward is recorded under the same remaps (a checkpoint nested in this one maps the
    # tensors it reads through them), without the first-run check: it reads the outer graph
    _Mode.checkpoint = CheckpointScope(remaps=sp.remaps, start=0, record=True, outer=outer)
    try:
        found = run([root._node], [(g, False)], xp, retain_graph=True, create_graph=True, targets=targets)
    finally:
        _Mode.checkpoint = prev_special
    grads = []
    for b, n in ident.items():
        r = found.get(n)
        if b.grad is not None:                  # pending at the boundary (walk.TAKES_PENDING): the total
            r = b.grad if r is None else r + b.grad
        grads.append(r)
    return tuple(grads)


_checkpoint_fwd.defvjp(_checkpoint_vjp)
CHECKPOINT = _checkpoint_fwd
walk.TAKES_PENDING.add(CHECKPOINT)


def _nbytes(shape, dtype):
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def _inner_peak(node):
    """For the memory planner, an upper estimate of what the recompute holds at once:
    the segment's activations (counted during the first run when accounting was on),
    a gradient for every input, and two gradients in flight."""
    out = _nbytes(node.shape, node.dtype)
    acts = node.params.get("inner_bytes")
    return (acts if acts is not None else 2 * out) + sum(_nbytes(p.shape, p.dtype) for p in node.parents) + 2 * out


def _abstract_vjp(xp, g, saved, node, donate):
    """The VJP on abstract arrays, for the planner (which cannot rerun fn on sizes): the
    recompute's peak, held for a moment, then one fresh gradient per input."""
    acct = accountant.active
    if acct is not None:
        acct.alloc(xp.empty((_inner_peak(node),), np.uint8), "checkpoint (recompute)")    # dies at once
    return tuple(xp.empty(p.shape, p.dtype) if need else None for p, need in zip(node.parents, node.needs))


CHECKPOINT.register_kernel("abstract", None, _abstract_vjp)


def _rebuild(template, saved, arg_nodes):
    args, it = [], iter(saved)
    for kind, value in template:
        if kind == "tensor":
            arr = next(it)
            args.append(Tensor._from(arr, arg_nodes[len(args)]))
        else:
            args.append(value)
    return args


def _check_same(p, outs):
    meta = [(tuple(o.shape), o.dtype) if isinstance(o, Tensor) else None for o in outs]
    if meta != p["out_meta"]:
        raise RuntimeError(f"gpuad.checkpoint: recomputing {getattr(p['fn'], '__name__', 'the function')} gave "
                           f"outputs {meta} but the first run gave {p['out_meta']}: the function is not "
                           f"deterministic, so the saved gradients would not match; make it deterministic "
                           f"or do not checkpoint it")


def _pack(outs):
    return C.concat([C.reshape(o, (-1,)) for o in outs])


def checkpoint(fn, *args, preserve_rng_state=True, **kwargs):
    """Run fn(*args, **kwargs) keeping only its inputs; recompute it during backward.

    Returns what fn returns (a Tensor or a tuple/list of them). Non-tensor and
    GREY arguments pass through. With preserve_rng_state, the generator state
    is saved and restored around the recompute, so random ops (dropout) draw
    the same values. Works with backward(), autograd.grad, and nested.

    >>> import gpuad
    >>> w = gpuad.tensor([0.5, -1.0], requires_grad=True)
    >>> y = gpuad.checkpoint(lambda x: (x * w).tanh().sum(), gpuad.tensor([1.0, 2.0]))
    >>> y.backward()
    >>> w.grad.shape
    (2,)
    """
    if not callable(fn):
        raise TypeError(f"gpuad.checkpoint: fn must be callable, got {type(fn).__name__}")
    outer = _Mode.checkpoint
    recording = _Mode.enabled or (outer is not None and outer.record)
    if not recording or (outer is not None and outer.capture is not None):
        return _check_outputs(fn, fn(*args, **kwargs))    # nothing is recorded here anyway
    rng = get_rng_state() if preserve_rng_state else None
    capture = []
    sp = CheckpointScope(capture=capture, remaps=outer.remaps if outer is not None else (), outer=outer)
    counted = accountant.active is not None
    allocated_before = accountant.allocated_bytes if counted else 0
    prev_enabled, prev_special = _Mode.enabled, _Mode.checkpoint
    _Mode.enabled, _Mode.checkpoint = False, sp
    try:
        out = fn(*args, **kwargs)
    finally:
        _Mode.enabled, _Mode.checkpoint = prev_enabled, prev_special
    _check_outputs(fn, out)
    if not capture:
        return out                                       # fn read nothing that requires grad
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    grads_for = [i for i, o in enumerate(outs) if isinstance(o, Tensor) and o._node is None
                 and o.dtype.kind == "f"]
    if not grads_for:
        return out
    template, arrays, arg_nodes = [], [], []
    for a in args:
        if isinstance(a, Tensor):
            template.append(("tensor", None))
            arrays.append(a.data)
            arg_nodes.append(outer.map(a._node) if outer is not None and a._node is not None else a._node)
        else:
            template.append(("value", a))
            arg_nodes.append(None)
    pack = len(grads_for) > 1
    if pack:
        dtypes = {outs[i].dtype for i in grads_for}
        if len(dtypes) > 1:
            raise TypeError(f"gpuad.checkpoint: fn returned floating tensors of several dtypes {sorted(map(str, dtypes))}; "
                            f"return one dtype, or checkpoint them separately")
        xp = namespace_of(outs[grads_for[0]].data)
        root_data = xp.concatenate([outs[i].data.reshape(-1) for i in grads_for])
    else:
        root_data = outs[grads_for[0]].data
    params = {"fn": fn, "kwargs": kwargs, "template": template, "arg_nodes": arg_nodes, "rng": rng,
              # the remaps in force when fn first ran (a checkpoint inside another's recompute):
              # its own recompute reads through them again, even from a second-order graph
              # that outlives the enclosing recompute
              "remaps": outer.remaps if outer is not None else (),
              "out_meta": [(tuple(o.shape), o.dtype) if isinstance(o, Tensor) else None for o in outs],
              "packed": grads_for, "pack": pack,
              "inner_bytes": (accountant.allocated_bytes - allocated_before) if counted else None}
    node = graph.Node(CHECKPOINT, tuple(capture), tuple(arrays), params, (True,) * len(capture),
                      tuple(root_data.shape), root_data.dtype)
    root = Tensor._from(root_data, node)
    if not pack:
        outs[grads_for[0]] = root
        return outs[0] if not isinstance(out, (tuple, list)) else type(out)(outs)
    offset = 0
    for i in grads_for:
        n = int(np.prod(outs[i].shape))
        outs[i] = C.reshape(root[offset:offset + n], outs[i].shape)
        offset += n
    return type(out)(outs)


def _check_outputs(fn, out):
    items = out if isinstance(out, (tuple, list)) else (out,)
    if not any(isinstance(o, Tensor) for o in items):
        raise TypeError(f"gpuad.checkpoint: {getattr(fn, '__name__', 'fn')} returned {type(out).__name__}, "
                        f"not a Tensor (or a tuple of them): there is nothing to differentiate")
    return out


# --- chains -------------------------------------------------------------------------

class Budget(int):
    """A budget in bytes for nn.Sequential(..., checkpoint=Budget(...)); also parses "48MiB", "1.5GB"."""

    def __new__(cls, value):
        if isinstance(value, str):
            value = parse_bytes(value)
        return super().__new__(cls, int(value))


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 2 ** 10, "mib": 2 ** 20,
          "gib": 2 ** 30}


def parse_bytes(text):
    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"gpuad.checkpoint: cannot read {text!r} as a size (try '48MiB' or '1.5GB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _layers(layers, who="checkpoint_sequential"):
    layers = list(getattr(layers, "layers", layers))
    if not layers:
        raise ValueError(f"gpuad.{who}: needs at least one layer")
    for i, layer in enumerate(layers):
        if not callable(layer):
            raise TypeError(f"gpuad.{who}: layer {i} ({type(layer).__name__}) is not callable")
    return layers


def run_schedule(layers, x, tree):
    """Execute a schedule tree: splits become (nested) checkpoints, stores run plainly."""
    while tree[0] == "split":
        _, i, k, j, left, right = tree
        x = checkpoint(_run_segment, layers, left, x)
        tree = right
    return _run_segment(layers, tree, x)


def _run_segment(layers, tree, x):
    if tree[0] == "store":
        for layer in layers[tree[1]:tree[2]]:
            x = layer(x)
        return x
    return run_schedule(layers, x, tree)


def chain_costs(layers, x):
    """Probe a chain once, layer by layer: forward cost, activation bytes, bytes kept.

    Each layer runs recorded on its own (its input a fresh leaf), so at most
    one layer's graph is alive. The cost is layer.flops(input_shape) when the
    layer says, else its measured time.
    """
    from .graph import enable_grad
    fwd, act, keep = [], [x.nbytes], []
    use_flops = all(hasattr(layer, "flops") for layer in layers)
    h = x
    for n, layer in enumerate(layers):
        with enable_grad():
            inp = h if n == 0 else Tensor._from(h.data).requires_grad_(h.dtype.kind == "f")
            accountant.enable()
            try:
                before = accountant.live_bytes
                t0 = time.perf_counter()
                out = layer(inp)
                dt = time.perf_counter() - t0
                kept = accountant.live_bytes - before
            finally:
                accountant.disable()
        if not isinstance(out, Tensor):
            raise TypeError(f"gpuad.checkpoint_sequential: layer {n} returned {type(out).__name__}, not a Tensor")
        fwd.append(float(layer.flops(tuple(inp.shape))) if use_flops else dt)
        act.append(out.nbytes)
        keep.append(max(int(kept), out.nbytes))
        h = out.detach()
        del out, inp
    return Chain(fwd, act, keep)


def plan(layers_or_costs, x_or_shape, budget_bytes, dtype="float32"):
    """The schedule checkpoint_sequential would run for this budget, without running it.

    layers_or_costs: the layers (probed once on x), or a Chain of costs, or a
    list of (forward cost, output bytes, kept bytes) per layer together with
    the input's shape (and dtype). Printing the result shows the stored
    activations, the predicted activation peak and the recomputation.

    >>> import gpuad
    >>> print(gpuad.checkpoint.plan([(1.0, 4096, 4096)] * 16, (1024,), 10 * 4096))   # doctest: +ELLIPSIS
    Schedule(16 layers, budget 40960 B: stores x_{7} ... recomputes 7 layer forwards ...
    """
    if isinstance(layers_or_costs, Chain):
        chain = layers_or_costs
    elif isinstance(layers_or_costs, (list, tuple)) and layers_or_costs and \
            isinstance(layers_or_costs[0], (tuple, list)):
        in_bytes = x_or_shape.nbytes if isinstance(x_or_shape, Tensor) else \
            int(np.prod(x_or_shape)) * np.dtype(dtype).itemsize
        chain = Chain([c[0] for c in layers_or_costs], [in_bytes] + [int(c[1]) for c in layers_or_costs],
                      [int(c[2]) for c in layers_or_costs])
    else:
        layers = _layers(layers_or_costs, "checkpoint.plan")
        x = x_or_shape if isinstance(x_or_shape, Tensor) else Tensor._from(np.zeros(x_or_shape, dtype))
        chain = chain_costs(layers, x)
    return optimal(chain, budget_bytes)


_plan_cache = {}


def checkpoint_sequential(layers, x, segments=None, budget_bytes=None, preserve_rng_state=True):
    """Run a chain of layers with checkpointing; returns the last output.

    segments=None and no budget: ceil(sqrt(L)) segments; an int: that many;
    budget_bytes: the fastest schedule whose activation memory fits (probed
    on the first call for this input shape, then cached).

    >>> import gpuad
    >>> from gpuad import nn
    >>> net = nn.MLP([8] * 17, activation="tanh")
    >>> y = gpuad.checkpoint_sequential(net, gpuad.randn(2, 8), segments=4)
    >>> y.shape
    (2, 8)
    """
    layers = _layers(layers)
    L = len(layers)
    if not isinstance(x, Tensor):
        x = Tensor(x)
    if budget_bytes is not None:
        if segments is not None:
            raise ValueError("gpuad.checkpoint_sequential: give segments or budget_bytes, not both")
        key = (tuple(id(layer) for layer in layers), tuple(x.shape), str(x.dtype), int(budget_bytes))
        sched = _plan_cache.get(key)
        if sched is None:
            sched = _plan_cache[key] = optimal(chain_costs(layers, x), budget_bytes)
        tree = sched.tree
    else:
        if segments is None:
            segments = sqrt_segments(L)
        if not isinstance(segments, int) or isinstance(segments, bool):
            raise TypeError(f"gpuad.checkpoint_sequential: segments must be an int, got {type(segments).__name__}")
        tree = segments_tree(L, segments)
    return run_schedule(layers, x, tree)


def schedule_for(layers, x, segments=None, budget_bytes=None):
    """The Schedule checkpoint_sequential runs (for reports), given a probe input."""
    layers = _layers(layers)
    chain = chain_costs(layers, x)
    if budget_bytes is not None:
        return optimal(chain, budget_bytes)
    return Schedule(segments_tree(len(layers), segments or sqrt_segments(len(layers))), chain)


checkpoint.plan = plan
checkpoint.sequential = checkpoint_sequential
checkpoint.Budget = Budget
