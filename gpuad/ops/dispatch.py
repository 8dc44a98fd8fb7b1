"""apply(): run a primitive on Tensors, record its node, account its bytes.

The core is written once (`_CORE` below): choose the kernel (the provider's
registered one for these arrays, else the generic xp code), turn backend
errors into gpuad's, account, wrap the output, and record a node when an
input is BLACK. Three entry points differ only in how they unpack their
arguments, and each is the core with its unpacking in front, compiled from
the one source when this module loads:

    apply(op, args, params)   any arity, with params
    unary_entry(op)           x -> op(x): the generated function, method and operator
    binary_entry(op)          (x, y) -> op(x, y), Tensors or constants

Why not a core function the entries call: at 1-element sizes one Python
call, with its argument tuples, costs about a fifth of a whole op
(`python -m bench overhead`), and this is the path every op takes.

>>> import gpuad
>>> from gpuad.ops.dispatch import apply2
>>> from gpuad.ops.registry import REGISTRY
>>> x = gpuad.tensor([1.0, 2.0], requires_grad=True)
>>> y = apply2(REGISTRY["multiply"], x, 3.0)
>>> y._node.op.name, y._node.needs, y._node.saved      # x's gradient needs only y
('multiply', (True, False), (None, 3.0))
"""
import numpy as np

from ..backends import TRACING, namespace_of, numpy_ns, device_of, tracing_namespace
from ..backends.batched import LIVE, batched_xp
from ..dtypes import bfloat16 as _BF16, default_float, promote
from ..backends.devices import is_out_of_memory, out_of_memory
from ..generated import load
from ..precision import AMP_OPS, AUTOCAST, autocast_args
from ..graph import NEW_NODE, _NODE_MAKERS, Node, _Mode, _next_index, indented  # (used by the generated core)
from ..memory.accounting import accountant as _acct, owner_of
from ..providers import provider_name
from ..tensor import Tensor

_ndarray = np.ndarray
_new = object.__new__

def _dtypes_of(op, a, b):
    """(a, b, down): the operands as op computes on them (torch's promotion, or the
    same-dtype rule), and bfloat16 when they were raised to float32 for it."""
    if op.dtypes == "same":
        da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
        if da is not None and db is not None and da != db:
            raise TypeError(f"gpuad.{op.name}: both operands need one dtype, got {da} and {db} "
                            f"(as torch; cast one with .to() or .double()/.float())")
    else:
        a, b = promote(a, b, op.float_result)
    if _BF16 is not None and _BF16 in (getattr(a, "dtype", None), getattr(b, "dtype", None)):
        return _up(a), _up(b), _BF16
    return a, b, None


def _unary_dtype(op, x):
    """(x as op computes on it, down) for a non-float x: integers become float32 where op
    gives floats; bfloat16 computes in float32 and rounds back."""
    if x.dtype == _BF16:
        return x.astype(np.float32), _BF16
    return (x.astype(default_float) if op.float_result else x), None


def _up(a):
    return a.astype(np.float32) if getattr(a, "dtype", None) == _BF16 else a


def _round_to(dtype, out, aux):
    out = out.astype(dtype) if out.dtype.kind == "f" else out
    return out, tuple(a.astype(dtype) if getattr(a, "dtype", None) is not None and a.dtype.kind == "f" else a
                      for a in aux)


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)     # the common dtypes, tested by identity

# needs, shared for one and two inputs
_NEEDS1 = (True,)
_NEEDS2 = ((False, False), (False, True), (True, False), (True, True))

# The core, after an entry has unpacked its arguments and chosen xp. The entry
# fills in how it spells its arrays, its parents, the forward call for its
# arity (a *args call costs more here), whether no input is BLACK, and the
# needs (one bool per input: does a gradient flow there) with the saver for
# them (the unary and binary entries look theirs up when they are made, not per
# op). Tuples are built only where used: a no-grad op builds none.
_CORE = """
    try:
        if op.kernels:
            out = run_forward(op, xp, {arrays}, params)
        else:
            out = {call}
    except Exception as e:
        _raise_forward_error(op, {arrays}, e)
    aux = ()
    if op.has_aux:
        out, aux = out
    if type(out) is not _ndarray and xp is numpy_ns and getattr(out, "_xp", None) is None:
        out = np.asarray(out)               # numpy returns scalars for 0-d results; keep arrays
                                            # (a gpuad.compile Tracer met through a ufunc stays one)
    if down is not None:                    # bfloat16 in: computed in float32, rounded back
        out, aux = _round_to(down, out, aux)
    if _acct.active is not None:
        account_forward(_acct.active, op, {arrays}, out, aux)
    t = _new(Tensor)
    t.data = out
    t._grad = t._node = None
    # GREY unless some input is BLACK and the op has a gradient. (A differentiable op on
    # a BLACK, hence floating-point, input gives a floating-point output; astype to an
    # integer dtype detaches its input first.)
    if {grey} or not op.differentiable:
        return t
    parents = {parents}
    if not _Mode.enabled:
        if _Mode.checkpoint is None:
            return t
        parents = _Mode.checkpoint.parents(op, parents)
        if parents is None:
            return t
        parents = tuple(parents)
    {needs_and_saver}
    saved = saver({arrays}, out)
    if aux:
        saved = saved + aux
    shape, dtype = out.shape, out.dtype
""" + indented(NEW_NODE, 4) + """
    t._node = n
    return t
"""

_APPLY = """
def apply(op, args, params):
    \"\"\"Run `op` on Tensors and constants (any arity, with params).\"\"\"
    if AUTOCAST.active and op.name in AMP_OPS:
        args = autocast_args(op.name, tuple(args), _device_of_args(args))
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
    xp = _namespace(op, first, args, arrays)
    parents = tuple(parents)
    params = params or None
    down = None
    if _BF16 is not None and any(getattr(a, "dtype", None) == _BF16 for a in arrays):
        arrays = [_up(a) for a in arrays]
        # bfloat16 in, bfloat16 out; but an explicit dtype parameter (astype's) is the result's
        down = _BF16 if params is None or params.get("dtype") is None else None
""" + _CORE.format(arrays="arrays", call="op.fwd(xp, *arrays, **params) if params else op.fwd(xp, *arrays)",
                   grey="parents.count(None) == len(parents)", parents="parents",
                   needs_and_saver="needs = tuple([p is not None for p in parents])\n"
                                   "    saver = op._savers.get(needs) or op.saver(needs)")


def _indented(core):
    return core.replace("\n    ", "\n        ")


_UNARY = """
def unary_entry(op):
    \"\"\"The function x -> op(x): unpack one Tensor (or make one), then the core.\"\"\"
    params = None
    saver = op.saver(_NEEDS1)

    amp = op.name in AMP_OPS

    def entry(x):
        if not isinstance(x, Tensor):
            x = Tensor(x)
        if amp and AUTOCAST.active:
            x = autocast_args(op.name, (x,), x.device)[0]
        xd = x.data
        xn = x._node
        down = None
        dt = xd.dtype
        if dt is not _F32 and dt is not _F64 and dt.kind != "f":
            xd, down = _unary_dtype(op, xd)    # exp of an integer is float32 (torch); bfloat16 runs in float32
        xp = numpy_ns if type(xd) is _ndarray else namespace_of(xd)
""" + _indented(_CORE).format(arrays="(xd,)", call="op.fwd(xp, xd)", grey="xn is None", parents="(xn,)",
                              needs_and_saver="needs = _NEEDS1         # (x is BLACK, its node mapped or not)") + """
    entry.__name__ = entry.__qualname__ = op.name
    return entry
"""

_BINARY = """
def binary_entry(op):
    \"\"\"The function (x, y) -> op(x, y) for Tensors and constants, then the core.\"\"\"
    params = None
    savers = tuple(op.saver(needs) for needs in _NEEDS2)

    amp = op.name in AMP_OPS

    def entry(x, y):
        if amp and AUTOCAST.active:
            x, y = autocast_args(op.name, (x, y), _device_of_args((x, y)))
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
        # torch's promotion (gpuad/dtypes.py) where numpy's differs: mixed dtypes, numpy
        # scalars, integers meeting a float constant or a true division. The common
        # cases (one float dtype, or a float array and a Python number) skip it.
        tx, ty = type(xd), type(yd)
        down = None
        if tx is _ndarray and ty is _ndarray:
            dt = xd.dtype
            if dt is not yd.dtype or (dt is not _F32 and dt is not _F64 and dt.kind != "f"
                                      and (op.float_result or dt is _BF16)):
                xd, yd, down = _dtypes_of(op, xd, yd)
        elif tx is _ndarray and (ty is float or ty is int):
            dt = xd.dtype
            if dt is not _F32 and dt is not _F64 and dt.kind != "f" and (ty is float or op.float_result or dt is _BF16):
                xd, yd, down = _dtypes_of(op, xd, yd)
        elif ty is _ndarray and (tx is float or tx is int):
            dt = yd.dtype
            if dt is not _F32 and dt is not _F64 and dt.kind != "f" and (tx is float or op.float_result or dt is _BF16):
                xd, yd, down = _dtypes_of(op, xd, yd)
        elif first is not None:
            xd, yd, down = _dtypes_of(op, xd, yd)
        xp = numpy_ns if type(first) is _ndarray and not TRACING and not LIVE[0] else \
            _namespace(op, first, (x, y), (xd, yd))
""" + _indented(_CORE).format(arrays="(xd, yd)", call="op.fwd(xp, xd, yd)", grey="xn is None and yn is None",
                              parents="(xn, yn)",
                              needs_and_saver="k = (parents[0] is not None) * 2 + (parents[1] is not None)\n"
                                              "        needs, saver = _NEEDS2[k], savers[k]") + """
    entry.__name__ = entry.__qualname__ = op.name
    return entry
"""

for _what, _source in (("apply", _APPLY), ("unary_entry", _UNARY), ("binary_entry", _BINARY)):
    load(_source, f"dispatch {_what}", globals())    # registered with linecache: tracebacks show these lines
_NODE_MAKERS.append(globals())                      # anomaly mode numbers this module's nodes too


_entries = {}


def apply2(op, x, y):
    """op(x, y) for two inputs (Tensors or constants) and no params."""
    fn = _entries.get(op)
    if fn is None:
        fn = _entries[op] = binary_entry(op)
    return fn(x, y)


def _device_of_args(args):
    for a in args:
        if isinstance(a, Tensor):
            return a.device
    return "cpu"


def _namespace(op, first, args, arrays):
    if first is None:
        # no Tensor among the operands: the arrays decide (where(device mask, 0.0, 1.0))
        first = next((a for a in arrays if type(a) is not _ndarray and hasattr(a, "shape")
                      and not isinstance(a, np.generic)), None)
        if first is None:
            return numpy_ns
    if LIVE[0]:
        top = batched_xp(None, None, arrays)     # under vmap: the innermost level among them
        if top is not None:
            return top
    xp = numpy_ns if type(first) is _ndarray else namespace_of(first)
    if TRACING and getattr(first, "_xp", None) is None:
        # a real first operand (a numpy or device constant) with a Tracer among the others:
        # the op records into the trace
        xp = tracing_namespace(arrays) or xp
    if xp is not numpy_ns:
        _check_devices(op, arrays)
    return xp


def run_forward(op, xp, arrays, params):
    """What op's forward returns (out, or (out, aux)): the provider's kernel where one
    is registered for these arrays and accepts them, else the generic xp code.
    (The core turns its errors into gpuad's.)"""
    kernel = op.kernels.get(provider_name(xp))
    if kernel is not None:
        out = kernel.forward(xp, *arrays, **params) if params else kernel.forward(xp, *arrays)
        if out is not None:
            return out
    return op.fwd(xp, *arrays, **params) if params else op.fwd(xp, *arrays)


def _raise_forward_error(op, arrays, e):
    err = _forward_error(op, arrays, e)
    if err is e:
        raise e
    raise err from None


def _forward_error(op, arrays, e):
    """gpuad's message for a backend error, or the error itself."""
    if is_out_of_memory(e):
        return out_of_memory(e, op.name)
    if not isinstance(e, (ValueError, TypeError)):
        return e
    _check_devices(op, arrays)                   # a CPU and a GPU operand: say so
    if (op.broadcasts or op.name == "matmul") and isinstance(e, ValueError) and len(arrays) == 2:
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
            if id(owner_of(a)) not in owners and not acct.alloc(a, op.name):
                acct.reclassify(a, acct.phase != "backward")   # made as the op's workspace (counting())
    acct.mark(op.name)
