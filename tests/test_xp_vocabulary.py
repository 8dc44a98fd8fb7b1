"""The xp vocabulary (#24): one declaration per primitive of the numpy-spelled
language, read by every pass and code generator. A call that any traced
forward, VJP, JVP rule or optimizer update reaches must have a declaration;
each declaration's forms must be well formed; one new declaration must reach
every pass without an edit anywhere else."""
import inspect
import string

import numpy as np
import pytest

import gpuad
import gpuad.nn as nn
from gpuad.backends.abstract import AbstractArray, abstract_ns
from gpuad.compiler.capture import capture
from gpuad.compiler.codegen import numba_groups, triton_groups
from gpuad.compiler.ir import Graph
from gpuad.compiler.passes import buffers, dce, fold, fuse
from gpuad.func import forward_mode
from gpuad.xp import (CAST, ELEMENTWISE, KINDS, NUMPY_PHASE, OUT_UFUNC, ZERO, declared, entry, lookup,
                      tangents)
from tests.test_ops_gradcheck import all_cases


def _grad_of_sum(fn):
    def f(*xs):
        out = fn(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        total = sum(o.sum() for o in outs if o.requires_grad)
        return [total] + list(gpuad.autograd.grad(total, [x for x in xs if x.requires_grad], allow_unused=True))
    return f


def _tensors(inputs):
    return [gpuad.tensor(a, requires_grad=np.asarray(a).dtype.kind == "f") for a in inputs]


def test_every_call_a_forward_and_its_vjp_reach_is_declared():
    """Traces every gradcheck case, forward and backward: every traced call is declared,
    and every case traces (none is skipped)."""
    missing, traced = {}, 0
    for name, cases in all_cases().items():
        for fn, inputs in cases:
            cap = capture(_grad_of_sum(fn), tuple(_tensors(inputs)), {})
            traced += 1
            for e in cap.graph.eqns:
                if lookup(e.prim) is None:
                    missing.setdefault(e.prim, name)
    assert traced > 100
    assert not missing, f"xp calls without a declaration in gpuad/xp/vocabulary.py (and a case reaching each): {missing}"


def test_every_call_a_jvp_rule_makes_is_declared(monkeypatch):
    """Runs jvp on every gradcheck case, recording each xp call the rules make."""
    made = {}
    get = forward_mode._Ops.__getattr__

    def record(self, prim):
        made.setdefault(prim, 0)
        made[prim] += 1
        return get(self, prim)
    monkeypatch.setattr(forward_mode._Ops, "__getattr__", record)
    monkeypatch.setattr(forward_mode, "_OPS", {})
    ran = 0
    for name, cases in all_cases().items():
        for fn, inputs in cases:
            xs = _tensors(inputs)
            floats = [i for i, x in enumerate(xs) if x.dtype.kind == "f"]
            if not floats:
                continue
            primals = tuple(x.detach() for x in xs)

            def f(*fs, xs=primals, floats=floats, fn=fn):
                args = list(xs)
                for i, a in zip(floats, fs):
                    args[i] = a
                out = fn(*args)
                return sum(o.sum() for o in (out if isinstance(out, tuple) else (out,)) if o.dtype.kind == "f")
            fs = tuple(primals[i] for i in floats)
            gpuad.jvp(f, fs, tuple(gpuad.ones_like(a) for a in fs))
            ran += 1
    assert ran > 100 and len(made) > 10, (ran, made)
    assert not [p for p in made if lookup(p) is None], sorted(p for p in made if lookup(p) is None)


@pytest.mark.parametrize("make", [
    lambda p: gpuad.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda p: gpuad.optim.Adam(p, lr=1e-3, weight_decay=0.01),
    lambda p: gpuad.optim.AdamW(p, lr=1e-3, weight_decay=0.1)], ids=["sgd", "adam", "adamw"])
def test_every_call_an_optimizer_update_reaches_is_declared(make):
    m = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3))
    opt = make(m.parameters())
    x = gpuad.tensor(np.ones((2, 4), np.float32))

    def step(x):
        loss = nn.functional.cross_entropy(m(x), gpuad.tensor(np.array([0, 2])))
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss
    prims = {e.prim for e in capture(step, (x,), {}).graph.eqns}
    assert {"sqrt", "multiply"} <= prims
    assert not [p for p in prims if lookup(p) is None]


def _arity(form):
    return len({f for _, f, _, _ in string.Formatter().parse(form) if f and f.isdigit()})


@pytest.mark.parametrize("name", declared())
def test_each_declaration_is_well_formed(name):
    d = lookup(name)
    assert d.kind in KINDS
    if d.shape == "broadcast":
        # numpy's ufunc rule: the abstract namespace resolves shapes and dtypes for it
        f = getattr(np, name)
        assert isinstance(f, np.ufunc) and f.nout == 1 and d.elementwise
        sig = next(t for t in f.types if "O" not in t)           # a dtype the ufunc takes
        ins = [AbstractArray(s, np.dtype(c)) for s, c in zip([(2, 1), (3,)], sig[:f.nin])]
        a = getattr(abstract_ns, name)(*ins)
        assert a.shape == ((2, 3) if f.nin == 2 else (2, 1))
    if d.out == OUT_UFUNC and d.elementwise:
        assert d.shape == "broadcast"
    nin = getattr(getattr(np, name, None), "nin", None)
    for form in (d.triton, d.cpu, d.math):
        if isinstance(form, str) and form not in (CAST, NUMPY_PHASE) and nin is not None and d.kind == ELEMENTWISE:
            assert _arity(form) == nin, (name, form)
    if d.row_reduce:
        assert d.triton and d.fill
    assert d.jvp is None or d.jvp is ZERO or callable(d.jvp)


def test_the_unary_tables_jvp_comes_from_its_vjp_expression():
    """tanh's derivative is written once (ops/derivatives.py): its JVP rule is compiled
    from the same expression, and agrees with the VJP at a point."""
    from gpuad.ops import derivatives
    rule = lookup("tanh").jvp
    assert derivatives.tanh.derivative in inspect.getsource(rule)      # generated, and shown in tracebacks
    x = np.array([0.3, -1.2])
    t = rule(np, (x,), (np.ones(2),), np.tanh(x), {})
    np.testing.assert_allclose(t, 1 - np.tanh(x) ** 2, rtol=1e-15)
    assert lookup("abs").jvp is lookup("absolute").jvp           # numpy's two spellings: one entry
    assert lookup("floor").jvp is ZERO


def test_a_new_declaration_reaches_every_pass(monkeypatch):
    """Declaring hypot (and nothing else) makes it fusible, planned in place, foldable,
    shape-checked, differentiable forward, and rendered by the Triton and CPU kernels."""
    monkeypatch.setattr(entry, "_TABLE", dict(entry._TABLE))
    entry.declare("hypot", ELEMENTWISE, out=OUT_UFUNC, shape="broadcast",
                  jvp=tangents.unary(lambda xp, x, y: x / y),     # d/da of hypot(a, a)... only a's tangent
                  triton="tl.sqrt({0} * {0} + {1} * {1})", cpu="np.hypot({0}, {1})", math="hypot({0}, {1})")
    g = Graph()
    x = g.input((64, 1024), np.float32, "x")
    h = g.add_eqn("hypot", (x, 2.0), {}, (64, 1024), np.float32)
    g.outputs = [g.add_eqn("multiply", (h, 3.0), {}, (64, 1024), np.float32)]
    fused = fuse.run(g)
    (e,) = fused.eqns
    assert e.prim == "fused" and [m.prim for m in e.params["kernel"].value.members] == ["hypot", "multiply"]
    k = e.params["kernel"].value
    assert "tl.sqrt(" in triton_groups.source(k)
    assert "np.hypot(" in numba_groups.source(k)
    assert buffers.writes_out(g.eqns[0]) and buffers.elementwise(g.eqns[0])
    assert not dce.effect("hypot")
    c = Graph()
    c.outputs = [c.add_eqn("hypot", (3.0, 4.0), {}, (), np.float64)]
    (lit,) = fold.run(c).outputs
    assert float(lit.value) == 5.0
    assert abstract_ns.hypot(AbstractArray((2, 1), np.float32), AbstractArray((3,), np.float32)).shape == (2, 3)
    vals = np.array([3.0, 5.0])
    t = lookup("hypot").jvp(np, (vals, 4.0), (np.ones(2), None), np.hypot(vals, 4.0), {})
    np.testing.assert_allclose(t, vals / np.hypot(vals, 4.0))
