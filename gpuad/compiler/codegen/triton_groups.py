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
>>> from gpuad.compiler.codegen import triton_groups as tc
>>> g = Graph(); x = g.input((4, 3), np.float32, "x"); b = g.input((3,), np.float32, "b")
>>> y = g.add_eqn("add", (x, b), {}, (4, 3), np.float32)
>>> g.outputs = [g.add_eqn("tanh", (y,), {}, (4, 3), np.float32)]
>>> k = fuse.run(g).eqns[0].params["kernel"].value
>>> print(tc.source(k).split("@triton.jit")[1].splitlines()[1])
def fused_kernel(x_ptr, b_ptr, o0_ptr, N, x_s0, x_s1, b_s0, b_s1, BLOCK: tl.constexpr):
"""
import math
import warnings

import numpy as np

from ... import config
from ..ir import Literal, Var, padded as _padded
from ...errors import NoTritonForm
from ...xp import CAST, lookup
from . import digest, expression, import_source, write_source

MAX_ROW = 1 << 14           # a row reduction keeps one row in registers
BLOCK = 1024                # elements per program of a pointwise kernel

_TL = {"float32": "tl.float32", "float64": "tl.float64", "float16": "tl.float16", "bfloat16": "tl.bfloat16",
       "bool": "tl.int1",
       "int64": "tl.int64", "int32": "tl.int32", "int8": "tl.int8", "uint8": "tl.uint8"}
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
    """The kernel's array operands: the group's input Vars, then its array Literals (of a
    GEMM with an epilogue: the epilogue's, after the two factors, which are not listed)."""
    gemm = hasattr(k, "mm")
    ops = [(v.name, v) for v in (k.rest if gemm else k.ins)]
    for m in (k.group.members if gemm else k.members):
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
    """The Triton source of fused group `k` (a FusedKernel, or a GemmEpilogue), or raise
    Unsupported."""
    if hasattr(k, "mm"):
        return gemm_source(k)
    nd = len(k.shape)
    reduce = k.reduces and nd >= 1
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
    val = _body(k, ops, names, lines, nd, row, reduce)
    for j, o in enumerate(k.outs):
        down = f".to({_tl(o.dtype)})" if _compute(o.dtype) != _tl(o.dtype) else ""
        if reduce and o is k.members[-1].out:
            lines.append(f"    tl.store(o{j}_ptr + pid, {val[o.id]}{down})")
        else:
            lines.append(f"    tl.store(o{j}_ptr + offs, {val[o.id]}{down}, mask=mask)")
    return "\n".join(_HEAD + lines) + "\n"


_HEAD = ['"""Generated by gpuad.compile for one fused group (see gpuad/compiler/codegen/triton_groups.py)."""',
         "import triton", "import triton.language as tl",
         "from gpuad.providers import load_kernel_module", "",
         "_tanh = load_kernel_module('linear')._tanh", "", ""]
GEMM_BLOCKS = {"BM": 64, "BN": 64, "BK": 32}     # a program's output tile and reduction step
GEMM_WARPS = 8           # 16 tile elements per thread: an epilogue of a dozen values fits the registers
                         # (4 warps spilled on the GPT step's GELU epilogue: ptxas, sm_90)


def gemm_source(k):
    """The Triton source of a GEMM with its epilogue (passes/epilogue.py): each program
    forms a BM x BN tile of the product in float32 registers (tl.dot over K in steps of
    BK), rounds it to the product's dtype as numpy's matmul does, and applies the group
    to it there: the product is never stored. The first factor is read as M x K rows
    (its leading axes collapse: `launch_gemm` checks), the second through its strides
    (a transposed weight needs no copy). Bytes moved: the two factors (A once per
    column of tiles, B once per row of tiles, from L2 mostly), the epilogue's operands
    and outputs once."""
    g = k.group
    nd = len(k.shape)
    ops = _inputs(k)
    names = {id(a): n for n, a in ops}
    args = ["_a_ptr", "_b_ptr"] + [f"{n}_ptr" for n, _ in ops] + [f"o{j}_ptr" for j in range(len(k.outs))]
    args += ["M", "N", "K", "_a_sm", "_a_sk", "_b_sk", "_b_sn"] + [f"{n}_s{d}" for n, _ in ops for d in range(nd)]
    args += ["BM: tl.constexpr", "BN: tl.constexpr", "BK: tl.constexpr", "PRECISION: tl.constexpr"]
    mm = k.mm.out
    dot = "tl.dot(_a, _b, input_precision=PRECISION)" if mm.dtype == np.float32 else "tl.dot(_a, _b)"
    lines = ["@triton.jit", f"def gemm_kernel({', '.join(args)}):",
             "    pid_m = tl.program_id(0)", "    pid_n = tl.program_id(1)",
             "    _rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)",
             "    _rn = pid_n.to(tl.int64) * BN + tl.arange(0, BN)",
             "    _rk = tl.arange(0, BK)",
             "    _acc = tl.zeros((BM, BN), dtype=tl.float32)",
             "    for _k0 in range(0, K, BK):",
             "        _kk = _k0 + _rk",
             "        _a = tl.load(_a_ptr + _rm[:, None] * _a_sm + _kk[None, :] * _a_sk, "
             "mask=(_rm[:, None] < M) & (_kk[None, :] < K), other=0.0)",
             "        _b = tl.load(_b_ptr + _kk[:, None] * _b_sk + _rn[None, :] * _b_sn, "
             "mask=(_kk[:, None] < K) & (_rn[None, :] < N), other=0.0)",
             f"        _acc += {dot}",
             "    mask = (_rm[:, None] < M) & (_rn[None, :] < N)",
             "    offs = _rm[:, None] * N + _rn[None, :]",
             "    _mm = _acc" if _tl(mm.dtype) == "tl.float32" else
             f"    _mm = _acc.to({_tl(mm.dtype)}).to({_compute(mm.dtype)})"]
    # (names made here start with _: the trace's Vars never do)
    val = _body(g, ops, names, lines, nd, val={mm.id: "_mm"})
    for j, o in enumerate(k.outs):
        down = f".to({_tl(o.dtype)})" if _compute(o.dtype) != _tl(o.dtype) else ""
        lines.append(f"    tl.store(o{j}_ptr + offs, {val[o.id]}{down}, mask=mask)")
    return "\n".join(_HEAD + lines) + "\n"


def _body(k, ops, names, lines, nd, row=0, reduce=False, val=None):
    """Lines loading each operand at the output coordinates of `offs` (under `mask`) and
    computing the group's members: {var id: the name holding its value}. `val` may hold
    values made before (a GEMM's product)."""
    val = {} if val is None else val
    # coordinates of each output element, from the static shape (last axis fastest)
    rest = "offs"
    for d in range(nd - 1, -1, -1):
        if d == 0:
            lines.append(f"    i0 = {rest}")
        else:
            lines.append(f"    i{d} = {rest} % {k.shape[d]}")
            lines.append(f"    q{d} = {rest} // {k.shape[d]}")
            rest = f"q{d}"
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
        d = lookup(m.prim)
        if m is k.members[-1] and reduce:
            # the row reduction closing the group, over masked-out lanes set to its start
            masked = f"tl.where(mask, {operand(m.args[0])}, {d.fill})"
            expr = expression(m.prim, "triton", [masked], n=row)
        elif d is not None and d.triton == CAST:
            expr = operand(m.args[0])
        else:
            ops = [operand(x) for x in m.args]
            if d is lookup("divide"):      # numpy divides in the result's dtype
                ops = [f"({x}).to({dt})" if isinstance(y, Var) else x for x, y in zip(ops, m.args)]
            expr = expression(m.prim, "triton", ops)
        val[o.id] = f"t{o.id}"
        lines.append(f"    t{o.id} = ({expr}).to({dt})")
    return val


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
    key = digest(text)
    fn = _loaded.get(key)
    if fn is None:
        mod = import_source(module_path(text), f"gpuad_fused_{key}")
        fn = _loaded[key] = mod.gemm_kernel if hasattr(k, "mm") else mod.fused_kernel
    return fn


def module_path(text):
    """Where the source lives on disk (written there once, atomically)."""
    return write_source(text, cache_dir(), "fused")


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
    from ...backends.triton_backend import nonnegative_strides
    arrays = [nonnegative_strides(a) for a in arrays]    # a flipped view: read through a copy
    strides = []
    for (_, a), arr in zip(ops, arrays):
        # element strides along the group's axes: 0 where the operand is broadcast
        padded = _padded(_shape(a), nd)
        own = (0,) * (nd - arr.ndim) + tuple(s // arr.itemsize for s in arr.strides)
        strides += [own[d] if padded[d] == k.shape[d] and padded[d] != 1 else 0 for d in range(nd)]
    wrap = torch_like or (lambda a: a)
    n = math.prod(k.shape)
    reduce = k.reduces
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


def rows(a):
    """(row stride, column stride) of `a` read as a matrix of its last axis, when its
    leading axes collapse into rows without a copy; else None."""
    if a.ndim < 2:
        return None
    st = [x // a.itemsize for x in a.strides]
    for i in range(a.ndim - 2):
        if a.shape[i] != 1 and st[i] != st[i + 1] * a.shape[i + 1]:
            return None
    return st[-2], st[-1]


def launch_gemm(k, inputs, outs, torch_like=None):
    """Run a GemmEpilogue's kernel: inputs (a, b, *the epilogue's), outs contiguous."""
    from ...providers import triton_input_precision
    fn, ops = _cached(k)
    a, b, rest = inputs[0], inputs[1], list(inputs[2:])
    nd = len(k.shape)
    arrays = rest + [x.value if hasattr(x.value, "strides") else np.asarray(x.value) for _, x in ops[len(k.rest):]]
    from ...backends.triton_backend import nonnegative_strides
    a, b = nonnegative_strides(a), nonnegative_strides(b)
    arrays = [nonnegative_strides(x) for x in arrays]
    strides = []
    for (_, x), arr in zip(ops, arrays):
        padded = _padded(_shape(x), nd)
        own = (0,) * (nd - arr.ndim) + tuple(st // arr.itemsize for st in arr.strides)
        strides += [own[d] if padded[d] == k.shape[d] and padded[d] != 1 else 0 for d in range(nd)]
    a_sm, a_sk = rows(a)
    b_sk, b_sn = (st // b.itemsize for st in b.strides)
    n_cols = k.shape[-1]
    m_rows = math.prod(k.shape) // max(n_cols, 1)
    wrap = torch_like or (lambda x: x)
    grid = (max(1, -(-m_rows // GEMM_BLOCKS["BM"])), max(1, -(-n_cols // GEMM_BLOCKS["BN"])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        fn[grid](wrap(a), wrap(b), *[wrap(x) for x in arrays], *[wrap(o) for o in outs], m_rows, n_cols,
                 a.shape[-1], a_sm, a_sk, b_sk, b_sn, *strides, PRECISION=triton_input_precision(), num_warps=GEMM_WARPS, **GEMM_BLOCKS)
    return outs


def runner(xp):
    """run_group for codegen: each fused group as its Triton kernel on xp's arrays
    (numpy arrays run in the interpreter; CuPy arrays on the device), or op by op
    on xp when a member has no Triton form."""
    from ...backends.triton_backend import triton_arg
    from ...providers import triton_usable
    # on a GPU, Triton must launch on CuPy's current stream (as the eager kernels do);
    # where its driver cannot be brought up, every group runs op by op on CuPy
    usable = xp.module is np or triton_usable()

    def make(k):
        if not usable or _cached(k)[0] is None:
            return k.unfused(xp)

        gemm = hasattr(k, "mm")
        fallback = k.unfused(xp) if gemm else None

        def run(*inputs, outs=None):
            if gemm and rows(inputs[0]) is None:
                return fallback(*inputs, outs=outs)      # a first factor whose rows need a copy
            outs = [o if o is not None else xp.module.empty(v.shape, v.dtype)
                    for o, v in zip(outs or (None,) * len(k.outs), k.outs)]
            (launch_gemm if gemm else launch)(k, inputs, outs, torch_like=triton_arg)
            return tuple(outs)
        return run
    return make
