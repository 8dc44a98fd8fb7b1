"""The primitive registry and apply(): dispatch, record, account.

One entry per primitive declares, side by side:

    fwd(xp, *arrays, **params) -> out            (or (out, aux) with has_aux)
    vjp(xp, g, saved, node, donate) -> one gradient (or None) per input
    save      what the VJP reads: input positions and/or "out"
    save_if   for each saved item, the input whose gradient needs it (None:
              any); mul saves y only when x needs a gradient, and so on
    grad_kinds(node, donate)  for the planner: per input, "fresh" (a new
              buffer), "g" (written into the incoming gradient) or "view" (a
              view of it); None means all fresh
    fwd_temps, vjp_temps  full-size temporaries a composite expression writes
              and reads back, for the traffic model

`saved` reaches the VJP in the order `save` declares, followed by the aux
arrays, with None where save_if pruned an item. `donate` tells the VJP it may
overwrite `g` (the engine owns it and nobody reads it afterwards), so it can
write its result there instead of allocating.

>>> import numpy as np, gpuad
>>> from gpuad.ops.registry import REGISTRY
>>> REGISTRY["tanh"].save
('out',)
>>> REGISTRY["multiply"].plan((True, False))    # x needs a grad: keep y only
(-2, 1)
"""
from operator import itemgetter

import numpy as np

from .. import graph
from ..backends import namespace_of, numpy_ns
from ..backends.devices import is_out_of_memory, out_of_memory
from ..graph import Node, _Mode

REGISTRY = {}

_OUT, _SKIP = -1, -2
_ndarray = np.ndarray


class Primitive:
    """A differentiable (or explicitly non-differentiable) operation."""

    __slots__ = ("name", "fwd", "vjp", "save", "save_if", "nin", "differentiable",
                 "has_aux", "keeps_shape", "broadcasting", "grad_kinds", "fwd_temps", "vjp_temps", "replaces_grads",
                 "inner_peak",
                 "_plans", "_savers", "_saver1", "__name__", "__wrapped__", "__dict__")

    def __init__(self, name, fwd, nin, save=(), save_if=None, differentiable=True, has_aux=False):
        if name in REGISTRY:
            raise ValueError(f"gpuad: primitive {name!r} is registered twice")
        self.name = name
        self.fwd = fwd
        self.vjp = None
        self.save = tuple(save)
        self.save_if = tuple(save_if) if save_if is not None else (None,) * len(self.save)
        if len(self.save_if) != len(self.save):
            raise ValueError(f"gpuad: {name}: save_if must match save item for item")
        self.nin = nin
        self.differentiable = differentiable
        self.has_aux = has_aux
        self._plans = {}
        self._savers = {}
        self._saver1 = None
        # Unary elementwise: the gradient has the input's shape and dtype, so the
        # engine can skip its unbroadcast and cast checks.
        self.keeps_shape = False
        # Binary elementwise: VJP outputs have the broadcast output's shape.
        self.broadcasting = False
        self.grad_kinds = None
        # A VJP that continues the accumulation of its inputs' pending gradients
        # returns totals that replace them (gpuad.checkpoint does).
        self.replaces_grads = False
        self.inner_peak = None        # planner hook: bytes the VJP itself holds (checkpoint)
        self.fwd_temps = 0
        self.vjp_temps = 0
        self.__doc__ = fwd.__doc__
        self.__name__ = name
        self.__wrapped__ = fwd
        REGISTRY[name] = self

    def defvjp(self, vjp=None, *, grad_kinds=None, vjp_temps=0):
        """Attach the VJP (a decorator right under the forward), with what the
        planner and the traffic model need to know about it."""
        def attach(fn):
            self.vjp = fn
            if grad_kinds is not None:
                self.grad_kinds = grad_kinds
            self.vjp_temps = vjp_temps
            return fn
        return attach(vjp) if vjp is not None else attach

    def plan(self, needs):
        """Saved-item positions for one pattern of needed gradients.

        An int >= 0 is an input, -1 the output, -2 an item nobody will read.
        """
        plan = self._plans.get(needs)
        if plan is None:
            plan = tuple(
                _SKIP if (cond is not None and not needs[cond]) else (_OUT if item == "out" else item)
                for item, cond in zip(self.save, self.save_if))
            self._plans[needs] = plan
        return plan

    def saver(self, needs):
        """A function (x, y, out) -> the saved tuple, for the unary and binary fast paths."""
        fn = self._savers.get(needs)
        if fn is None:
            fn = self._make_saver(needs)
            self._savers[needs] = fn
            if needs == (True,):
                self._saver1 = fn
        return fn

    def _make_saver(self, needs):
        # src is (x, y, out, None): positions 0-1 are inputs, 2 the output, 3 nothing
        ks = tuple(i if i >= 0 else (2 if i == _OUT else 3) for i in self.plan(needs))
        if not ks:
            return _save_nothing
        if len(ks) == 1:
            k = ks[0]
            return (lambda src: (src[0],)) if k == 0 else (lambda src: (src[2],)) if k == 2 else \
                (lambda src, k=k: (src[k],))
        return itemgetter(*ks)

    def __call__(self, *args, **params):
        return apply(self, args, params)

    def __repr__(self):
        return f"<primitive {self.name}>"


def _save_nothing(src):
    return ()


def primitive(name, nin=1, save=(), save_if=None, differentiable=True, has_aux=False):
    """Register the decorated forward as primitive `name`."""
    def deco(fwd):
        return Primitive(name, fwd, nin, save, save_if, differentiable, has_aux)
    return deco


def apply(op, args, params):
    """Run `op` on Tensors and constants; record a node if any input is BLACK.

    The general path (any arity, with params). Tensor operators take the
    unary and binary fast paths below, which do the same work inline.
    """
    arrays = []
    parents = []
    black = False
    xp = None
    for a in args:
        if isinstance(a, Tensor):
            data = a.data
            arrays.append(data)
            node = a._node
            parents.append(node)
            if node is not None:
                black = True
            if xp is None:
                xp = numpy_ns if type(data) is _ndarray else namespace_of(data)
        else:
            arrays.append(a)
            parents.append(None)
    if xp is None:
        xp = numpy_ns
    elif xp is not numpy_ns:
        _check_devices(op, args, arrays)
    try:
        out = op.fwd(xp, *arrays, **params) if params else op.fwd(xp, *arrays)
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory(e, op.name) from None
        raise
    if op.has_aux:
        out, aux = out
    if type(out) is not _ndarray and xp is numpy_ns:
        out = np.asarray(out)  # numpy returns scalars for 0-d results; keep arrays
    acct = _acct.active
    if acct is not None:
        account_forward(acct, op, arrays, out, aux if op.has_aux else ())
    t = _new(Tensor)
    t.data = out
    t.grad = None
    if not (black and op.differentiable and out.dtype.kind == "f"):
        t._node = None
        return t
    if not _Mode.enabled:
        if _Mode.special is None:
            t._node = None
            return t
        parents = _special_parents(op, parents)
        if parents is None:
            t._node = None
            return t
    t._node = _record(op, parents, arrays, out, params or None, aux if op.has_aux else ())
    return t


def _record(op, parents, arrays, out, params, aux):
    """The node of one recorded op: what it saves follows its plan for these needs."""
    needs = tuple([p is not None for p in parents])
    plan = op.plan(needs)
    saved = tuple([arrays[i] if i >= 0 else (out if i == _OUT else None) for i in plan]) + tuple(aux)
    return Node(op, tuple(parents), saved, params, needs, out.shape, out.dtype)


_NEEDS2 = ((False, False), (False, True), (True, False), (True, True))


def apply1(op, x):
    """apply() for one Tensor input and no params: the per-op hot path."""
    xd = x.data
    xp = numpy_ns if type(xd) is _ndarray else namespace_of(xd)
    try:
        out = op.fwd(xp, xd)
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory(e, op.name) from None
        raise
    if type(out) is not _ndarray and xp is numpy_ns:
        out = np.asarray(out)
    if _acct.active is not None:
        account_forward(_acct, op, (xd,), out, ())
    t = _new(Tensor)
    t.data = out
    t.grad = None
    xn = x._node
    if xn is None or not op.differentiable:
        t._node = None
        return t
    if not _Mode.enabled:
        if _Mode.special is None:
            t._node = None
            return t
        return _record_special(op, (x,), (xd,), out, t)
    saver = op._saver1 or op.saver(_TRUE1)
    # Node(...) inlined (as in apply2): the most frequent allocation in the library,
    # and the constructor call alone costs 0.1 us of a 1 us op.
    t._node = n = _new(Node)
    n.op = op
    n.parents = (xn,)
    n.saved = saver((xd, None, out, None))
    n.params = None
    n.needs = _TRUE1
    n.index = _next_index()
    n.shape = out.shape
    n.dtype = out.dtype
    n.grad = n.extra = None          # (owned is set by backward together with grad)
    return t


_TRUE1 = (True,)


def apply2(op, x, y):
    """apply() for two inputs (Tensors or constants) and no params."""
    if isinstance(x, Tensor):
        xd, xn = x.data, x._node
        first = xd
    else:
        xd, xn = x, None
        first = None
    if isinstance(y, Tensor):
        yd, yn = y.data, y._node
        if first is None:
            first = yd
    else:
        yd, yn = y, None
    if type(first) is _ndarray:
        xp = numpy_ns
    else:
        xp = namespace_of(first) if first is not None else numpy_ns
        if xp is not numpy_ns:
            _check_devices(op, (x, y), (xd, yd))
    try:
        out = op.fwd(xp, xd, yd)
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory(e, op.name) from None
        if not isinstance(e, (ValueError, TypeError)):
            raise
        _check_devices(op, (x, y), (xd, yd))        # a CPU and a GPU operand: say so
        if isinstance(e, TypeError):
            raise
        raise _binary_error(op, xd, yd, e) from None
    if type(out) is not _ndarray and xp is numpy_ns:
        out = np.asarray(out)
    if _acct.active is not None:
        account_forward(_acct, op, (xd, yd), out, ())
    t = _new(Tensor)
    t.data = out
    t.grad = None
    # (A BLACK input is floating point, so a differentiable binary op's output is too.)
    if (xn is None and yn is None) or not op.differentiable:
        t._node = None
        return t
    if not _Mode.enabled:
        if _Mode.special is None:
            t._node = None
            return t
        return _record_special(op, (x, y), (xd, yd), out, t)
    needs = _NEEDS2[(xn is not None) * 2 + (yn is not None)]
    saver = op._savers.get(needs) or op.saver(needs)
    t._node = n = _new(Node)
    n.op = op
    n.parents = (xn, yn)
    n.saved = saver((xd, yd, out, None))
    n.params = None
    n.needs = needs
    n.index = _next_index()
    n.shape = out.shape
    n.dtype = out.dtype
    n.grad = n.extra = None          # (owned is set by backward together with grad)
    return t


def _special_parents(op, parents):
    """Inside gpuad.checkpoint: capture the BLACK inputs (first run, returns None:
    record nothing), or map outer nodes to local leaves (recompute)."""
    sp = _Mode.special
    mapped = [None if p is None else sp.map(p) for p in parents]
    if sp.capture is not None:
        for p in mapped:
            if p is not None and p not in sp.capture:
                sp.capture.append(p)
        return None
    if not sp.record:
        return None
    for p in mapped:
        if p is not None and p.index < sp.start:
            raise RuntimeError(
                f"gpuad.checkpoint: while recomputing, {op.name} read a tensor that requires grad "
                f"(node #{p.index}) which the first run did not read: the checkpointed function is not "
                f"deterministic in which tensors it uses, so its gradients would be wrong")
    return mapped


def _record_special(op, args, arrays, out, t):
    """The unary and binary fast paths hand off here inside gpuad.checkpoint."""
    parents = _special_parents(op, [a._node if isinstance(a, Tensor) else None for a in args])
    t._node = None if parents is None else _record(op, parents, arrays, out, None, ())
    return t


def _binary_error(op, xd, yd, err):
    sx, sy = tuple(getattr(xd, "shape", ())), tuple(getattr(yd, "shape", ()))
    if op.name == "matmul":
        return ValueError(f"gpuad.matmul: shapes {sx} and {sy} are not aligned ({err})")
    return ValueError(f"gpuad.{op.name}: shapes {sx} and {sy} do not broadcast "
                      f"(trailing dimensions must match or be 1)")


def account_forward(acct, op, arrays, out, aux):
    """Traffic and allocations of one forward op (only while accounting is on).

    A view of an input (reshape, transpose, basic indexing) moves no bytes
    and allocates nothing.
    """
    read = 0
    owners = set()
    for a in arrays:
        n = getattr(a, "nbytes", None)
        if n is not None and hasattr(a, "base"):
            read += n
            owners.add(id(owner_of(a)))
    if id(owner_of(out)) in owners and not aux:
        acct.traffic(op.name, 0, 0)
    else:
        n_out = out.nbytes
        extra = op.fwd_temps * n_out
        acct.traffic(op.name, read + extra, n_out + sum(a.nbytes for a in aux) + extra)
        for a in (out,) + tuple(aux):
            if id(owner_of(a)) not in owners:
                acct.alloc(a, op.name)
    acct.mark(op.name)


def _check_devices(op, args, arrays):
    from ..backends import device_of
    devices = {device_of(a) for a in arrays if hasattr(a, "shape") and not isinstance(a, np.generic)}
    if len(devices) > 1:
        shapes = ", ".join(f"{device_of(a)}:{tuple(a.shape)}" for a in arrays if hasattr(a, "shape"))
        raise RuntimeError(f"gpuad.{op.name}: inputs live on different devices ({shapes}); "
                           f"move them with .to('cuda') or .cpu() first")


def call(op, xp, *args, **params):
    """Use a primitive inside a VJP: on arrays run its forward, on Tensors record it.

    This is how a VJP that needs more than numpy's vocabulary stays
    differentiable under create_graph=True.
    """
    if xp.name == "tensor":
        return apply(op, args, params)
    out = op.fwd(xp, *args, **params)
    return out[0] if op.has_aux else out


from ..tensor import Tensor  # noqa: E402  (Tensor's methods call into ops)
from ..memory.accounting import accountant as _acct, owner_of  # noqa: E402

_new = object.__new__
_next_index = graph._next_index
