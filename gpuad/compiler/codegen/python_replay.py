"""Code generation: a Graph (and its buffer plan) becomes one straight-line Python
function over local variables, compiled once with exec. A replay is then one
call of it: no per-op interpretation, no dispatch, no graph recorded.

Each equation is one line. A value whose buffer is planned is computed with
`out=` into its view of the arena; a value is deleted right after its last
use, so the unplanned path frees as early as eager's planner does.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.codegen.python_replay import generate
>>> g = Graph(); x = g.input((2,), np.float64, "x")
>>> y = g.add_eqn("multiply", (x, 3.0), {}, (2,), np.float64)
>>> g.outputs = [g.add_eqn("exp", (y,), {}, (2,), np.float64)]
>>> fn, src = generate(g)
>>> print(src.strip().splitlines()[2])
    v2 = multiply(x, 3.0)
>>> fn([np.zeros(2)])[0].tolist()
[1.0, 1.0]
"""
import math

import numpy as np

from ..ir import Literal, Var, iter_vars, load, padded as _padded
from ..trace import resolve
from ...xp import lookup
from . import expression

CHUNK = 1 << 14          # elements per pass over a group: 64 KB of float32, within L2
TINY = 1024              # elements: smaller one-pass groups use fresh temporaries, not scratch


class _Names:
    """The globals of the generated function: one name per callable and constant.
    xp: the namespace primitives resolve on (numpy's by default); run_group: how a
    fused group's kernel runs there (itself, on the CPU)."""

    def __init__(self, xp=None, run_group=None):
        self.scope = {"np": np}
        self._ids = {}
        self.xp = xp
        self.run_group = run_group

    def const(self, value, hint="c"):
        key = id(value)
        name = self._ids.get(key)
        if name is None:
            name = f"{hint}{len(self._ids)}"
            self._ids[key] = name
            self.scope[name] = value
        return name

    def fn(self, prim, impl=None):
        impl = resolve(prim, self.xp) if impl is None else impl
        name = "".join(ch if ch.isalnum() else "_" for ch in prim)
        if self.scope.get(name, impl) is not impl:
            name = self.const(impl, name + "_")
        self.scope[name] = impl
        return name


def src(a, names):
    """Python source for an operand."""
    if isinstance(a, Var):
        return a.name
    if isinstance(a, Literal):
        return names.const(a.value)
    if isinstance(a, tuple):
        return "(" + "".join(src(x, names) + ", " for x in a) + ")"
    if isinstance(a, list):
        return "[" + ", ".join(src(x, names) for x in a) + "]"
    if isinstance(a, dict):
        return "{" + ", ".join(f"{k!r}: {src(v, names)}" for k, v in a.items()) + "}"
    if isinstance(a, slice):
        return f"slice({src(a.start, names)}, {src(a.stop, names)}, {src(a.step, names)})"
    if a is Ellipsis:
        return "..."
    if isinstance(a, float) and not math.isfinite(a):
        return names.const(a)
    if isinstance(a, (bool, int, float, str, type(None))):
        return repr(a)
    return names.const(a)


def call_src(eqn, names, out=None):
    """The expression computing one equation (into `out` when given)."""
    if eqn.prim == "fused":
        k = eqn.params["kernel"].value
        kernel = names.const(k if names.run_group is None else names.run_group(k), "fused")
        return f"{kernel}({', '.join(src(a, names) for a in eqn.args)}{', outs=' + out if out else ''})"
    if eqn.prim == "getitem":
        return f"{src(eqn.args[0], names)}[{src(eqn.args[1], names)}]"
    args = [src(a, names) for a in eqn.args]
    args += [f"{k}={src(v, names)}" for k, v in eqn.params.items()]
    if out is not None:
        args.append(f"out={out}")
    return f"{names.fn(eqn.prim)}({', '.join(args)})"


def last_uses(graph):
    """eqn index -> the Vars read for the last time there (outputs never die)."""
    last = {}
    for i, e in enumerate(graph.eqns):
        for v in e.invars():
            last[v.id] = (i, v)
    keep = {v.id for v in iter_vars(graph.outputs)}
    dying = {}
    for vid, (i, v) in last.items():
        if vid not in keep:
            dying.setdefault(i, []).append(v)
    return dying


def generate(graph, plan=None, name="replay", xp=None, run_group=None):
    """(function(list of input arrays) -> list of outputs, its source). With an
    allocated plan (gpuad.compiler.passes.buffers), planned values are written
    into their views of the arena. xp and run_group: see _Names (a device replay
    resolves primitives on CuPy's namespace and runs groups as Triton kernels)."""
    names = _Names(xp, run_group)
    lines = [f"def {name}(inputs):"]
    if graph.inputs:
        lines.append(f"    {', '.join(v.name for v in graph.inputs)}, = inputs")
    if plan is not None:
        lines += [f"    {line}" for line in plan.prologue(names)]
    dying = last_uses(graph)
    for i, e in enumerate(graph.eqns):
        if plan is not None and plan.emits(e):
            lines += [f"    {line}" for line in plan.emit(e, names)]
        else:
            outs = ", ".join(o.name for o in e.outs) + ("," if len(e.outs) > 1 or e.prim == "fused" else "")
            lines.append(f"    {outs} = {call_src(e, names)}")
        dead = [v.name for v in dying.get(i, ()) if v not in graph.inputs]
        if dead:
            lines.append(f"    del {', '.join(dead)}")
    outs = [src(v, names) for v in graph.outputs]
    lines.append(f"    return [{', '.join(outs)}]")
    source = "\n".join(lines) + "\n"
    scope = names.scope
    load(source, name, scope)
    return scope[name], source


# -- fused groups on the numpy executor ---------------------------------------

def _into(prim, fn, args, target):
    """Lines computing one member into `target`: out= where numpy takes it; where and
    astype as copies into it (np.where and astype have no out=)."""
    if prim == "where":
        # two masked copies, each leaving the other's places alone: right when the target
        # is a's or b's own buffer (planned in place), where "b, then a where c" would
        # overwrite a before reading it. Costs the N-byte mask ~c.
        c, a, b = args
        return [f"np.copyto({target}, {a}, where={c}, casting='unsafe')",
                f"np.copyto({target}, {b}, where=np.logical_not({c}), casting='unsafe')"]
    if prim == "astype":
        return [f"np.copyto({target}, {args[0]}, casting='unsafe')"]
    return [f"{fn}({', '.join(args)}, out={target})"]


def _layout(k):
    """How a group streams: None for one pass (small), else p, the number of leading
    axes collapsed into rows. Every operand, padded on the left to the group's rank,
    either matches the group's shape on those axes (it is cut into chunks of rows
    with it) or is 1 on all of them (it is read whole by every chunk). p = rank
    (every operand full-size or a single element) streams the flattened arrays."""
    if math.prod(k.shape) <= CHUNK or not k.shape:
        return None
    nd = len(k.shape)
    shapes = [_padded(v.shape, nd) for v in k.ins] + [_padded(np.shape(a.value), nd) for m in k.members
                                                       for a in m.args if isinstance(a, Literal)]
    top = nd - 1 if k.reduces else nd          # a row reduction needs its last axis whole
    for p in range(top, 0, -1):
        if all(s[:p] == k.shape[:p] or all(d == 1 for d in s[:p]) for s in shapes):
            return p
    return None


def numpy_group(k):
    """(function, source, scratch arrays) of fused group k for the numpy executor: its
    members over chunks of CHUNK elements through shared scratch (see passes/fuse.py for
    what a group is), or, for a one-element float64 group, on Python floats."""
    fn, source, scratch = _generate(k)
    if _scalar_ok(k):
        fn, source = _generate_scalar(k, fn, source)
    return fn, source, scratch


def _generate(k):
    names = _Names()
    p = _layout(k)
    nd = len(k.shape)
    lines = [f"def kernel({''.join(v.name + ', ' for v in k.ins)}outs):"]
    local = {}
    for j, o in enumerate(k.outs):
        lines.append(f"    o{j} = outs[{j}] if outs[{j}] is not None else np.empty({o.shape!r}, {names.const(o.dtype)})")
    literal = {}
    if p is None:
        body, ind = lines, "    "
        sliced = {v.id: v.name for v in k.ins}
        out_ref = {o.id: f"o{j}" for j, o in enumerate(k.outs)}
        # one pass: the whole group fits a chunk. Below TINY elements its intermediates are
        # fresh arrays (a few hundred bytes, gone when the kernel returns) rather than views
        # of the shared 64 KB scratch
        scratch_shape = k.shape if math.prod(k.shape) >= TINY else None
    else:
        ind = "        "
        n_rows, inner = math.prod(k.shape[:p]), k.shape[p:]
        rows = max(1, CHUNK // max(1, math.prod(inner)))
        scratch_shape = (rows,) + inner
        sliced = {}
        for v in k.ins:
            s = _padded(v.shape, nd)
            if s[:p] == k.shape[:p]:
                lines.append(f"    {v.name}_r = {v.name}.reshape({(n_rows,) + s[p:]!r})")
                sliced[v.id] = f"{v.name}_r[s:e]"
            else:
                lines.append(f"    {v.name}_r = {v.name}.reshape({s[p:]!r})")
                sliced[v.id] = f"{v.name}_r"
        for m in k.members:
            for a in m.args:
                if isinstance(a, Literal):
                    s = _padded(np.shape(a.value), nd)
                    if s[:p] == k.shape[:p]:
                        literal[id(a)] = f"{names.const(np.asarray(a.value).reshape((n_rows,) + s[p:]))}[s:e]"
                    else:
                        literal[id(a)] = names.const(np.asarray(a.value).reshape(s[p:]))
        for j, o in enumerate(k.outs):
            lines.append(f"    o{j}_r = o{j}.reshape({(n_rows,) + tuple(o.shape[p:])!r})")
        lines.append(f"    for s in range(0, {n_rows}, {rows}):")
        lines.append(f"        e = s + {rows}")
        # (no builtin min here: the group's own members may bind numpy's min to that name)
        lines.append(f"        n = (e if e < {n_rows} else {n_rows}) - s")
        out_ref = {o.id: f"o{j}_r[s:e]" for j, o in enumerate(k.outs)}
        body = lines
    # scratch: one buffer per dtype and liveness slot, reused when its value dies
    last = {}
    for i, m in enumerate(k.members):
        for v in m.invars():
            last[v.id] = i
    free, scratch, used = {}, {}, {}
    for i, m in enumerate(k.members):
        args = []
        for a in m.args:
            if isinstance(a, Var):
                args.append(local.get(a.id) or sliced[a.id])
            elif id(a) in literal:
                args.append(literal[id(a)])
            else:
                args.append(src(a, names))
        fn = names.fn(m.prim, resolve(m.prim)) if m.prim != "astype" else None
        if k.reduces and m is k.members[-1]:   # the closing row reduction: the last axis of every chunk
            args = args[:1] + ["axis=-1", f"keepdims={bool(m.params.get('keepdims', False))}"]
        o = m.out
        if o.id not in out_ref and p is None and scratch_shape is None:
            call = names.fn("astype") if m.prim == "astype" else fn
            body.append(f"{ind}t{o.id} = {call}({', '.join(args)})")
            local[o.id] = f"t{o.id}"
            continue
        if o.id in out_ref:
            target = out_ref[o.id]
        else:
            # an intermediate: a shared scratch buffer (the chunk's rows of it), so a group
            # allocates nothing while it runs
            pool = free.setdefault(o.dtype.str, [])
            buf = pool.pop() if pool else None
            if buf is None:
                arr = _scratch(o.dtype, len(used.setdefault(o.dtype.str, [])), scratch_shape)
                used[o.dtype.str].append(arr)
                buf = names.const(arr, "scr")
            scratch[o.id] = buf
            target = buf if p is None else f"{buf}[:n]"
        for line in _into(m.prim, fn, args, target):
            body.append(f"{ind}{line}")
        local[o.id] = target if o.id in out_ref else f"t{o.id}"
        if o.id not in out_ref:
            body.append(f"{ind}t{o.id} = {target}")
        for v in m.invars():
            if last.get(v.id) == i and v.id in scratch:
                free.setdefault(v.dtype.str, []).append(scratch.pop(v.id))
    lines.append(f"    return ({''.join(f'o{j}, ' for j in range(len(k.outs)))})")
    source = "\n".join(lines) + "\n"
    load(source, "fused", names.scope)
    return names.scope["kernel"], source, [a for arrs in used.values() for a in arrs]


# One-element float64 groups (a scalar chain) run on Python floats: a numpy call on a
# 1-element array costs ~0.6 us, a float operation ~0.05. +, -, *, / are the same
# IEEE double operations either way; math's sin, exp, ... may differ from numpy's
# in the last bit. A math domain or range error (math.log(-1) raises where numpy
# returns NaN) falls back to the numpy kernel for that call.
# (each member's form: the `math` field of its declaration, gpuad/xp/vocabulary.py)


def _scalar_ok(k):
    f64 = np.dtype(np.float64)
    if math.prod(k.shape) != 1 or any(v.dtype != f64 or v.size != 1 for v in k.ins):
        return False
    for m in k.members:
        if m.out.dtype != f64 or getattr(lookup(m.prim), "math", None) is None:
            return False
        if any(_scalar_arg(a) is None for a in m.args):
            return False
    return True


def _scalar_arg(a):
    """Source for an operand of the scalar kernel (None: not a float64 scalar)."""
    if isinstance(a, Var):
        return ""
    if isinstance(a, Literal):
        v = np.asarray(a.value)
        x = float(v.reshape(-1)[0]) if v.size == 1 and v.dtype == np.float64 else None
    elif isinstance(a, bool) or not isinstance(a, (int, float)):
        return None
    else:
        x = float(a)
    return repr(x) if x is not None and math.isfinite(x) else None


def _generate_scalar(k, numpy_kernel, numpy_source):
    names = {v.id: f"s{v.id}" for v in k.ins}
    lines = [f"def kernel({''.join(v.name + ', ' for v in k.ins)}outs):", "    try:"]
    for v in k.ins:
        lines.append(f"        s{v.id} = {v.name}.item()")
    for m in k.members:
        args = [names[a.id] if isinstance(a, Var) else _scalar_arg(a) for a in m.args]
        expr = expression(m.prim, "math", args)
        names[m.out.id] = f"s{m.out.id}"
        lines.append(f"        s{m.out.id} = {expr}")
    lines.append("    except (ValueError, OverflowError, ZeroDivisionError):")
    lines.append(f"        return numpy_kernel({''.join(v.name + ', ' for v in k.ins)}outs)")
    for j, o in enumerate(k.outs):
        lines.append(f"    o{j} = outs[{j}]")
        lines.append(f"    if o{j} is None:")
        lines.append(f"        o{j} = np.empty({o.shape!r})")
        lines.append(f"    o{j}[...] = s{o.id}")
    lines.append(f"    return ({''.join(f'o{j}, ' for j in range(len(k.outs)))})")
    source = "\n".join(lines) + "\n"
    scope = {f: getattr(math, f) for f in dir(math) if not f.startswith("_")}
    scope.update(np=np, numpy_kernel=numpy_kernel)
    load(source, "fused scalar", scope)
    return scope["kernel"], source + "\n# falls back to:\n" + numpy_source


# Scratch is shared by every generated kernel: they run one at a time (a replay is
# sequential and not reentrant), so the k-th scratch buffer of a dtype serves the
# k-th chunk-sized intermediate of every group. CHUNK elements each.
_SCRATCH = {}


def _scratch(dtype, k, shape):
    n = math.prod(shape)
    if n > CHUNK:                        # one row longer than a chunk: a buffer of its own
        return np.empty(shape, dtype)
    base = _SCRATCH.get((dtype.str, k))
    if base is None:
        base = _SCRATCH[(dtype.str, k)] = np.empty(CHUNK, dtype)
    return base[:n].reshape(shape)
