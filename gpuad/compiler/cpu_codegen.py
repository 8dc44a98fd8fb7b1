"""CPU code generation for fused groups: one Numba (LLVM) kernel per group, parallel
over rows (or over the flat index), every member computed in registers per element.

The numpy executor streams a group through L2 in chunks, one numpy call per member
per chunk: each member still reads and writes its chunk, and each call costs about
a microsecond. A generated kernel makes one pass: each input read once, each output
written once, no scratch, both cores.

Bitwise numpy. A member is generated only where its float operations are numpy's to
the bit: + - * / with the same operand order and no contraction (no fast-math),
negative, abs, sqrt (IEEE), comparisons, where, logical ops, casts between floats
(and from bools and ints to floats), maximum and minimum with numpy's NaN and
signed-zero rules, and float32 erf through the same table (kernels/cpu_math.py).
Each operand is computed in the member's dtype, as numpy's promotion gives it (a
Python number takes the array's dtype). A group with any other member (exp, log,
tanh, power: libm's and numpy's SIMD versions differ in the last bit) keeps the numpy
executor, as does a group that reduces, and one smaller than MIN_ELEMENTS (the kernel's
launch costs more than the chunk loop there).

Operands: each input is the group's shape (read at the flat index), a row broadcast
along the leading axes (a bias: index % inner), a column (one value per row: index //
inner), or one element. Anything else, or an array that is not C-contiguous at run
time, runs the numpy kernel instead.

Sources are named by their hash and written under GPUAD_CACHE_DIR/cpu, and Numba
caches the machine code beside them: groups with the same members and shapes share
one kernel (the layers of a network), and a second process compiles nothing.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import fuse
>>> from gpuad.compiler import cpu_codegen
>>> g = Graph(); x = g.input((64, 512), np.float32, "x"); b = g.input((512,), np.float32, "b")
>>> y = g.add_eqn("add", (x, b), {}, (64, 512), np.float32)
>>> g.outputs = [g.add_eqn("maximum", (y, 0), {}, (64, 512), np.float32)]
>>> k = fuse.run(g).eqns[0].params["kernel"].value
>>> print(cpu_codegen.source(k).split("def kernel")[1].splitlines()[0])
(a0, a1, o0, erf_c0, erf_c1, erf_c2, erf_c3, erf_last):
"""
import hashlib
import importlib.util
import math
import os
import sys

import numpy as np

from .. import config
from ..errors import NoTritonForm
from .ir import Literal, Var

MIN_ELEMENTS = 1 << 14          # a smaller group keeps the numpy executor
PARALLEL_MIN = 1 << 18          # elements: a smaller group's kernel runs on one thread (waking the
                                # sleeping pool costs 50-100 us: more than 32K elements' work)

Unsupported = NoTritonForm      # (the same signal as triton_codegen's: this group keeps numpy)

_FLOATS = {"float32", "float64"}
_ARITH = {"add": "({} + {})", "subtract": "({} - {})", "multiply": "({} * {})", "divide": "({} / {})",
          "true_divide": "({} / {})"}
_COMPARE = {"greater": ">", "less": "<", "greater_equal": ">=", "less_equal": "<=", "equal": "==",
            "not_equal": "!="}


def _index(v, shape):
    """How input v is read at the group's flat index i: all of it ("i"), a block of trailing
    axes broadcast along the leading ones (a bias: "i % m"), leading axes broadcast along
    trailing ones (a row's statistic: "i // m"), or one element ("0")."""
    nd = len(shape)
    s = (1,) * (nd - len(v.shape)) + tuple(v.shape)
    if s == tuple(shape):
        return "i"
    if math.prod(s) == 1:
        return "0"
    for cut in range(1, nd):
        if s[:cut] == (1,) * cut and s[cut:] == tuple(shape[cut:]):
            return f"i % {math.prod(shape[cut:])}"
        if s[:cut] == tuple(shape[:cut]) and s[cut:] == (1,) * (nd - cut):
            return f"i // {math.prod(shape[cut:])}"
    raise Unsupported(f"an operand of shape {v.shape} in a group of shape {shape}")


def _cast(dt):
    return f"np.{np.dtype(dt).name}"


def _scalar(x, dt):
    """A Python or numpy number as a constant of dtype dt (numpy's weak-scalar rule)."""
    dt = np.dtype(dt)
    if isinstance(x, (bool, np.bool_)):
        return "True" if x else "False" if dt.kind == "b" else f"{_cast(dt)}({int(bool(x))})"
    if dt.kind == "b":
        raise Unsupported("a number where a bool is wanted")
    v = dt.type(x)
    if dt.kind == "f" and not math.isfinite(float(v)):
        return f"{_cast(dt)}(np.{'nan' if v != v else 'inf'})" if v != v or v > 0 else f"{_cast(dt)}(-np.inf)"
    return f"{_cast(dt)}({float(v)!r})" if dt.kind == "f" else f"{_cast(dt)}({int(v)})"


def source(k):
    """The Python source of group k's kernel (a FusedKernel), or raise Unsupported."""
    if not k.shape:
        raise Unsupported("a 0-d group")
    shape = tuple(k.shape)
    inner = shape[-1]
    reads = [_index(v, shape) for v in k.ins]
    names = {v.id: f"x{j}" for j, v in enumerate(k.ins)}
    body = []
    closing = k.members[-1] if k.reduces else None
    if closing is not None and (closing.prim not in ("sum", "mean") or closing.args[0].dtype.name not in _FLOATS
                                or closing.out.dtype != closing.args[0].dtype):
        raise Unsupported(f"a row {closing.prim} of {closing.args[0].dtype}")
    for m in (k.members[:-1] if closing is not None else k.members):
        dt = m.out.dtype
        if dt.name not in _FLOATS and dt.kind != "b":
            raise Unsupported(f"{m.prim} gives {dt}")

        def operand(a, want):
            if isinstance(a, Var):
                if a.dtype == want:
                    return names[a.id]
                if want.kind == "f" and a.dtype.kind in "biuf" and (a.dtype.kind != "f" or a.dtype.itemsize
                                                                    < want.itemsize):
                    return f"{_cast(want)}({names[a.id]})"         # numpy's promotion, exact
                raise Unsupported(f"{m.prim} of {a.dtype} as {want}")
            if isinstance(a, Literal):
                v = np.asarray(a.value)
                if v.size != 1 or v.dtype != want:
                    raise Unsupported(f"a constant of {v.dtype} in {m.prim}")
                return _scalar(v.reshape(-1)[0], want)
            if isinstance(a, (bool, int, float)) and not isinstance(a, np.ndarray):
                return _scalar(a, want)
            raise Unsupported(f"operand {a!r} of {m.prim}")

        def common():
            dts = {a.dtype for a in m.args if isinstance(a, Var)}
            if len(dts) != 1:
                raise Unsupported(f"{m.prim} of {sorted(map(str, dts))}")
            return dts.pop()
        p, args = m.prim, m.args
        if m.params and not (p == "astype" and not m.params):
            raise Unsupported(f"{p} with {sorted(m.params)}")
        if p in _ARITH and len(args) == 2:
            expr = _ARITH[p].format(*(operand(a, dt) for a in args))
        elif p in _COMPARE and len(args) == 2:
            ct = common()
            a, b = (operand(x, ct) for x in args)
            expr = f"({a} {_COMPARE[p]} {b})"
        elif p in ("maximum", "minimum") and len(args) == 2:
            # numpy's: a NaN in either gives NaN; equal values (signed zeros too) give b
            a, b = (operand(x, dt) for x in args)
            op = ">" if p == "maximum" else "<"
            expr = f"_pick({a}, {b}, {a} {op} {b})"
        elif p == "negative" and len(args) == 1:
            expr = f"(-{operand(args[0], dt)})"
        elif p == "absolute" and len(args) == 1:
            expr = f"abs({operand(args[0], dt)})"
        elif p == "square" and len(args) == 1:
            x = operand(args[0], dt)
            expr = f"({x} * {x})"
        elif p == "sqrt" and len(args) == 1 and dt.kind == "f":
            expr = f"np.sqrt({operand(args[0], dt)})"
        elif p == "where" and len(args) == 3:
            c = operand(args[0], np.dtype(bool))
            a, b = operand(args[1], dt), operand(args[2], dt)
            expr = f"({a} if {c} else {b})"
        elif p in ("logical_and", "logical_or") and len(args) == 2:
            a, b = (operand(x, np.dtype(bool)) for x in args)
            expr = f"({a} {'and' if p == 'logical_and' else 'or'} {b})"
        elif p == "logical_not" and len(args) == 1:
            expr = f"(not {operand(args[0], np.dtype(bool))})"
        elif p == "astype" and len(args) == 2 and dt.kind == "f" and isinstance(args[0], Var) and \
                args[0].dtype.kind in "biuf":
            expr = f"{_cast(dt)}({names[args[0].id]})"          # rounds to nearest, as numpy's cast
        elif p == "erf" and len(args) == 1 and dt == np.float32:
            expr = f"_erf({operand(args[0], dt)}, erf_c0, erf_c1, erf_c2, erf_c3, erf_last)"
        else:
            raise Unsupported(p)
        names[m.out.id] = f"t{len(body)}"
        body.append(f"t{len(body)} = {_cast(dt) if dt.kind == 'f' else ''}({expr})")
    outs = {o.id: j for j, o in enumerate(k.outs)}
    # an erf costs about as much as eight arithmetic members: such a group pays for the
    # pool's wake-up at fewer elements
    parallel = math.prod(shape) * (1 + 8 * sum(m.prim == "erf" for m in k.members)) >= PARALLEL_MIN
    args = [f"a{j}" for j in range(len(k.ins))] + [f"o{j}" for j in range(len(k.outs))]
    lines = [f"def kernel({', '.join(args)}, erf_c0, erf_c1, erf_c2, erf_c3, erf_last):"]
    loads = [f"x{j} = a{j}[{r}]" for j, r in enumerate(reads)]
    stores = [f"o{outs[o.id]}[i] = {names[o.id]}" for o in k.outs if o is not (closing and closing.out)]
    if closing is None:
        lines += [f"    for i in prange({math.prod(shape)}):"]
        lines += [f"        {line}" for line in loads + body + stores]
    else:
        # each row's values into a row buffer, then numpy's own pairwise sum over it (the
        # same additions in the same order: bitwise numpy's row sum)
        dt = closing.out.dtype
        alloc = f"row = np.empty({inner}, {_cast(dt)})"      # per row in parallel (a thread's own)
        lines += [f"    {alloc}", f"    for r in prange({math.prod(shape[:-1])}):"] if not parallel else \
            [f"    for r in prange({math.prod(shape[:-1])}):", f"        {alloc}"]
        lines += [f"        for j in range({inner}):", f"            i = r * {inner} + j"]
        lines += [f"            {line}" for line in loads + body + stores]
        lines += [f"            row[j] = {names[closing.args[0].id]}", f"        s = _pairwise(row, 0, {inner}, {_cast(dt)}(0.0))"]
        if closing.prim == "mean":
            lines += [f"        s = s / {_cast(dt)}({inner})"]
        lines += [f"        o{outs[closing.out.id]}[r] = s"]
    head = ['"""Generated by gpuad.compile for one fused group (gpuad/compiler/cpu_codegen.py)."""',
            "import numpy as np", "from numba import njit, prange", "from gpuad.providers import load_kernel_module",
            "", "_erf = load_kernel_module('cpu_math').erf32_scalar", "", "",
            "_pairwise = load_kernel_module('cpu_math').pairwise_sum", "", "",
            "@njit(inline='always')", "def _pick(a, b, first):",
            "    return a if first or a != a else b", "", "",
            f"@njit(parallel={parallel}, cache=True, error_model='numpy')"]   # x/0 is inf, as numpy's
    return "\n".join(head + lines) + "\n"


_loaded = {}
TIER_AFTER = 2          # calls a group runs on the numpy executor before its kernel is compiled


def _path(text):
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    return digest, os.path.join(config.cpu_cache_dir(), f"group_{digest}.py")


def kernel(k, text=None):
    """The compiled kernel of group k (a Numba dispatcher), or None where the group keeps
    the numpy executor (a member, an operand or its size; or the CPU kernels are off)."""
    from ..backends import cpu_kernels
    if text is None:
        if math.prod(k.shape) < MIN_ELEMENTS or not cpu_kernels.enabled():
            return None
        try:
            text = source(k)
        except Unsupported:
            return None
    digest, path = _path(text)
    fn = _loaded.get(digest)
    if fn is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        name = f"gpuad_cpu_group_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        fn = _loaded[digest] = mod.kernel
    return fn


def runner(k, now=False):
    """How codegen runs group k: its generated kernel on C-contiguous operands, else (a
    layout the kernel does not take, or no kernel) the numpy executor.

    Tiered, as a JIT tiers up hot code: a kernel is compiled (0.1-0.4 s each, cold) on the
    group's TIER_AFTER + 1-th call, so a step that runs once, or a trace that is thrown
    away, never waits for Numba; until then, and for a group whose kernel is already on
    disk (loaded at once), nothing changes but speed (the kernel gives numpy's bits).
    now=True compiles at once."""
    from ..backends import cpu_kernels
    if math.prod(k.shape) < MIN_ELEMENTS or not cpu_kernels.enabled():
        return k
    try:
        text = source(k)
    except Unsupported:
        return k
    from ..backends.numpy_backend import ERF_TABLE
    (c0, c1, c2, c3), last = ERF_TABLE
    last = np.float32(last)
    dtypes = [o.dtype for o in k.outs]
    shapes = [o.shape for o in k.outs]
    state = {"fn": None, "calls": 0}
    digest, path = _path(text)
    if now or digest in _loaded or os.path.exists(path):
        state["fn"] = kernel(k, text)

    def run(*inputs, outs=None):
        fn = state["fn"]
        if fn is None:
            state["calls"] += 1
            if state["calls"] <= TIER_AFTER:
                return k(*inputs, outs=outs)
            fn = state["fn"] = kernel(k, text)
            run.kernel = fn
        flat = []
        for a in inputs:
            if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
                if not (isinstance(a, np.ndarray) and a.size == 1):
                    return k(*inputs, outs=outs)
                a = a.reshape(1).copy()
            flat.append(a.reshape(-1))
        outs = [o if o is not None else np.empty(s, dt) for o, s, dt in zip(outs or (None,) * len(dtypes), shapes,
                                                                           dtypes)]
        if not all(o.flags.c_contiguous for o in outs):
            return k(*inputs, outs=outs)
        fn(*flat, *[o.reshape(-1) for o in outs], c0, c1, c2, c3, last)
        return tuple(outs)
    run.kernel = state["fn"]
    return run
