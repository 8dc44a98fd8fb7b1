"""The reverse walk over the recorded graph: the one loop backward runs.

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
allocating (engine/policy.py decides each case).

The planner (engine/plan.py) runs this same loop on abstract arrays, so the
order of visits, the routing of each gradient, the early finishing of hooked
leaves and the moment each buffer dies cannot differ between the two.

>>> import gpuad
>>> from gpuad.backends import numpy_ns
>>> from gpuad.engine.walk import run
>>> x = gpuad.tensor(3.0, requires_grad=True)
>>> y = x * x
>>> found = run([y._node], [(numpy_ns.ones((), "float32"), True)], numpy_ns, False, False, {x._node: [0]})
>>> float(found[x._node])
6.0
"""
import contextlib
import heapq
import sys

import numpy as np

from .. import config
from ..backends import writeable
from ..backends.batched import LIVE, batched_xp, reduce_for
from ..backends.devices import is_out_of_memory, out_of_memory
from ..errors import BackwardError
from ..graph import FREED, _Mode, reachable
from ..memory.accounting import accountant, owner_of
from ..providers import provider_name
from ..tensor import Tensor
from . import anomaly
from .policy import DONATE_MIN, accumulate, leaf_keeps, route
from .versions import MUTATED, check_saved

_heappush, _heappop = heapq.heappush, heapq.heappop

# Primitives whose VJP continues its inputs' pending gradient sums and hands back
# the totals (gpuad.checkpoint registers its own: the recompute adds, in the order
# the forward would have, so the sums are bitwise those without checkpointing).
TAKES_PENDING = set()


def run(roots, seeds, xp, retain_graph, create_graph, targets):
    """The reverse walk from `roots` with gradients `seeds` [(array, owned)], on xp's
    arrays (numpy, cupy, abstract; the Tensor namespace records it: create_graph).
    Returns {target node: gradient} when targets ({node: positions}) are given.

    What happens to each gradient (donated to a VJP, owned, added in place at
    fan-in) is decided by engine/policy.py; this loop only moves gradients
    along the edges.
    """
    found = {}
    needed = _needed_nodes(roots, targets) if targets is not None else None
    heap = _seed(roots, seeds, create_graph)
    watch = _Watch.start(roots, seeds, xp, create_graph, retain_graph)      # None unless instrumented
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
    mutated = MUTATED                        # non-empty once any in-place write happened
    # Leaves are created before the forward pass, so their index is the smallest and the
    # walk would reach every one of them last. A leaf whose post-accumulate hook waits for
    # its gradient (a data-parallel all-reduce) is finished instead as soon as its last
    # consumer has sent its share: `early` counts the edges still to come.
    early = _hooked_leaf_edges(roots) if _Mode.post_hooks > 0 and targets is None else None
    op = None
    try:
        while True:
            if nxt is not None and (not heap or nxt.index > -heap[0][0]):
                node, nxt = nxt, None
            elif heap:
                node = _heappop(heap)[1]
            elif early:                      # consumers that never got a gradient: finish the rest now
                _finish_leaves(early, list(early), create_graph, found, watch)
                early = None
                continue
            else:
                break
            g = node.grad
            node.grad = None
            op = node.op
            owned = node.owned
            if watch is not None:
                watch.visit(node)
            if node.extra is not None or targets is not None:
                # leaves, retain_grad, hooks, autograd.grad targets: the slow path
                g, owned, go_on = _visit_special(node, g, owned, create_graph, targets, found, watch)
                if not go_on:
                    continue
            donate = owned and g.size >= DONATE_MIN       # policy.may_donate, inline: the hot path
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
            nx = xp if not LIVE[0] or create_graph else batched_xp(xp, g, saved)    # under vmap: its rules
            prev_needs = _narrow_needs(node, needed) if needed is not None else None
            try:
                grads = (op.vjp if not op.kernels else vjp_for(op, nx))(nx, g, saved, node, donate)
            finally:
                if prev_needs is not None:
                    node.needs = prev_needs
            if watch is not None:
                watch.vjp(node, g, saved, grads)
            finished = None
            for parent, raw in zip(node.parents, grads):
                if early is not None and parent in early:    # a hooked leaf: summed here, finished early
                    early[parent] -= 1
                    if early[parent] == 0:
                        finished = (finished or []) + [parent]
                    if raw is None:
                        continue
                elif parent is None or raw is None or (needed is not None and parent not in needed):
                    continue
                if LIVE[0]:
                    raw = reduce_for(raw, parent.index, node.index)     # a vmap's per-example gradients, summed
                if op.elementwise and not create_graph:      # route()'s first rule, inline: the hot path
                    gi, gi_owned = raw, raw is not g or donate
                else:
                    gi, gi_owned = route(nx, raw, g, donate, grads, parent, op, create_graph)
                if watch is not None:
                    watch.routed(parent, raw, gi, gi_owned, op)
                pg = parent.grad
                if pg is None:
                    parent.grad = gi
                    parent.owned = gi_owned
                    if early is not None and parent in early:
                        pass                 # (never pushed: _finish_leaves visits it)
                    elif nxt is None:
                        nxt = parent
                    elif parent.index > nxt.index:
                        _heappush(heap, (-nxt.index, nxt))
                        nxt = parent
                    else:
                        _heappush(heap, (-parent.index, parent))
                elif op in TAKES_PENDING:
                    parent.grad, parent.owned = gi, gi_owned
                else:
                    parent.grad, parent.owned = accumulate(nx, pg, parent.owned, gi, gi_owned, create_graph)
                    if watch is not None:
                        watch.accumulated(pg, parent.grad, gi)
                    pg = None         # a replaced sum is dead: hold it through no later allocation
            if watch is not None:
                watch.mark(op.name)
            # Hold nothing of this node into the next one's VJP (the planner sees what we hold).
            g = grads = raw = gi = None
            if finished is not None:
                _finish_leaves(early, finished, create_graph, found, watch)
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory(e, (op.name if op is not None else "seed") + " (backward)") from None
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


def vjp_for(op, xp):
    """The function that computes op's gradients on xp's arrays: the provider's
    backward kernel where one is registered (falling back to the VJP when it
    declines), else the VJP itself."""
    kernel = op.kernels.get(provider_name(xp)) if op.kernels else None
    if kernel is None or kernel.backward is None:
        return op.vjp

    def with_kernel(xp, g, saved, node, donate):
        grads = kernel.backward(xp, g, saved, node, donate)
        return grads if grads is not None else op.vjp(xp, g, saved, node, donate)
    return with_kernel


def _narrow_needs(node, needed):
    """autograd.grad computes only the gradients toward its targets (as torch prunes): the
    node's needs narrowed to its needed parents for its VJP, so a parameter's gradient is
    not formed when only an input's is asked for (jacrev through a model would otherwise
    form a weight gradient per row, then drop it). Returns the needs to restore, or None."""
    needs = node.needs
    narrow = tuple(bool(n) and p is not None and p in needed for n, p in zip(needs, node.parents))
    if narrow == needs or not any(narrow):
        return None
    node.needs = narrow
    return needs


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
    out = []
    for k, s in enumerate(node.saved):
        if s is None or not hasattr(s, "shape") or k >= len(plan):
            out.append(s)                   # (aux arrays, masks, are constants)
        else:
            out.append(Tensor._from(s, node if plan[k] == -1 else node.parents[plan[k]]))
    return tuple(out)


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


def _finish_leaves(early, leaves, create_graph, found, watch):
    """Accumulate these leaves' complete gradients into .grad now (and run their hooks)."""
    for leaf in leaves:
        del early[leaf]
        g, leaf.grad = leaf.grad, None
        if g is not None:
            if watch is not None:
                watch.visit(leaf)
            _visit_special(leaf, g, leaf.owned, create_graph, None, found, watch)


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


def _visit_special(node, g, owned, create_graph, targets, found, watch):
    """Hooks, capture for autograd.grad, and .grad accumulation. Returns
    (g, whether the engine still owns it, whether to run the node's VJP)."""
    if node.hooks is not None:
        g, owned = _run_grad_hooks(node, g, owned, create_graph)
    if targets is not None and node in targets:
        found[node] = g                                       # kept for the caller: not ours any more
        owned = False
    if node.op is None:                                       # a leaf: BLACK input node
        if targets is None:
            _accumulate_leaf(node, g, owned, create_graph, watch)
        return g, owned, False
    if node.ref is not None and targets is None:              # retain_grad() on an intermediate
        _accumulate_leaf(node, g, owned, create_graph, watch)
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


def _accumulate_leaf(node, g, owned, create_graph, watch):
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
            if watch is not None:
                watch.allocated(g, "accumulate grad")
        t.grad = Tensor._from(g)
    else:
        acc = t.grad.data
        if acc.shape != g.shape:
            raise BackwardError(f"gpuad: .grad of shape {acc.shape} cannot take a gradient of shape {g.shape}")
        if writeable(acc) and type(acc) is type(g) and getattr(acc, "ns", None) is getattr(g, "ns", None):
            # (else under vmap: an unbatched .grad meeting a batched gradient, a new sum)
            acc += g
        else:
            t.grad = Tensor._from(acc + g)
    if node.hooks is not None:
        for kind, fn in list(node.hooks):
            if kind == "post":
                fn(t)


# --- instrumentation ---------------------------------------------------------------

_observers = []          # lists that observe() hands out: every walk appends its events


@contextlib.contextmanager
def observe():
    """Record what every walk in the block does, as plain tuples:
    ("visit", node index, op), ("route", parent index, shape, dtype, owned),
    ("accumulate", into the existing sum?). The planner's walk and the real one
    give the same list (tests/test_engine.py)."""
    events = []
    _observers.append(events)
    try:
        yield events
    finally:
        _observers.remove(events)


class _Watch:
    """Instrumentation around the walk, all off by default: accounting (the planner's
    walk always counts, with its own accountant), GPUAD_NO_PLANNER=1 (hold everything
    until the end, for comparison), GPUAD_DEBUG=1 (NaN-fill every buffer the moment it
    is released) and observe()."""

    def __init__(self, acct, held, debug, events):
        self.acct, self.held, self.debug, self.events = acct, held, debug, events
        self.anomaly = False
        self.prev_phase = accountant.phase

    @classmethod
    def start(cls, roots, seeds, xp, create_graph, retain_graph):
        acct = accountant.active
        keep_all = config.no_planner()
        debug = config.debug_poison() and not create_graph and not retain_graph and xp.name != "abstract"
        events = _observers[-1] if _observers else None
        anomalous = anomaly.enabled() and xp.name != "abstract"
        if acct is None and not keep_all and not debug and events is None and not anomalous:
            return None
        w = cls(acct, [] if keep_all else None, debug, events)
        w.anomaly = anomalous
        if acct is not None:
            acct.phase = "backward"
            for node, (g, owned) in zip(roots, seeds):
                if owned:
                    acct.alloc(g.data if isinstance(g, Tensor) else g, "backward seed")
        return w

    def visit(self, node):
        if self.events is not None:
            self.events.append(("visit", node.index, node.op.name if node.op is not None else "leaf"))

    def routed(self, parent, raw, gi, owned, op):
        if self.acct is not None and gi is not raw:
            self.acct.alloc(gi, op.name + " (backward)")      # summed back to the input's shape, or cast
        if self.events is not None:
            self.events.append(("route", parent.index, tuple(gi.shape), str(gi.dtype), owned))

    def vjp(self, node, g, saved, grads):
        if self.anomaly:
            anomaly.check(node, grads)
        _watch_vjp(self.acct, self.held, self.debug, node, g, saved, grads)

    def allocated(self, a, what):
        if self.acct is not None:
            self.acct.alloc(a, what)

    def accumulated(self, before, after, incoming):
        if self.events is not None:
            self.events.append(("accumulate", after is before))
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
            poison_if_dead(g, extra_refs=3)          # run's g, our g, poison_if_dead's a
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
