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
signed-zero rules, float32 erf through the same table (kernels/cpu_math.py), and a
row sum or mean closing the group, added in numpy's pairwise order. Each operand is
computed in the member's dtype, as numpy's promotion gives it (a Python number takes
the array's dtype). exp, log, tanh and the like (libm's versions and numpy's SIMD
ones differ in the last bit) and a power by a constant run as numpy's own ufunc, in
place over a temporary, between kernel phases: a phase writes the ufunc's operand,
the next reads its result (each phase recomputes the arithmetic it needs, rather
than storing it: one temporary per ufunc, 4N bytes in float32). A group with any
other member (a row max, an integer cast) keeps the numpy executor, as does one
smaller than MIN_ELEMENTS (the kernel costs more than the chunk loop there).

Operands: each input is the group's shape (read at the flat index), a row broadcast
along the leading axes (a bias: index % inner), a column (one value per row: index //
inner), a block of middle axes (a channel's scale: (index // inner) % channels), or
one element. Anything else, or an array that is not C-contiguous at run
time, runs the numpy kernel instead.

Sources are named by their hash and written under GPUAD_CACHE_DIR/cpu, and Numba
caches the machine code beside them: groups with the same members and shapes share
one kernel (the layers of a network), and a second process compiles nothing.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import fuse
>>> from gpuad.compiler.codegen import numba_groups
>>> g = Graph(); x = g.input((64, 512), np.float32, "x"); b = g.input((512,), np.float32, "b")
>>> y = g.add_eqn("add", (x, b), {}, (64, 512), np.float32)
>>> g.outputs = [g.add_eqn("maximum", (y, 0), {}, (64, 512), np.float32)]
>>> k = fuse.run(g).eqns[0].params["kernel"].value
>>> print(numba_groups.source(k).split("def kernel")[1].splitlines()[0])
(a0, a1, o0, erf_c0, erf_c1, erf_c2, erf_c3, erf_last):
"""
import math
import os
import warnings

import numpy as np

from ... import config
from ...errors import NoTritonForm
from ...memory.pool import host_pool
from ..ir import Literal, Var
from ...xp import CAST, NUMPY_PHASE, lookup
from . import digest, expression, import_source, write_source

MIN_ELEMENTS = 1 << 14          # a smaller group keeps the numpy executor
PARALLEL_MIN = 1 << 18          # elements: a smaller group's kernel runs on one thread (waking the
                                # sleeping pool costs more than 32K elements' work: python -m bench ops)

Unsupported = NoTritonForm      # (the same signal as triton_groups': this group keeps numpy)

_FLOATS = {"float32", "float64"}

def _index(v, shape):
    """How input v is read at the group's flat index i: all of it ("i"), a block of trailing
    axes broadcast along the leading ones (a bias: "i % m"), leading axes broadcast along
    trailing ones (a row's statistic: "i // m"), a block of middle axes (a channel's
    scale: "(i // m) % c"), or one element ("0")."""
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
    # a block of middle axes broadcast along the rest (batch norm's per-channel scale in
    # (N, C, H, W): "(i // (H W)) % C")
    kept = [a for a in range(nd) if s[a] != 1]
    lo, hi = kept[0], kept[-1] + 1
    if all(s[a] == shape[a] for a in range(lo, hi)):
        return f"(i // {math.prod(shape[hi:])}) % {math.prod(shape[lo:hi])}"
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


def _member(m, names):
    """The expression computing member m from the values named in `names` (numpy's bits),
    or raise Unsupported."""
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
    if m.params:
        raise Unsupported(f"{p} with {sorted(m.params)}")
    d = lookup(p)
    form = d.cpu if d is not None else None
    if form == CAST:
        if not (len(args) == 2 and dt.kind == "f" and isinstance(args[0], Var) and args[0].dtype.kind in "biuf"):
            raise Unsupported(f"astype of {args!r}")
        expr = f"{_cast(dt)}({names[args[0].id]})"          # rounds to nearest, as numpy's cast
    else:
        if d is None or (d.cpu_dtypes and dt.name not in d.cpu_dtypes):
            raise Unsupported(f"{p} giving {dt}")
        kinds = d.cpu_operands if isinstance(d.cpu_operands, tuple) else (d.cpu_operands,) * len(args)
        ct = common() if "common" in kinds else None
        want = {"out": dt, "common": ct, "bool": np.dtype(bool)}
        expr = expression(p, "cpu", [operand(a, want[kind]) for a, kind in zip(args, kinds)])
    return f"{_cast(dt) if dt.kind == 'f' else ''}({expr})"


def _numpy_only(m):
    """A member computed by numpy's own ufunc between kernel phases: a float unary of
    numpy's SIMD library (exp, log, tanh, ...: libm's versions differ in last bits), or a
    power by a constant. Its operand is written to a temporary by one phase, numpy's
    ufunc runs over it in place, and later phases read the result."""
    d = lookup(m.prim)
    if d is None or d.cpu != NUMPY_PHASE:
        return False
    if m.prim != "power" and len(m.args) == 1 and isinstance(m.args[0], Var):
        return m.args[0].dtype == m.out.dtype and m.out.dtype.name in _FLOATS and not m.params
    if m.prim == "power" and len(m.args) == 2 and isinstance(m.args[0], Var) and not m.params:
        c = m.args[1]
        return (isinstance(c, (int, float)) and not isinstance(c, bool) and m.args[0].dtype == m.out.dtype
                and m.out.dtype.name in _FLOATS)
    return False


def source(k):
    """The Python source of group k's kernels (a FusedKernel): one phase, or phases around
    numpy's ufuncs for its exp, log, tanh (see _numpy_only); or raise Unsupported."""
    if not k.shape:
        raise Unsupported("a 0-d group")
    shape = tuple(k.shape)
    n, inner = math.prod(shape), shape[-1]
    reads = [_index(v, shape) for v in k.ins]
    closing = k.members[-1] if k.reduces else None
    if closing is not None and (closing.prim not in ("sum", "mean") or closing.args[0].dtype.name not in _FLOATS
                                or closing.out.dtype != closing.args[0].dtype):
        raise Unsupported(f"a row {closing.prim} of {closing.args[0].dtype}")
    members = k.members[:-1] if closing is not None else list(k.members)
    cuts = [m for m in members if _numpy_only(m)]
    made = {m.out.id: m for m in members}
    temp = {m.out.id: j for j, m in enumerate(cuts)}           # a numpy ufunc's result: temporary j
    inputs = {v.id: j for j, v in enumerate(k.ins)}
    # an erf costs about as much as eight arithmetic members: such a group pays for the
    # pool's wake-up at fewer elements
    parallel = n * (1 + 8 * sum(m.prim == "erf" for m in k.members)) >= PARALLEL_MIN
    erf = "erf_c0, erf_c1, erf_c2, erf_c3, erf_last"
    temps = [f"w{j}" for j in range(len(cuts))]

    def phase(name, targets, extra_args, stores, row_sum=None):
        """A kernel computing what `targets` need (each member once, in order; a temporary
        read where a numpy ufunc made it), then `stores`."""
        need, stack = set(), list(targets)
        while stack:
            v = stack.pop()
            if v.id in need or v.id in inputs or v.id in temp or v.id not in made:
                continue
            need.add(v.id)
            stack.extend(made[v.id].invars())
        names = {}
        loads = []
        used = {a.id for vid in need for a in made[vid].invars()} | {v.id for v in targets}
        for v in k.ins:
            if v.id in used:
                names[v.id] = f"x{inputs[v.id]}"
                loads.append(f"x{inputs[v.id]} = a{inputs[v.id]}[{reads[inputs[v.id]]}]")
        for vid, j in temp.items():
            if vid in used:
                names[vid] = f"y{j}"
                loads.append(f"y{j} = w{j}[i]")
        body = []
        for m in members:
            if m.out.id in need and m.out.id not in temp:
                names[m.out.id] = f"t{len(body)}"
                body.append(f"t{len(body)} = {_member(m, names)}")
        stores = [line.format(**{f"v{vid}": names[vid] for vid in names}) for line in stores]
        args = [f"a{j}" for j in range(len(k.ins))] + extra_args
        lines = ["", "", f"@njit(parallel={parallel}, cache=True, error_model='numpy')   # x/0 is inf, as numpy's",
                 f"def {name}({', '.join(args)}, {erf}):"]
        if row_sum is None:
            lines += [f"    for i in prange({n}):"] + [f"        {x}" for x in loads + body + stores]
            return lines
        # each row's values into a row buffer, then numpy's own pairwise sum over it (the
        # same additions in the same order: bitwise numpy's row sum)
        dt = closing.out.dtype
        alloc = f"row = np.empty({inner}, {_cast(dt)})"      # per row in parallel (a thread's own)
        lines += [f"    {alloc}", f"    for r in prange({n // inner}):"] if not parallel else \
            [f"    for r in prange({n // inner}):", f"        {alloc}"]
        lines += [f"        for j in range({inner}):", f"            i = r * {inner} + j"]
        lines += [f"            {x}" for x in loads + body + stores]
        lines += [f"            row[j] = {names[closing.args[0].id]}",
                  f"        s = _pairwise(row, 0, {inner}, {_cast(dt)}(0.0))"]
        if closing.prim == "mean":
            lines += [f"        s = s / {_cast(dt)}({inner})"]
        lines += [f"        {row_sum}[r] = s"]
        return lines

    lines = []
    for j, m in enumerate(cuts):          # the operand of numpy ufunc j, into temporary j
        lines += phase(f"phase{j}", [m.args[0]], temps[:j + 1], ["w%d[i] = {v%d}" % (j, m.args[0].id)])
    outs = {o.id: j for j, o in enumerate(k.outs)}
    stores = ["o%d[i] = {v%d}" % (outs[o.id], o.id) for o in k.outs if o is not (closing and closing.out)]
    targets = [o for o in k.outs if o is not (closing and closing.out)] + ([closing.args[0]] if closing else [])
    lines += phase("last", targets, temps + [f"o{j}" for j in range(len(k.outs))], stores,
                   row_sum=f"o{outs[closing.out.id]}" if closing is not None else None)
    # the host side: temporaries from the host pool, each phase, numpy's ufunc between them
    args = [f"a{j}" for j in range(len(k.ins))] + [f"o{j}" for j in range(len(k.outs))]
    host = ["", "", f"def kernel({', '.join(args)}, {erf}):"]
    for j, m in enumerate(cuts):
        host.append(f"    w{j} = _empty(({n},), np.{m.out.dtype.name})")
        host.append(f"    phase{j}({', '.join(f'a{i}' for i in range(len(k.ins)))}, {', '.join(temps[:j + 1])}, {erf})")
        power = f", {m.args[1]!r}" if m.prim == "power" else ""
        host.append(f"    _ufunc(np.{m.prim}, w{j}{power})")
    host.append(f"    last({', '.join(args[:len(k.ins)] + temps + args[len(k.ins):])}, {erf})")
    head = ['"""Generated by gpuad.compile for one fused group (gpuad/compiler/codegen/numba_groups.py)."""',
            "import numpy as np", "from numba import njit, prange", "from gpuad.providers import load_kernel_module",
            "from gpuad.memory.pool import host_pool", "",
            "_erf = load_kernel_module('cpu_math').erf32_scalar",
            "_pairwise = load_kernel_module('cpu_math').pairwise_sum",
            "_empty = host_pool.empty",
            "from gpuad.backends.cpu_kernels import parallel_ufunc as _ufunc", "", "",
            "@njit(inline='always')", "def _pick(a, b, first):",
            "    return a if first or a != a else b"]
    return "\n".join(head + lines + host) + "\n"


def enabled():
    """Whether groups may run as generated kernels here (Numba is installed and on)."""
    from ...backends import cpu_kernels
    return cpu_kernels.enabled()


def temp_bytes(k):
    """The bytes a group's kernel takes while it runs: one group-sized temporary per numpy
    ufunc between its phases (from the host pool, returned when the kernel returns); 0
    where the group keeps the numpy executor (its scratch is counted apart)."""
    if not hasattr(k, "members") or _text(k) is None:
        return 0
    members = k.members[:-1] if k.reduces else k.members
    return sum(math.prod(k.shape) * m.out.dtype.itemsize for m in members if _numpy_only(m))


_loaded = {}
_warned = []
TIER_AFTER = 2          # calls a group runs on the numpy executor before its kernel is compiled


def _text(k):
    """Group k's kernel source, or None where it keeps the numpy executor."""
    if math.prod(k.shape) < MIN_ELEMENTS or not enabled():
        return None
    try:
        return source(k)
    except Unsupported:
        return None


def kernel(k, text=None):
    """The compiled kernel of group k (a Numba dispatcher), or None where the group keeps
    the numpy executor (a member, an operand or its size; or the CPU kernels are off)."""
    text = _text(k) if text is None else text
    if text is None:
        return None
    key = digest(text)
    fn = _loaded.get(key)
    if fn is None:
        folder = config.cpu_cache_dir()
        try:
            path = write_source(text, folder, "group")
        except OSError as e:
            # (Numba compiles from a file: without a writable cache the group keeps numpy's executor)
            if not _warned:
                _warned.append(True)
                warnings.warn(f"gpuad.compile: cannot write generated CPU kernels to {folder} ({e}); fused "
                              f"groups run on numpy. Set GPUAD_CACHE_DIR to a writable folder",
                              RuntimeWarning, stacklevel=2)
            return None
        fn = _loaded[key] = import_source(path, f"gpuad_cpu_group_{key}").kernel
    return fn


def runner(k, now=False):
    """How codegen runs group k: its generated kernel on C-contiguous operands, else (a
    layout the kernel does not take, or no kernel) the numpy executor.

    Tiered, as a JIT tiers up hot code: a kernel is compiled (0.1-0.4 s each, cold) on the
    group's TIER_AFTER + 1-th call, so a step that runs once, or a trace that is thrown
    away, never waits for Numba; until then, and for a group whose kernel is already on
    disk (loaded at once), nothing changes but speed (the kernel gives numpy's bits).
    now=True compiles at once."""
    text = _text(k)
    if text is None:
        return k
    from ...backends.numpy_backend import ERF_TABLE
    (c0, c1, c2, c3), last = ERF_TABLE
    last = np.float32(last)
    dtypes = [o.dtype for o in k.outs]
    shapes = [o.shape for o in k.outs]
    state = {"fn": None, "calls": 0}
    key = digest(text)
    if now or key in _loaded or os.path.exists(os.path.join(config.cpu_cache_dir(), f"group_{key}.py")):
        state["fn"] = kernel(k, text)
        if state["fn"] is None:
            return k

    def run(*inputs, outs=None):
        fn = state["fn"]
        if fn is None:
            state["calls"] += 1
            if state["calls"] <= TIER_AFTER:
                return k(*inputs, outs=outs)
            fn = state["fn"] = kernel(k, text)
            run.kernel = fn
            if fn is None:
                state["calls"] = -(1 << 62)      # no kernel after all: numpy's executor from now on
                return k(*inputs, outs=outs)
        flat = []
        for a in inputs:
            if not isinstance(a, np.ndarray):
                return k(*inputs, outs=outs)
            if not a.flags.c_contiguous:
                # a view (a transpose, sum's broadcast gradient): copied once, in C order (a
                # pass over it, N bytes: far less than the numpy executor's passes)
                c = host_pool.empty(a.shape, a.dtype)
                np.copyto(c, a)
                a = c
            flat.append(a.reshape(-1))
        outs = [o if o is not None else np.empty(s, dt) for o, s, dt in zip(outs or (None,) * len(dtypes), shapes,
                                                                           dtypes)]
        if not all(o.flags.c_contiguous for o in outs):
            return k(*inputs, outs=outs)
        fn(*flat, *[o.reshape(-1) for o in outs], c0, c1, c2, c3, last)
        return tuple(outs)
    run.kernel = state["fn"]
    return run
