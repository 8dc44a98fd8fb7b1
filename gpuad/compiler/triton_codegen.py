"""Triton code generation for fused groups: one @triton.jit kernel per group.

The numpy executor streams a group through L2 in chunks. On a GPU a group is one
kernel, with the same member list. Each program covers BLOCK output elements.
Their coordinates come from the flat index and the group's static shape. Each
input is loaded through its own element strides (0 along broadcast axes, so
views and broadcasts need no copy), the members are computed in registers,
and the group's outputs are stored contiguously. A group that ends in a
reduction over the last axis runs one program per row instead, with the whole
row in one block (rows up to MAX_ROW elements), and reduces it with tl.sum or
tl.max.

Bytes moved per group: each input once, each output once. That is what the
traffic model counts for a fused group.

Generated source is readable, named by a hash of itself, written once to the
kernel cache (GPUAD_CACHE_DIR, default ~/.cache/gpuad/triton), and imported
from there. Triton's JIT reads a kernel's source file. `source(k)` returns
the text; `kernel(k)` returns the JITFunction (None when a member has no
Triton form: the group then stays on the numpy/CuPy path); `launch` runs it
(in the interpreter, on torch CPU tensors that share numpy's memory).

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import fuse
>>> from gpuad.compiler import triton_codegen as tc
>>> g = Graph(); x = g.input((4, 3), np.float32, "x"); b = g.input((3,), np.float32, "b")
>>> y = g.add_eqn("add", (x, b), {}, (4, 3), np.float32)
>>> g.outputs = [g.add_eqn("tanh", (y,), {}, (4, 3), np.float32)]
>>> k = fuse.run(g).eqns[0].params["kernel"].value
>>> print(tc.source(k).split("@triton.jit")[1].splitlines()[1])
def fused_kernel(x_ptr, b_ptr, o0_ptr, N, x_s0, x_s1, b_s0, b_s1, BLOCK: tl.constexpr):
"""
import hashlib
import importlib.util
import math
import os
import sys
import warnings

import numpy as np

from .. import config
from .ir import Literal, Var
from .passes.fuse import _padded
from ..errors import NoTritonForm

MAX_ROW = 1 << 14           # a row reduction keeps one row in registers
BLOCK = 1024                # elements per program of a pointwise kernel

_TL = {"float32": "tl.float32", "float64": "tl.float64", "float16": "tl.float16", "bfloat16": "tl.bfloat16",
       "bool": "tl.int1",
       "int64": "tl.int64", "int32": "tl.int32", "int8": "tl.int8", "uint8": "tl.uint8"}
_BINARY = {"add": "({} + {})", "subtract": "({} - {})", "multiply": "({} * {})", "divide": "({} / {})",
           "true_divide": "({} / {})", "greater": "({} > {})", "less": "({} < {})",
           "greater_equal": "({} >= {})", "less_equal": "({} <= {})", "equal": "({} == {})",
           "not_equal": "({} != {})", "logical_and": "({} & {})", "logical_or": "({} | {})",
           "maximum": "tl.maximum({}, {}, propagate_nan=tl.PropagateNan.ALL)",
           "minimum": "tl.minimum({}, {}, propagate_nan=tl.PropagateNan.ALL)"}
_UNARY = {"negative": "(-{})", "absolute": "tl.abs({})", "exp": "tl.exp({})", "log": "tl.log({})",
          "sqrt": "tl.sqrt({})", "sin": "tl.sin({})", "cos": "tl.cos({})", "tanh": "_tanh({})",
          "erf": "tl.math.erf({})", "square": "({0} * {0})", "reciprocal": "(1.0 / {})",
          "logical_not": "({} == 0)"}
_REDUCE = {"sum": "tl.sum({}, axis=0)", "mean": "(tl.sum({}, axis=0) / {n})", "max": "tl.max({}, axis=0)",
           "amax": "tl.max({}, axis=0)", "min": "tl.min({}, axis=0)", "amin": "tl.min({}, axis=0)"}
_FILL = {"sum": "0.0", "mean": "0.0", "max": "float('-inf')", "amax": "float('-inf')",
         "min": "float('inf')", "amin": "float('inf')"}


Unsupported = NoTritonForm     # a member with no Triton form here (log1p, power, ...): the group stays on numpy


def _tl(dtype):
    name = np.dtype(dtype).name
    if name not in _TL:
        raise Unsupported(f"dtype {name}")
    return _TL[name]


def _compute(dtype):
    """The type a member computes in: 16-bit floats in fp32 (Triton's exp, log, sqrt,
    sin, cos, erf take fp32 or fp64 only), rounded to 16 bits when stored."""
    t = _tl(dtype)
    return "tl.float32" if t in ("tl.float16", "tl.bfloat16") else t


def _inputs(k):
    """The kernel's array operands: the group's input Vars, then its array Literals."""
    ops = [(v.name, v) for v in k.ins]
    for m in k.members:
        for a in m.args:
            if isinstance(a, Literal) and np.size(a.value) > 1 and all(a is not b for _, b in ops):
                ops.append((f"c{len(ops)}", a))
    return ops


def _shape(a):
    return tuple(a.shape) if isinstance(a, Var) else tuple(np.shape(a.value))


def _dtype(a):
    return a.dtype if isinstance(a, Var) else np.asarray(a.value).dtype if not hasattr(a.value, "dtype") else \
        a.value.dtype


def source(k):
    """The Triton source of fused group `k` (a FusedKernel), or raise Unsupported."""
    nd = len(k.shape)
    reduce = k.members[-1].prim in _REDUCE and nd >= 1
    ops = _inputs(k)
    names = {id(a): n for n, a in ops}
    row = k.shape[-1] if reduce else 0
    if reduce and row > MAX_ROW:
        raise Unsupported(f"a row of {row} elements")
    args = [f"{n}_ptr" for n, _ in ops] + [f"o{j}_ptr" for j in range(len(k.outs))] + ["N"]
    args += [f"{n}_s{d}" for n, _ in ops for d in range(nd)]
    block = "BLOCK: tl.constexpr"
    lines = ["@triton.jit", f"def fused_kernel({', '.join(args)}, {block}):", "    pid = tl.program_id(0)"]
    if reduce:
        lines += ["    cols = tl.arange(0, BLOCK)", f"    mask = cols < {row}",
                  f"    offs = pid.to(tl.int64) * {row} + cols"]
    else:
        lines += ["    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)", "    mask = offs < N"]
    # coordinates of each output element, from the static shape (last axis fastest)
    rest = "offs"
    for d in range(nd - 1, -1, -1):
        if d == 0:
            lines.append(f"    i0 = {rest}")
        else:
            lines.append(f"    i{d} = {rest} % {k.shape[d]}")
            lines.append(f"    q{d} = {rest} // {k.shape[d]}")
            rest = f"q{d}"
    val = {}
    for n, a in ops:
        index = " + ".join(f"i{d} * {n}_s{d}" for d in range(nd)) or "offs * 0"
        up = ".to(tl.float32)" if _tl(_dtype(a)) in ("tl.float16", "tl.bfloat16") else ""
        lines.append(f"    {n} = tl.load({n}_ptr + {index}, mask=mask){up}")
        if isinstance(a, Var):
            val[a.id] = n
    for m in k.members:
        o = m.out
        dt = _compute(o.dtype)

        def operand(a):
            if isinstance(a, Var):
                return val[a.id]
            if isinstance(a, Literal):
                if np.size(a.value) > 1:
                    return names[id(a)]
                x = np.asarray(a.value).reshape(-1)[0]
                return _scalar(x)
            if isinstance(a, (bool, int, float)) and not (isinstance(a, float) and not math.isfinite(a)):
                return _scalar(a)
            raise Unsupported(f"operand {a!r} of {m.prim}")
        if not any(isinstance(a, Var) or (isinstance(a, Literal) and np.size(a.value) > 1) for a in m.args):
            raise Unsupported(f"{m.prim} of constants only")
        if m.prim in _REDUCE and m is k.members[-1] and reduce:
            src = operand(m.args[0])
            masked = f"tl.where(mask, {src}, {_FILL[m.prim]})"
            expr = _REDUCE[m.prim].format(masked, n=row)
        elif m.prim in _BINARY and len(m.args) == 2:
            a, b = (operand(x) for x in m.args)
            if m.prim in ("divide", "true_divide"):      # numpy divides in the result's dtype
                a, b = (f"({x}).to({dt})" if isinstance(y, Var) else x for x, y in ((a, m.args[0]), (b, m.args[1])))
            expr = _BINARY[m.prim].format(a, b)
        elif m.prim in _UNARY and len(m.args) == 1:
            expr = _UNARY[m.prim].format(operand(m.args[0]))
        elif m.prim == "where" and len(m.args) == 3:
            c, a, b = (operand(x) for x in m.args)
            expr = f"tl.where({c} != 0, {a}, {b})"
        elif m.prim == "astype":
            expr = operand(m.args[0])
        else:
            raise Unsupported(m.prim)
        val[o.id] = f"t{o.id}"
        lines.append(f"    t{o.id} = ({expr}).to({dt})")
    for j, o in enumerate(k.outs):
        down = f".to({_tl(o.dtype)})" if _compute(o.dtype) != _tl(o.dtype) else ""
        if reduce and o is k.members[-1].out:
            lines.append(f"    tl.store(o{j}_ptr + pid, {val[o.id]}{down})")
        else:
            lines.append(f"    tl.store(o{j}_ptr + offs, {val[o.id]}{down}, mask=mask)")
    head = ['"""Generated by gpuad.compile for one fused group (see gpuad/compiler/triton_codegen.py)."""',
            "import triton", "import triton.language as tl",
            "from gpuad.providers import load_kernel_module", "",
            "_tanh = load_kernel_module('linear')._tanh", "", ""]
    return "\n".join(head + lines) + "\n"


def _scalar(x):
    if isinstance(x, (bool, np.bool_)):
        return "1" if x else "0"
    x = float(x)
    if not math.isfinite(x):
        return "float('inf')" if x > 0 else ("float('-inf')" if x < 0 else "float('nan')")
    return repr(x)


def cache_dir():
    return config.cache_dir()


_loaded = {}


def kernel(k):
    """The JITFunction for group `k` (cached on disk and in memory), or None when a
    member has no Triton form here."""
    try:
        text = source(k)
    except Unsupported:
        return None
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    fn = _loaded.get(digest)
    if fn is None:
        path = module_path(text, digest)
        name = f"gpuad_fused_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        fn = _loaded[digest] = mod.fused_kernel
    return fn


def module_path(text, digest=None):
    """Where the source lives on disk (written there once, atomically)."""
    digest = digest or hashlib.sha1(text.encode()).hexdigest()[:16]
    d = cache_dir()
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"fused_{digest}.py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def _cached(k):
    """(kernel, operands) of group k, made once per group (not at every launch: the
    source and its hash cost more than the launch itself)."""
    c = k.__dict__.get("_triton")
    if c is None:
        c = k.__dict__["_triton"] = (kernel(k), _inputs(k))
    return c


def launch(k, inputs, outs, torch_like=None):
    """Run group k's Triton kernel: inputs are the group's input arrays in order
    (numpy arrays under the interpreter, CuPy arrays on a device), outs its output
    arrays (contiguous). `torch_like` wraps an array for Triton (torch.from_numpy in
    the interpreter)."""
    fn, ops = _cached(k)
    if fn is None:
        raise Unsupported("this group has no Triton kernel")
    nd = len(k.shape)
    # array literals: on a device replay they were put there at build (a host array here
    # would be a pointer Triton cannot read)
    arrays = list(inputs) + [a.value if hasattr(a.value, "strides") else np.asarray(a.value)
                             for _, a in ops[len(k.ins):]]
    strides = []
    for (_, a), arr in zip(ops, arrays):
        # element strides along the group's axes: 0 where the operand is broadcast
        padded = _padded(_shape(a), nd)
        own = (0,) * (nd - arr.ndim) + tuple(s // arr.itemsize for s in arr.strides)
        strides += [own[d] if padded[d] == k.shape[d] and padded[d] != 1 else 0 for d in range(nd)]
    wrap = torch_like or (lambda a: a)
    n = math.prod(k.shape)
    reduce = k.members[-1].prim in _REDUCE
    if reduce:
        grid = (n // k.shape[-1],)
        block = max(16, 1 << (k.shape[-1] - 1).bit_length())
    else:
        grid = (max(1, -(-n // BLOCK)),)
        block = BLOCK
    with warnings.catch_warnings():
        # the interpreter computes masked-off lanes too (a division of garbage there is
        # discarded), and torch warns on wrapping a read-only broadcast view it only reads
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        fn[grid](*[wrap(a) for a in arrays], *[wrap(o) for o in outs], n, *strides, BLOCK=block)
    return outs


def runner(xp):
    """run_group for codegen: each fused group as its Triton kernel on xp's arrays
    (numpy arrays run in the interpreter; CuPy arrays on the device), or op by op
    on xp when a member has no Triton form."""
    from ..backends.triton_backend import triton_arg
    from ..providers import triton_usable
    # on a GPU, Triton must launch on CuPy's current stream (as the eager kernels do);
    # where its driver cannot be brought up, every group runs op by op on CuPy
    usable = xp.module is np or triton_usable()

    def make(k):
        if not usable or _cached(k)[0] is None:
            return k.unfused(xp)

        def run(*inputs, outs=None):
            outs = [o if o is not None else xp.module.empty(v.shape, v.dtype)
                    for o, v in zip(outs or (None,) * len(k.outs), k.outs)]
            launch(k, inputs, outs, torch_like=triton_arg)
            return tuple(outs)
        return run
    return make
