"""The backward planner: last uses, and the peak before it happens.

plan_backward(loss) walks the recorded graph once, in the order backward
will (decreasing creation index), and computes for every saved buffer and
every gradient the step after which nothing reads it. The engine releases
each exactly there (saved values right after their node's VJP, a gradient
once sent through all incoming edges); the plan replays the same rules on
sizes alone, to predict the peak of live bytes without allocating anything.

What the replay needs from each primitive is declared in its registry entry:
`grad_kinds(node, donate)` says which gradients are fresh buffers and which
reuse the incoming one ("g": written into it; "view": a view of it).

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
import os
import sys
from collections import Counter

import numpy as np

from ..graph import FREED, reachable
from .accounting import accountant
from .pool import INPLACE_MIN

_ndarray = np.ndarray


def no_planner():
    """GPUAD_NO_PLANNER=1: keep every saved value and gradient until backward ends."""
    return os.environ.get("GPUAD_NO_PLANNER") == "1"


def _root_array(a):
    """The last ndarray on a's base chain (what every view of the buffer points to)."""
    while isinstance(a.base, _ndarray):
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
            if isinstance(a, _ndarray):
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
    if base is not None and not isinstance(base, _ndarray):
        return getattr(base, "nbytes", r.nbytes)     # a pooled block: the block is what is held
    return r.nbytes


def plan_backward(loss, grad=None):
    """The plan for loss.backward(grad): steps, last uses, predicted peak (bytes)."""
    seed = grad
    node = loss._node
    if node is None:
        raise RuntimeError("gpuad.memory.plan_backward: the tensor does not require grad")
    order = reachable([node])
    keep_all = no_planner()
    sizes, last, internal = _saved_buffers(order)
    start = accountant.live_bytes
    live = start
    peak = live
    # gradient buffers in flight: node -> [buffer id, bytes, owned]; buffers -> holders
    holders = Counter()
    grads = {}
    bufs = {}
    next_id = [0]

    def new_buf(nbytes):
        nonlocal live, peak
        next_id[0] += 1
        bufs[next_id[0]] = nbytes
        live += nbytes
        peak = max(peak, live)
        return next_id[0]

    def drop(b, held=False):
        """One holder lets go of buffer b. With GPUAD_NO_PLANNER=1 the engine keeps
        (`held`) every node's gradient and every gradient it accumulated over."""
        nonlocal live
        if keep_all and held:
            return
        holders[b] -= 1
        if holders[b] <= 0 and b in bufs:
            live -= bufs.pop(b)

    seed_bytes = loss.data.nbytes
    if seed is None:
        b = new_buf(seed_bytes)
        grads[node] = [b, seed_bytes, True]
    else:
        grads[node] = [None, seed_bytes, False]      # the caller's buffer: already counted
    holders[grads[node][0]] += 1
    steps = []
    for step_i, v in enumerate(order):
        st = Step(step_i, v.op.name if v.op is not None else "leaf", v)
        g_buf, g_bytes, owned = grads.pop(v)
        itemsize = np.dtype(v.dtype).itemsize
        elems = g_bytes // itemsize if itemsize else 0
        donate = owned and elems >= INPLACE_MIN
        if v.op is None or (v.ref is not None):
            t = v.ref() if v.ref is not None else None
            if t is not None and v.op is None:
                if t.grad is None:
                    if owned:
                        holders[g_buf] += 1          # becomes .grad and stays
                    else:
                        b = new_buf(g_bytes)
                        holders[b] += 1
            if v.op is None:
                drop(g_buf)
                st.peak_during = peak
                st.live_after = live
                steps.append(st)
                continue
            donate = False
        inner = v.op.inner_peak
        if inner is not None:                        # a checkpoint recomputes its segment here
            peak = max(peak, live + inner(v))
        kinds = v.op.grad_kinds(v, donate) if v.op.grad_kinds is not None else None
        needs = v.needs
        outs = []
        raw_fresh = []
        dup = kinds is not None and len(kinds) == 2 and kinds[0] == kinds[1] == "g" and needs[0] and needs[1]
        for i, parent in enumerate(v.parents):
            if parent is None or not needs[i]:
                continue
            kind = kinds[i] if kinds is not None else "fresh"
            p_bytes = int(np.prod(parent.shape)) * np.dtype(parent.dtype).itemsize
            if kind in ("g", "view"):
                b, b_owned = g_buf, (kind == "g" and donate and not dup)
                holders[b] += 1
                raw = None
                raw_bytes = g_bytes if kind == "g" else p_bytes    # a view already has the input's shape
            else:
                raw_bytes = (int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                             if v.op.broadcasting else p_bytes)
                b = new_buf(raw_bytes)
                holders[b] += 1
                raw, b_owned = b, True
            outs.append((parent, b, b_owned, raw_bytes, p_bytes, raw))
        for parent, b, b_owned, raw_bytes, p_bytes, raw in outs:
            if raw_bytes != p_bytes or np.dtype(parent.dtype) != np.dtype(v.dtype):
                nb = new_buf(p_bytes)                 # unbroadcast sum or dtype cast
                holders[nb] += 1
                if raw is not None:
                    raw_fresh.append(b)               # the raw output dies with the VJP's tuple
                else:
                    drop(b)
                b, b_owned = nb, True
            pg = grads.get(parent)
            p_elems = p_bytes // max(np.dtype(parent.dtype).itemsize, 1)
            if pg is None:
                grads[parent] = [b, p_bytes, b_owned]
                if raw is not None and b == raw:
                    pass
            elif p_elems < INPLACE_MIN or (not pg[2] and not b_owned):
                nb = new_buf(p_bytes)
                holders[nb] += 1
                drop(pg[0], held=True)
                drop(b)
                grads[parent] = [nb, p_bytes, True]
            elif pg[2]:
                drop(b)                               # added into the parent's buffer in place
            else:
                drop(pg[0], held=True)                # added into ours in place
                grads[parent] = [b, p_bytes, True]
        for b in raw_fresh:
            drop(b)
        st.peak_during = peak
        drop(g_buf, held=True)
        # saved buffers whose last reader was this step, and that only the graph holds
        freed = 0
        if not keep_all and v.saved is not FREED and v.saved is not None:
            seen = set()
            for a in v.saved:
                if isinstance(a, _ndarray):
                    k = id(_root_array(a))
                    if k in seen:
                        continue
                    seen.add(k)
                    if last.get(k) == step_i and internal.get(k):
                        freed += sizes[k]
        live -= freed
        st.frees_saved = freed
        st.live_after = live
        steps.append(st)
    return BackwardPlan(steps, start, peak, last)


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
