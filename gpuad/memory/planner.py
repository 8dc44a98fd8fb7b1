"""The backward planner: last uses, and the peak before it happens.

plan_backward(loss) walks the recorded graph once, in the order backward
will (decreasing creation index), and computes for every saved buffer and
every gradient the step after which nothing reads it. The engine releases
each exactly there (saved values right after their node's VJP, a gradient
once sent through all incoming edges); the plan replays the same rules on
sizes alone, to predict the peak of live bytes without allocating anything.

The replay runs each node's VJP on abstract arrays (shapes and dtypes, see
gpuad/ops/abstract.py) and routes and accumulates the results with the
engine's own policy (gpuad/accumulate.py): nothing about a primitive's
memory behaviour is declared beside its code.

A saved buffer that something outside the graph still holds (a tensor the
caller kept, a parameter) is not freed by backward; the plan finds those by
counting references, so it matches what really happens in CPython.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0]], requires_grad=True)
>>> y = (x * 3).tanh().sum()
>>> plan = gpuad.memory.plan_backward(y)
>>> [s.op for s in plan.steps]
['sum', 'tanh', 'multiply', 'leaf']
"""
import sys
from collections import Counter

import numpy as np

from .. import config
from ..graph import FREED, reachable
from .accounting import accountant

_ndarray = np.ndarray


def no_planner():
    """GPUAD_NO_PLANNER=1: keep every saved value and gradient until backward ends."""
    return config.no_planner()


def _is_array(a):
    """A numpy or a device (CuPy) array: what a node may save and backward frees."""
    return isinstance(a, _ndarray) or (type(a).__module__.startswith("cupy") and hasattr(a, "shape"))


def _root_array(a):
    """The last array on a's base chain (what every view of the buffer points to)."""
    while _is_array(a.base):
        a = a.base
    return a


class Step:
    __slots__ = ("index", "op", "node", "frees_saved", "live_after", "peak_during")

    def __init__(self, index, op, node):
        self.index, self.op, self.node = index, op, node
        self.frees_saved = 0
        self.live_after = self.peak_during = 0

    def __repr__(self):
        return (f"<step {self.index}: {self.op} peak {self.peak_during} live after {self.live_after} "
                f"frees {self.frees_saved} saved bytes>")


class BackwardPlan:
    """Steps of the reverse walk with predicted live bytes; `peak_bytes` is the prediction."""

    def __init__(self, steps, start_bytes, peak_bytes, saved_last_use):
        self.steps = steps
        self.start_bytes = start_bytes
        self.peak_bytes = peak_bytes
        self.saved_last_use = saved_last_use   # id(root array) -> step index after which it is dead

    @property
    def peak_delta(self):
        return self.peak_bytes - self.start_bytes

    def __repr__(self):
        return (f"<BackwardPlan {len(self.steps)} steps, start {self.start_bytes} B, "
                f"predicted peak {self.peak_bytes} B (+{self.peak_delta})>")


def _saved_buffers(order):
    """For each saved buffer (by root array): its size, the last step that reads it, and
    whether only the graph holds it (so backward really frees it)."""
    slots = Counter()          # id(saved array object) -> saved-tuple slots holding it
    objs = {}                  # id -> saved array object
    root_of = {}               # id(saved object) -> id(root array)
    roots = {}                 # id(root) -> root array
    last = {}                  # id(root) -> last step reading it
    for step, node in enumerate(order):
        saved = node.saved
        if saved is FREED or saved is None:
            continue
        for a in saved:
            if _is_array(a):
                slots[id(a)] += 1
                objs[id(a)] = a
                r = _root_array(a)
                roots[id(r)] = r
                root_of[id(a)] = id(r)
                last[id(r)] = step
    a = r = saved = None       # loop variables would hold one more reference each
    views_of = Counter(root_of[k] for k in objs if root_of[k] != k)
    internal = {}
    for k in roots:
        # references to the root: getrefcount's argument, `roots`, `objs` when it is
        # saved itself, its saved slots, and each saved view's .base
        expected = 2 + (1 if k in objs else 0) + slots.get(k, 0) + views_of.get(k, 0)
        own = sys.getrefcount(roots[k]) <= expected
        if own:
            for vk in objs:
                # a saved view: getrefcount's argument, `objs`, its slots
                if root_of[vk] == k and vk != k and sys.getrefcount(objs[vk]) > 2 + slots[vk]:
                    own = False
                    break
        internal[k] = own
    sizes = {k: _nbytes_of_root(roots[k]) for k in roots}
    return sizes, last, internal


def _nbytes_of_root(r):
    base = r.base
    if base is not None and not _is_array(base):
        return getattr(base, "nbytes", r.nbytes)     # a pooled block: the block is what is held
    return r.nbytes


class _Buffers:
    """Live bytes of planned buffers, each freed when its last holder lets go."""

    def __init__(self, start, keep_all):
        self.live = self.peak = start
        self.keep_all = keep_all
        self.bytes = {}
        self.holders = Counter()
        self._next = 0

    def new(self, nbytes, holders=1):
        self._next += 1
        b = self._next
        self.bytes[b] = nbytes
        self.holders[b] = holders
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        return b

    def hold(self, b):
        self.holders[b] += 1

    def drop(self, b, held=False):
        """One holder lets go of b. With GPUAD_NO_PLANNER=1 the engine keeps (`held`)
        every node's gradient and every gradient it accumulated over."""
        if (self.keep_all and held) or b is None:
            return
        self.holders[b] -= 1
        if self.holders[b] <= 0 and b in self.bytes:
            self.live -= self.bytes.pop(b)


def _abstract(a):
    from ..backends.abstract import AbstractArray
    return AbstractArray.like(a) if hasattr(a, "shape") and not isinstance(a, np.generic) else a


def plan_backward(loss, grad=None):
    """The plan for loss.backward(grad): steps, last uses, predicted peak (bytes).

    Every VJP runs on abstract arrays (gpuad/ops/abstract.py), so which of its
    gradients are fresh buffers, views, or written into the incoming gradient
    comes from the VJP's own code; what happens to each one next comes from
    gpuad/accumulate.py, the policy the walk itself follows.
    """
    # (imported here: gpuad.memory loads before the ops, which account through it)
    from ..accumulate import accumulate, leaf_keeps, may_donate, route
    from ..backends.abstract import AbstractArray, abstract_ns, root_of
    node = loss._node
    if node is None:
        raise RuntimeError("gpuad.memory.plan_backward: the tensor does not require grad")
    order = reachable([node])
    keep_all = no_planner()
    sizes, last, internal = _saved_buffers(order)
    start = accountant.live_bytes
    mem = _Buffers(start, keep_all)
    grads = {}              # node -> (abstract gradient, buffer, owned)
    g0 = AbstractArray(node.shape, node.dtype)
    grads[node] = (g0, mem.new(g0.nbytes), True) if grad is None else (g0, None, False)
    steps = []
    for step_i, v in enumerate(order):
        st = Step(step_i, v.op.name if v.op is not None else "leaf", v)
        g, g_buf, owned = grads.pop(v)
        donate = owned and may_donate(g)
        t = v.ref() if v.ref is not None else None
        if t is not None and t.grad is None:            # a leaf's or retain_grad's first .grad
            if leaf_keeps(owned):
                mem.hold(g_buf)                         # .grad is the buffer itself, and stays
            else:
                mem.new(g.nbytes)                       # a copy
        if v.op is None:
            mem.drop(g_buf)
            _finish_step(st, mem, steps)
            continue
        if v.ref is not None:
            owned = donate = False                      # .grad shares it now
        if v.op.inner_peak is not None:                 # a checkpoint recomputes its segment here
            mem.peak = max(mem.peak, mem.live + v.op.inner_peak(v))
        vjp = v.op.plan_vjp or v.op.vjp
        raws = vjp(abstract_ns, g, tuple(_abstract(a) for a in v.saved), v, donate)
        raw_buf = {}                                    # id(root) -> buffer, for the VJP's fresh outputs
        for raw in raws:
            if raw is not None and raw is not g and root_of(raw) is not g and id(root_of(raw)) not in raw_buf:
                raw_buf[id(root_of(raw))] = mem.new(root_of(raw).nbytes)     # held by the VJP's tuple
        for parent, raw, need in zip(v.parents, raws, v.needs):
            if parent is None or raw is None or not need:
                continue
            gi, gi_owned = route(abstract_ns, raw, g, donate, raws, parent, v.op, False)
            if gi is not raw:
                b = mem.new(gi.nbytes)                  # summed back to the input's shape, or cast
            else:
                b = g_buf if (raw is g or root_of(raw) is g) else raw_buf[id(root_of(raw))]
                mem.hold(b)
            pg = grads.get(parent)
            if pg is None:
                grads[parent] = (gi, b, gi_owned)
            elif v.op.replaces_grads:
                mem.drop(pg[1], held=True)
                grads[parent] = (gi, b, gi_owned)
            else:
                total, owned = accumulate(abstract_ns, pg[0], pg[2], gi, gi_owned, False)
                if total is pg[0]:                      # added into the existing sum
                    mem.drop(b)
                elif total is gi:                       # added into the incoming gradient
                    mem.drop(pg[1], held=True)
                    grads[parent] = (gi, b, owned)
                else:                                   # a new buffer
                    nb = mem.new(total.nbytes)
                    mem.drop(pg[1], held=True)
                    mem.drop(b)
                    grads[parent] = (total, nb, owned)
        for b in raw_buf.values():
            mem.drop(b)                                 # the VJP's tuple dies
        st.peak_during = mem.peak
        mem.drop(g_buf, held=True)
        # saved buffers whose last reader was this step, and that only the graph holds
        freed = 0
        if not keep_all and v.saved is not FREED and v.saved is not None:
            seen = set()
            for a in v.saved:
                if _is_array(a):
                    k = id(_root_array(a))
                    if k not in seen:
                        seen.add(k)
                        if last.get(k) == step_i and internal.get(k):
                            freed += sizes[k]
        mem.live -= freed
        st.frees_saved = freed
        _finish_step(st, mem, steps)
    return BackwardPlan(steps, start, mem.peak, last)


def _finish_step(st, mem, steps):
    st.peak_during = max(st.peak_during, mem.peak)
    st.live_after = mem.live
    steps.append(st)


def predict_backward_peak(loss, grad=None):
    """The peak live bytes (program-wide, as gpuad.memory counts them) that
    loss.backward(grad) will reach, from the plan, before running it.

    Accounting must be on (inside gpuad.memory.track(), or after enable()),
    since the prediction starts from the live bytes now.
    """
    if accountant.active is None:
        raise RuntimeError("gpuad.memory.predict_backward_peak: accounting is off, so the live bytes "
                           "it starts from are unknown; call it inside gpuad.memory.track() or after "
                           "gpuad.memory.enable()")
    return plan_backward(loss, grad).peak_bytes
