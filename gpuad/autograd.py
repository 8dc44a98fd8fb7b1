"""backward() and autograd.grad(): the reverse walk over the recorded graph.

The walk is the lecture's "code II": nodes are popped in decreasing creation
index (a reversed linear topological order), and each sends its gradient
through all its incoming edges, accumulating at fan-in. A node is pushed when
its first gradient arrives; by the time it is popped every consumer (all have
larger indices) has sent its share, so its gradient is complete. No
recursion, no sort, and a deterministic order.

Memory: a node's gradient is popped (released) the moment it has been sent
on, and its saved values are released right after its VJP ran, unless
retain_graph. The engine tracks which gradient buffers it owns, so fan-in
adds in place and VJPs may write into a dying gradient (donation) instead of
allocating.

>>> import gpuad
>>> x = gpuad.tensor(3.0, requires_grad=True)
>>> y = x * x
>>> gpuad.autograd.grad(y, x)[0].item()
6.0
"""
import heapq
import os
import sys

import numpy as np

from .accumulate import DONATE_MIN, accumulate, leaf_keeps, route
from .backends import device_of, namespace_of, writeable
from .dtypes import grad_dtype
from .graph import FREED, _Mode, reachable
from .memory.accounting import accountant, owner_of
from .memory.planner import no_planner
from .backends.devices import is_out_of_memory, out_of_memory
from .ops.dispatch import vjp_for
from .ops.inplace import _mutated, check_saved
from .tensor import Tensor
from .errors import BackwardError
from . import config

_heappush, _heappop = heapq.heappush, heapq.heappop
_ndarray = np.ndarray


def _root_grads(tensors, grads, who):
    """Check the roots and make their seed gradients (as arrays or Tensors)."""
    roots, seeds = [], []
    for i, (t, g) in enumerate(zip(tensors, grads)):
        if not isinstance(t, Tensor):
            raise TypeError(f"gpuad.{who}: output {i} is a {type(t).__name__}, not a Tensor")
        if t._node is None:
            raise BackwardError(
                f"gpuad.{who}: output {i} does not require grad: nothing it was computed from has "
                f"requires_grad=True (it is GREY), so there is no gradient to compute")
        if g is None:
            if t.data.size != 1:
                raise BackwardError(
                    f"gpuad.{who}: output {i} has shape {t.shape}; backward needs a grad argument "
                    f"of that shape (or reduce it first, e.g. y.sum().backward())")
            xp = namespace_of(t.data)
            seeds.append((xp.ones(t.data.shape, dtype=grad_dtype(t.data.dtype)), True))
        else:
            gd = g.data if isinstance(g, Tensor) else g
            want = grad_dtype(t.data.dtype)
            if not hasattr(gd, "shape"):
                gd = np.asarray(gd, dtype=want)
            if tuple(gd.shape) != t.shape:
                raise BackwardError(f"gpuad.{who}: grad has shape {tuple(gd.shape)} but output {i} "
                                    f"has shape {t.shape}")
            if type(gd) is np.ndarray and type(t.data) is not np.ndarray and getattr(t.data, "_xp", None) is None:
                gd, g = namespace_of(t.data).asarray(gd), None      # a host grad for a device output
            if gd.dtype != want and (not isinstance(g, Tensor) or want != t.data.dtype):
                gd, g = gd.astype(want), None
            seeds.append((g if isinstance(g, Tensor) else gd, False))
        roots.append(t._node)
    return roots, seeds


def _as_list(x):
    if x is None:
        return None
    return list(x) if isinstance(x, (list, tuple)) else [x]


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """Accumulate the gradients of `tensors` into the .grad of every leaf they depend on.

    >>> import gpuad
    >>> a = gpuad.tensor(1.0, requires_grad=True)
    >>> b = a + a
    >>> c = b + b
    >>> gpuad.autograd.backward(c)
    >>> a.grad.item()
    4.0
    """
    tensors = _as_list(tensors)
    grads = _as_list(grad_tensors) or [None] * len(tensors)
    if len(grads) != len(tensors):
        raise ValueError(f"gpuad.backward: {len(tensors)} outputs but {len(grads)} grads")
    if retain_graph is None:
        retain_graph = create_graph
    roots, seeds = _root_grads(tensors, grads, "backward")
    _callbacks.append([])
    try:
        _run(roots, seeds, retain_graph, create_graph, targets=None)
        queued = _callbacks[-1]
        while queued:                      # a callback may queue another: run them in order until none is left
            queued.pop(0)()
    finally:
        _callbacks.pop()


# One list per backward() in progress (a hook may start a nested backward).
_callbacks = []


def queue_callback(fn):
    """Run fn() once the backward() in progress has finished its walk.

    torch's `Variable._execution_engine.queue_callback`. A gradient hook uses it to act
    when every gradient of this pass is final; DistributedDataParallel waits for its
    all-reduces there, so backward() returns with synchronised gradients.

    >>> import gpuad
    >>> w = gpuad.tensor(2.0, requires_grad=True)
    >>> seen = []
    >>> h = w.register_post_accumulate_grad_hook(
    ...     lambda t: gpuad.autograd.queue_callback(lambda: seen.append(t.grad.item())))
    >>> (w * 3).backward()
    >>> seen
    [3.0]
    """
    if not _callbacks:
        raise RuntimeError("gpuad.autograd.queue_callback: no backward() is running "
                           "(call it from a hook during backward)")
    _callbacks[-1].append(fn)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """d(outputs)/d(inputs), returned as a tuple; nothing is written to .grad.

    Inputs may be leaves or intermediates (the lecture's edge severing: the
    gradient at a node equals the gradient obtained by making it an input).

    >>> import gpuad
    >>> x = gpuad.tensor(2.0, requires_grad=True)
    >>> y = x ** 3
    >>> (dx,) = gpuad.autograd.grad(y, x, create_graph=True)
    >>> (ddx,) = gpuad.autograd.grad(dx, x)
    >>> dx.item(), ddx.item()
    (12.0, 12.0)
    """
    outputs = _as_list(outputs)
    single = isinstance(inputs, Tensor)
    inputs = _as_list(inputs)
    grads = _as_list(grad_outputs) or [None] * len(outputs)
    if retain_graph is None:
        retain_graph = create_graph
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor) or t._node is None:
            raise BackwardError(f"gpuad.autograd.grad: input {i} does not require grad, so no "
                                f"gradient flows to it (set requires_grad=True on it before the forward)")
    roots, seeds = _root_grads(outputs, grads, "autograd.grad")
    targets = {}
    for i, t in enumerate(inputs):
        targets.setdefault(t._node, []).append(i)
    found = _run(roots, seeds, retain_graph, create_graph, targets=targets)
    result = []
    for i, t in enumerate(inputs):
        g = found.get(t._node)
        if g is None:
            if not allow_unused:
                raise BackwardError(f"gpuad.autograd.grad: input {i} (shape {t.shape}) was not used to "
                                    f"compute the outputs; pass allow_unused=True to get None for it")
            result.append(None)
        else:
            result.append(g if isinstance(g, Tensor) else Tensor._from(g))
    return tuple(result)


def _needed_nodes(roots, targets):
    """Nodes on some path from a root down to a target: the only ones grad() visits."""
    needed = set()
    for n in reversed(reachable(roots)):   # parents come first in creation order
        if n in targets or any(p in needed for p in n.parents if p is not None):
            needed.add(n)
    return needed


def _wrap_saved(node):
    """Saved arrays as Tensors wired to the graph, so a recorded VJP can be differentiated."""
    plan = node.op.plan(node.needs)
    saved = node.saved
    out = []
    for k, s in enumerate(saved):
        if s is None or not hasattr(s, "shape"):
            out.append(s)
        elif k < len(plan):
            src = node if plan[k] == -1 else node.parents[plan[k]]
            out.append(Tensor._from(s, src))
        else:
            out.append(s)                   # aux arrays (masks) are constants
    return tuple(out)


def _run(roots, seeds, retain_graph, create_graph, targets):
    """The reverse walk. Returns {target node: gradient} when targets are given.

    What happens to each gradient (donated to a VJP, owned, added in place
    at fan-in) is decided by gpuad/accumulate.py, the policy the planner
    replays; this loop only moves gradients along the edges.
    """
    from .ops.namespace import tensor_ns_on
    first = seeds[0][0]
    data = first.data if isinstance(first, Tensor) else first
    xp = tensor_ns_on(device_of(data)) if create_graph else namespace_of(data)
    del data                   # (no reference to the seed here: it dies on its node, as planned)
    found = {}
    needed = _needed_nodes(roots, targets) if targets is not None else None
    heap = _seed(roots, seeds, create_graph)
    watch = _Watch.start(roots, seeds, create_graph, retain_graph)      # None unless instrumented
    first = None
    seeds.clear()              # the seed gradients now live on their nodes alone, and die there
    free_saved = not retain_graph and (watch is None or watch.held is None)
    prev_mode = _Mode.enabled
    _Mode.enabled = create_graph          # record the backward pass only when asked
    # VJPs meet 0 * inf and x / 0 at points a selection then masks out (relu, power):
    # like torch, backward computes through them silently.
    errstate = np.errstate(divide="ignore", invalid="ignore", over="ignore")
    errstate.__enter__()
    # The heap holds nodes whose gradient has started arriving, keyed by
    # -index. `nxt` is a one-slot fast lane in front of it: in a chain every
    # node hands exactly one new parent on, which then skips the heap.
    nxt = None
    mutated = _mutated                       # non-empty once any in-place write happened
    # Leaves are created before the forward pass, so their index is the smallest and the
    # walk would reach every one of them last. A leaf whose post-accumulate hook waits for
    # its gradient (a data-parallel all-reduce) is finished instead as soon as its last
    # consumer has sent its share: `early` counts the edges still to come.
    early = _hooked_leaf_edges(roots) if _Mode.post_hooks > 0 and targets is None else None
    try:
        while True:
            if nxt is not None and (not heap or nxt.index > -heap[0][0]):
                node, nxt = nxt, None
            elif heap:
                node = _heappop(heap)[1]
            elif early:                      # consumers that never got a gradient: finish the rest now
                _finish_leaves(early, list(early), create_graph, found)
                early = None
                continue
            else:
                break
            g = node.grad
            node.grad = None
            op = node.op
            owned = node.owned
            if node.extra is not None or targets is not None:
                # leaves, retain_grad, hooks, autograd.grad targets: the slow path
                g, owned, go_on = _visit_special(node, g, owned, create_graph, targets, found)
                if not go_on:
                    continue
            donate = owned and g.size >= DONATE_MIN       # accumulate.may_donate, inline: the hot path
            saved = node.saved
            if mutated and saved:
                check_saved(node)                    # an in-place write happened somewhere: look
            if saved is FREED:
                raise BackwardError(
                    f"gpuad: trying to backward through the graph a second time: node #{node.index} "
                    f"({op.name}) already released its saved values. Pass retain_graph=True to the "
                    f"first backward() to keep them, or run the forward again.")
            if create_graph:
                saved = _wrap_saved(node)
            if free_saved:
                # Saved values die with this VJP; marking the node first tells the VJP
                # it may use a saved buffer nobody else holds as scratch (see dies_here).
                node.saved = FREED
            grads = (op.vjp if not op.kernels else vjp_for(op, xp))(xp, g, saved, node, donate)
            if watch is not None:
                watch.vjp(node, g, saved, grads)
            finished = None
            for parent, raw in zip(node.parents, grads):
                if early is not None and parent in early:
                    if raw is not None:
                        _receive_early(xp, parent, raw, g, donate, grads, op, create_graph, watch)
                    early[parent] -= 1
                    if early[parent] == 0:
                        finished = (finished or []) + [parent]
                    continue
                if parent is None or raw is None or (needed is not None and parent not in needed):
                    continue
                if op.elementwise and not create_graph:      # route()'s first rule, inline: the hot path
                    gi, gi_owned = raw, raw is not g or donate
                else:
                    gi, gi_owned = route(xp, raw, g, donate, grads, parent, op, create_graph)
                if watch is not None and gi is not raw:
                    watch.allocated(gi, op.name + " (backward)")
                pg = parent.grad
                if pg is None:
                    parent.grad = gi
                    parent.owned = gi_owned
                    if nxt is None:
                        nxt = parent
                    elif parent.index > nxt.index:
                        _heappush(heap, (-nxt.index, nxt))
                        nxt = parent
                    else:
                        _heappush(heap, (-parent.index, parent))
                elif op.replaces_grads:
                    parent.grad, parent.owned = gi, gi_owned       # the VJP added pg in already
                else:
                    parent.grad, parent.owned = accumulate(xp, pg, parent.owned, gi, gi_owned, create_graph)
                    if watch is not None:
                        watch.accumulated(pg, parent.grad, gi)
                    pg = None         # a replaced sum is dead: hold it through no later allocation
            if watch is not None:
                watch.mark(op.name)
            # Hold nothing of this node into the next one's VJP (the planner assumes so).
            g = grads = raw = gi = None
            if finished is not None:
                _finish_leaves(early, finished, create_graph, found)
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory(e, op.name + " (backward)") from None
        raise
    finally:
        errstate.__exit__(None, None, None)
        _Mode.enabled = prev_mode
        for _, n in heap:                                     # after an error: release what is left
            n.grad = None
        if nxt is not None:
            nxt.grad = None
        for leaf in early or ():                              # hooked leaves still waiting, likewise
            leaf.grad = None
        if watch is not None:
            watch.finish(roots, retain_graph)
    return found


def _receive_early(xp, leaf, raw, g, donate, grads, op, create_graph, watch):
    """The main loop's sending of one gradient to a parent, for a leaf finished early
    (that loop inlines it for speed; it pushes the parent on the heap, this does not)."""
    gi, gi_owned = route(xp, raw, g, donate, grads, leaf, op, create_graph)
    if watch is not None and gi is not raw:
        watch.allocated(gi, op.name + " (backward)")
    pg = leaf.grad
    if pg is None or op.replaces_grads:
        leaf.grad, leaf.owned = gi, gi_owned
    else:
        leaf.grad, leaf.owned = accumulate(xp, pg, leaf.owned, gi, gi_owned, create_graph)
        if watch is not None:
            watch.accumulated(pg, leaf.grad, gi)


def _hooked_leaf_edges(roots):
    """{leaf with a post-accumulate hook: edges into it from the graph below roots}."""
    counts = {}
    seeded = set(roots)              # a root that is itself a hooked leaf keeps its place on the heap
    for n in reachable(roots):
        for p in n.parents:
            if p is not None and p.op is None and p not in seeded and p.extra is not None and p.hooks \
                    and any(kind == "post" for kind, _ in p.hooks):
                counts[p] = counts.get(p, 0) + 1
    return counts or None


def _finish_leaves(early, leaves, create_graph, found):
    """Accumulate these leaves' complete gradients into .grad now (and run their hooks)."""
    for leaf in leaves:
        del early[leaf]
        g, leaf.grad = leaf.grad, None
        if g is not None:
            _visit_special(leaf, g, leaf.owned, create_graph, None, found)


def _seed(roots, seeds, create_graph):
    """Put the seed gradients on the roots; the heap of nodes to visit."""
    heap = []
    for node, (g, owned) in zip(roots, seeds):
        if create_graph:
            g = g if isinstance(g, Tensor) else Tensor._from(g)
            owned = False
        elif isinstance(g, Tensor):
            g = g.data
        if node.grad is None:
            node.grad, node.owned = g, owned
            heap.append((-node.index, node))
        else:
            node.grad = node.grad + g
            node.owned = not create_graph
    heapq.heapify(heap)
    return heap


class _Watch:
    """Instrumentation around the walk, all off by default: accounting,
    GPUAD_NO_PLANNER=1 (hold everything until the end, for comparison) and
    GPUAD_DEBUG=1 (NaN-fill every buffer the moment it is released)."""

    def __init__(self, acct, held, debug):
        self.acct, self.held, self.debug = acct, held, debug
        self.prev_phase = accountant.phase

    @classmethod
    def start(cls, roots, seeds, create_graph, retain_graph):
        acct = accountant.active
        keep_all = no_planner()
        debug = config.debug_poison() and not create_graph and not retain_graph
        if acct is None and not keep_all and not debug:
            return None
        w = cls(acct, [] if keep_all else None, debug)
        if acct is not None:
            acct.phase = "backward"
            for node, (g, owned) in zip(roots, seeds):
                if owned:
                    acct.alloc(g.data if isinstance(g, Tensor) else g, "backward seed")
        return w

    def vjp(self, node, g, saved, grads):
        _watch_vjp(self.acct, self.held, self.debug, node, g, saved, grads)

    def allocated(self, a, what):
        if self.acct is not None:
            self.acct.alloc(a, what)

    def accumulated(self, before, after, incoming):
        if self.acct is not None:
            self.acct.alloc(after, "accumulate")
            self.acct.traffic("accumulate", 2 * incoming.nbytes, incoming.nbytes)
        if self.held is not None:
            self.held.append(before)

    def mark(self, name):
        if self.acct is not None:
            self.acct.mark(name)

    def finish(self, roots, retain_graph):
        accountant.phase = self.prev_phase
        if self.held:
            self.held.clear()
            if not retain_graph:
                for n in reachable(roots):
                    if n.op is not None:
                        n.saved = FREED


def _watch_vjp(acct, held, debug, node, g, saved, grads):
    """Accounting, no-planner holding and debug poisoning around one VJP."""
    if acct is not None:
        name = node.op.name + " (backward)"
        mine = {id(owner_of(g))}
        read = g.nbytes
        for a in saved:
            if hasattr(a, "nbytes") and hasattr(a, "base"):
                read += a.nbytes
                mine.add(id(owner_of(a)))
        written = 0
        for gi in grads:
            if gi is not None and hasattr(gi, "base"):
                written += gi.nbytes
                if id(owner_of(gi)) not in mine:
                    acct.alloc(gi, name)
        extra = node.op.vjp_temps * g.nbytes
        acct.traffic(name, read + extra, written + extra)
    if held is not None:
        held.append(g)
        return
    if debug:
        outs = {id(gi) for gi in grads if gi is not None} | {id(gi.base) for gi in grads if gi is not None}
        if id(g) not in outs:
            poison_if_dead(g, extra_refs=3)          # _run's g, our g, poison_if_dead's a
        _poison_saved(saved, grads)


def _poison_saved(saved, grads):
    """GPUAD_DEBUG: NaN-fill saved buffers nothing outside this node references."""
    counts = {}
    for a in saved:
        if isinstance(a, np.ndarray):
            counts[id(a)] = counts.get(id(a), 0) + 1
    outs = {id(gi) for gi in grads if gi is not None}
    for a in saved:
        if isinstance(a, np.ndarray) and id(a) in counts and id(a) not in outs:
            # refs: the saved tuple's slots, our loop's `a`, poison_if_dead's `a`
            poison_if_dead(a, extra_refs=2 + counts.pop(id(a)))


def poison_if_dead(a, extra_refs):
    """Fill a with NaN if only the caller's `extra_refs` references hold it (and its base chain)."""
    if a.dtype.kind != "f" or not writeable(a):
        return
    if sys.getrefcount(a) - 1 > extra_refs:
        return
    b = a.base
    while isinstance(b, np.ndarray) or type(b).__module__.startswith("cupy"):   # every link ours alone
        if sys.getrefcount(b) - 1 > 2:               # held by the link below it, and `b`
            return
        b = b.base
    a.fill(np.nan)


def _visit_special(node, g, owned, create_graph, targets, found):
    """Hooks, capture for autograd.grad, and .grad accumulation. Returns
    (g, whether the engine still owns it, whether to run the node's VJP)."""
    if node.hooks is not None:
        g, owned = _run_grad_hooks(node, g, owned, create_graph)
    if targets is not None and node in targets:
        found[node] = g                                       # kept for the caller: not ours any more
        owned = False
    if node.op is None:                                       # a leaf: BLACK input node
        if targets is None:
            _accumulate_leaf(node, g, owned, create_graph)
        return g, owned, False
    if node.ref is not None and targets is None:              # retain_grad() on an intermediate
        _accumulate_leaf(node, g, owned, create_graph)
        owned = False
    return g, owned, True


def _run_grad_hooks(node, g, owned, create_graph):
    for kind, fn in list(node.hooks):
        if kind != "grad":
            continue
        res = fn(g if create_graph else Tensor._from(g))
        if res is not None:
            g = res if create_graph else (res.data if isinstance(res, Tensor) else res)
            owned = False
    return g, owned


def _accumulate_leaf(node, g, owned, create_graph):
    """Add a finished gradient into the tensor's .grad (the lecture's v.grad +=)."""
    t = node.ref()
    if t is None:
        return
    if not create_graph and g.dtype != t.data.dtype:
        g, owned = g.astype(t.data.dtype), True               # bfloat16 leaves: float32 gradients, rounded
    if create_graph:
        t.grad = g if t.grad is None else t.grad + g
    elif t.grad is None:
        if not leaf_keeps(owned):                             # never alias a buffer we do not own
            g = g.copy()
            if accountant.active is not None:
                accountant.alloc(g, "accumulate grad")
        t.grad = Tensor._from(g)
    else:
        acc = t.grad.data
        if acc.shape != g.shape:
            raise BackwardError(f"gpuad: .grad of shape {acc.shape} cannot take a gradient of shape {g.shape}")
        if writeable(acc):
            acc += g
        else:
            t.grad = Tensor._from(acc + g)
    if node.hooks is not None:
        for kind, fn in list(node.hooks):
            if kind == "post":
                fn(t)
