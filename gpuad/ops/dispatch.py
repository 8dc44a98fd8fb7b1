"""apply(): run a primitive on Tensors, record its node, account its bytes.

One core, `_finish`, does the work for every op: choose the kernel (the
provider's registered one for these arrays, else the generic xp code),
turn backend errors into gpuad's, account, wrap the output, and record a
node when an input is BLACK. `apply`, `apply1` and `apply2` differ only in
how they unpack their arguments: the unary and binary forms are the
Tensor operators' hot path (about 1 us per op on 1-element arrays).

>>> import gpuad
>>> from gpuad.ops.dispatch import apply2
>>> from gpuad.ops.registry import REGISTRY
>>> x = gpuad.tensor([1.0, 2.0], requires_grad=True)
>>> y = apply2(REGISTRY["multiply"], x, 3.0)
>>> y._node.op.name, y._node.needs, y._node.saved      # x's gradient needs only y
('multiply', (True, False), (None, 3.0))
"""
import numpy as np

from ..backends import namespace_of, numpy_ns, device_of
from ..backends.devices import is_out_of_memory, out_of_memory
from ..graph import Node, _Mode
from ..memory.accounting import accountant as _acct, owner_of
from ..providers import provider_name
from ..tensor import Tensor
from .registry import BINARY

_ndarray = np.ndarray
_new = object.__new__


def apply(op, args, params):
    """Run `op` on Tensors and constants (any arity, with params)."""
    arrays, parents, first = [], [], None
    for a in args:
        if isinstance(a, Tensor):
            data = a.data
            arrays.append(data)
            parents.append(a._node)
            if first is None:
                first = data
        else:
            arrays.append(a)
            parents.append(None)
    return _finish(op, _namespace(op, first, args, arrays), arrays, parents, params or None)


def apply1(op, x):
    """apply() for one Tensor input and no params."""
    xd = x.data
    return _finish(op, numpy_ns if type(xd) is _ndarray else namespace_of(xd), (xd,), (x._node,), None)


def apply2(op, x, y):
    """apply() for two inputs (Tensors or constants) and no params."""
    if isinstance(x, Tensor):
        xd, xn = x.data, x._node
        first = xd
    else:
        xd, xn, first = x, None, None
    if isinstance(y, Tensor):
        yd, yn = y.data, y._node
        if first is None:
            first = yd
    else:
        yd, yn = y, None
    xp = numpy_ns if type(first) is _ndarray else _namespace(op, first, (x, y), (xd, yd))
    return _finish(op, xp, (xd, yd), (xn, yn), None)


def _namespace(op, first, args, arrays):
    if first is None:
        return numpy_ns
    xp = numpy_ns if type(first) is _ndarray else namespace_of(first)
    if xp is not numpy_ns:
        _check_devices(op, arrays)
    return xp


def _finish(op, xp, arrays, parents, params):
    """The one core: forward, accounting, the output Tensor, and its node when recorded."""
    out, aux = run_forward(op, xp, arrays, params)
    if _acct.active is not None:
        account_forward(_acct, op, arrays, out, aux)
    t = _new(Tensor)
    t.data = out
    t.grad = t._node = None
    # GREY unless some input is BLACK, the op has a gradient and the output is floating point
    if parents.count(None) == len(parents) or not op.differentiable or out.dtype.kind != "f":
        return t
    if not _Mode.enabled:
        if _Mode.checkpoint is None:
            return t
        parents = _Mode.checkpoint.parents(op, parents)
        if parents is None:
            return t
    needs = tuple([p is not None for p in parents])
    saved = op.saver(needs)(arrays, out)
    t._node = Node(op, tuple(parents), saved + aux if aux else saved, params, needs, out.shape, out.dtype)
    return t


def run_forward(op, xp, arrays, params):
    """(out, aux) of op's forward: the provider's kernel where one is registered for
    these arrays and accepts them, else the generic xp code."""
    try:
        out = None
        if op.kernels:
            kernel = op.kernels.get(provider_name(xp))
            if kernel is not None:
                out = kernel.forward(xp, *arrays, **params) if params else kernel.forward(xp, *arrays)
        if out is None:
            out = op.fwd(xp, *arrays, **params) if params else op.fwd(xp, *arrays)
    except Exception as e:
        err = _forward_error(op, arrays, e)
        if err is e:
            raise
        raise err from None
    aux = ()
    if op.has_aux:
        out, aux = out
    if type(out) is not _ndarray and xp is numpy_ns:
        out = np.asarray(out)  # numpy returns scalars for 0-d results; keep arrays
    return out, aux


def run_vjp(op, xp, g, saved, node, donate):
    """op's gradients: the provider's backward kernel where registered, else the VJP."""
    try:
        grads = None
        if op.kernels:
            kernel = op.kernels.get(provider_name(xp))
            if kernel is not None and kernel.backward is not None:
                grads = kernel.backward(xp, g, saved, node, donate)
        return grads if grads is not None else op.vjp(xp, g, saved, node, donate)
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory(e, op.name + " (backward)") from None
        raise


def _forward_error(op, arrays, e):
    """gpuad's message for a backend error, or the error itself."""
    if is_out_of_memory(e):
        return out_of_memory(e, op.name)
    if not isinstance(e, (ValueError, TypeError)):
        return e
    _check_devices(op, arrays)                   # a CPU and a GPU operand: say so
    if (op.kind == BINARY or op.name == "matmul") and isinstance(e, ValueError) and len(arrays) == 2:
        sx, sy = (tuple(getattr(a, "shape", ())) for a in arrays)
        if op.name == "matmul":
            return ValueError(f"gpuad.matmul: shapes {sx} and {sy} are not aligned ({e})")
        return ValueError(f"gpuad.{op.name}: shapes {sx} and {sy} do not broadcast "
                          f"(trailing dimensions must match or be 1)")
    return e


def _check_devices(op, arrays):
    devices = {device_of(a) for a in arrays if hasattr(a, "shape") and not isinstance(a, np.generic)}
    if len(devices) > 1:
        shapes = ", ".join(f"{device_of(a)}:{tuple(a.shape)}" for a in arrays if hasattr(a, "shape"))
        raise RuntimeError(f"gpuad.{op.name}: inputs live on different devices ({shapes}); "
                           f"move them with .to('cuda') or .cpu() first")


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
