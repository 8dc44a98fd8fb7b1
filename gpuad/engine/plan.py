"""The backward planner: the walk itself, run on abstract arrays, predicts the peak.

plan_backward(loss) makes a twin of the graph below `loss` whose saved values
and gradients are abstract arrays (shapes and dtypes, no bytes; see
gpuad/backends/abstract.py), and runs the one reverse walk (engine/walk.py)
over it, counted by an accountant of its own. Every VJP runs on the abstract
arrays, so which gradients are fresh buffers, which are views and which were
written into the incoming gradient comes from the VJP's own code; the order
of visits, the routing, donation and accumulation of each gradient, the
early finishing of hooked leaves and the moment each buffer dies come from
the walk itself. Python's reference counting frees a twin exactly where it
frees the real buffer, so the accountant's peak is the prediction: nothing
about the walk is written twice, so the two cannot drift.

A saved buffer counts as freed at its last use only when nothing outside the
graph holds it (a tensor the caller kept, a parameter): only CPython's
reference counts know that (`_held_by_graph_alone`).

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0]], requires_grad=True)
>>> y = (x * 3).tanh().sum()
>>> plan = gpuad.memory.plan_backward(y)
>>> [s.op for s in plan.steps]
['sum', 'tanh', 'multiply']
"""
import sys

import numpy as np

from ..backends.batched import BatchedArray

from ..backends.abstract import AbstractArray, abstract_ns
from ..dtypes import grad_dtype
from ..graph import FREED, Extra, new_node, reachable
from ..memory.accounting import Accountant, accountant
from ..tensor import Tensor
from .walk import run


class Step:
    """One node of the walk: its index, its op, the live bytes after it and the most
    reached while it ran."""
    __slots__ = ("index", "op", "live_after", "peak_during")

    def __init__(self, index, op, live_after, peak_during):
        self.index, self.op, self.live_after, self.peak_during = index, op, live_after, peak_during

    def __repr__(self):
        return f"<step {self.index}: {self.op} peak {self.peak_during} live after {self.live_after}>"


class BackwardPlan:
    """Steps of the reverse walk with predicted live bytes; `peak_bytes` is the prediction."""

    def __init__(self, steps, start_bytes, peak_bytes):
        self.steps = steps
        self.start_bytes = start_bytes
        self.peak_bytes = peak_bytes

    @property
    def peak_delta(self):
        return self.peak_bytes - self.start_bytes

    def __repr__(self):
        return (f"<BackwardPlan {len(self.steps)} steps, start {self.start_bytes} B, "
                f"predicted peak {self.peak_bytes} B (+{self.peak_delta})>")


class _PlanAccountant(Accountant):
    """Counts the twins as the real accountant counts arrays, and closes a Step at each
    mark (the walk marks once per node)."""

    def __init__(self, start):
        super().__init__(counts=(AbstractArray,))
        self.active = self
        self.live_bytes = self.peak_bytes = self._step_peak = start
        self.steps = []

    def alloc(self, arr, op, activation=None):
        n = super().alloc(arr, op, activation)
        self._step_peak = max(self._step_peak, self.live_bytes)
        return n

    def mark(self, op):
        self.steps.append(Step(len(self.steps), op, self.live_bytes, self._step_peak))
        self._step_peak = self.live_bytes


def plan_backward(loss, grad=None):
    """The plan for loss.backward(grad): steps and the predicted peak (bytes), from
    the live bytes now (gpuad.memory's count; 0 when accounting is off)."""
    node = loss._node
    if node is None:
        raise RuntimeError("gpuad.memory.plan_backward: the tensor does not require grad")
    start = accountant.live_bytes
    dry = _PlanAccountant(start)
    twins = _twin_graph(reachable([node]), dry)
    # (the seed list is the walk's alone: it clears it, and the seed dies on its node)
    seeds = [(AbstractArray(node.shape, grad_dtype(node.dtype)), grad is None)]
    before = accountant.active
    accountant.active = dry               # the walk counts through whichever accountant is active
    try:
        run([twins[node]], seeds, abstract_ns, False, False, None)
    finally:
        accountant.active = before
    return BackwardPlan(dry.steps, start, dry.peak_bytes)


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


# --- the twin graph --------------------------------------------------------------------

def _twin_graph(order, dry):
    """{node: its twin} for the nodes in `order` (backward order): the same op, params,
    needs, index and edges; abstract saved values; no hooks' effects."""
    alone = _held_by_graph_alone(order)
    twin_roots = {}           # id(real root) -> its abstract twin
    twins = {}
    for n in reversed(order):                    # parents first
        t = new_node(n.op, tuple(None if p is None else twins[p] for p in n.parents),
                     n.saved if n.saved is FREED or n.saved is None
                     else tuple(_twin_array(a, twin_roots, alone, dry) for a in n.saved),
                     n.params, n.needs, n.shape, n.dtype)
        t.index = n.index
        t.extra = _twin_extra(n)
        twins[n] = t
    return twins


def _is_array(a):
    """A numpy or a device (CuPy) array: what a node may save and backward frees."""
    return isinstance(a, np.ndarray) or (type(a).__module__.startswith("cupy") and hasattr(a, "shape"))


def _root_array(a):
    """The last array on a's base chain (what every view of the buffer points to)."""
    while _is_array(a.base):
        a = a.base
    return a


def _twin_array(a, twin_roots, alone, dry):
    if isinstance(a, BatchedArray):
        raise NotImplementedError("gpuad.memory.plan_backward: the graph holds values recorded under "
                                  "gpuad.vmap, which the planner does not model yet")
    if not _is_array(a):
        return a
    r = _root_array(a)
    rt = twin_roots.get(id(r))
    if rt is None:
        rt = twin_roots[id(r)] = AbstractArray(r.shape, r.dtype)
        if id(r) in alone and accountant.is_tracked(r):
            dry.adopt(rt, _block_bytes(r))        # freed when its last twin holder lets go
    return rt if a is r else AbstractArray(a.shape, a.dtype, base=rt)


def _block_bytes(r):
    base = r.base
    if base is not None and not _is_array(base):
        return getattr(base, "nbytes", r.nbytes)     # a pooled block: the block is what is held
    return r.nbytes


def _twin_extra(n):
    """The twin's tensor (for a leaf's or retain_grad's .grad) and hooks that do nothing
    (their kinds still decide when a leaf is finished)."""
    if n.extra is None:
        return None
    e = Extra()
    t = n.ref() if n.extra.ref is not None else None
    if t is not None:
        tt = Tensor._from(AbstractArray.like(t.data))
        if t.grad is not None:
            tt.grad = Tensor._from(AbstractArray.like(t.grad.data))
        e.ref = lambda: tt
    elif n.extra.ref is not None:
        e.ref = lambda: None
    if n.extra.hooks is not None:
        e.hooks = [(kind, _no_hook) for kind, _ in n.extra.hooks]
    return e


def _no_hook(t):
    return None


def _held_by_graph_alone(order):
    """id(root array) of each saved buffer that only the graph holds (so backward really
    frees it): counted from CPython's reference counts."""
    slots = {}          # id(saved array object) -> saved-tuple slots holding it
    objs = {}           # id -> saved array object
    root_of = {}        # id(saved object) -> id(root array)
    roots = {}          # id(root) -> root array
    for node in order:
        saved = node.saved
        if saved is FREED or saved is None:
            continue
        for a in saved:
            if _is_array(a):
                slots[id(a)] = slots.get(id(a), 0) + 1
                objs[id(a)] = a
                r = _root_array(a)
                roots[id(r)] = r
                root_of[id(a)] = id(r)
    a = r = saved = None       # loop variables would hold one more reference each
    views_of = {}
    for k in objs:
        if root_of[k] != k:
            views_of[root_of[k]] = views_of.get(root_of[k], 0) + 1
    alone = set()
    for k in roots:
        # references to the root: getrefcount's argument, `roots`, `objs` when it is
        # saved itself, its saved slots, and each saved view's .base
        expected = 2 + (1 if k in objs else 0) + slots.get(k, 0) + views_of.get(k, 0)
        if sys.getrefcount(roots[k]) > expected:
            continue
        # a saved view: getrefcount's argument, `objs`, its slots
        if all(sys.getrefcount(objs[vk]) <= 2 + slots[vk] for vk in objs if root_of[vk] == k and vk != k):
            alone.add(k)
    return alone
