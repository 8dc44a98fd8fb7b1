"""gpuad.compile's generated CPU kernels (gpuad/compiler/codegen/numba_groups.py): each fused group
that has one gives the numpy executor's result to the bit, special values included,
on one thread and on all; what a kernel does not take runs the numpy executor."""
import os
import subprocess
import sys

import numpy as np
import pytest

import gpuad
from gpuad.compiler.codegen import numba_groups as cpu_codegen
from gpuad.compiler.ir import Graph
from gpuad.compiler.passes import fuse

pytest.importorskip("numba")
pytestmark = pytest.mark.cpu_only("the Numba kernels run on host arrays")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUAD_CACHE_DIR", str(tmp_path / "cache"))


def _special(shape, dtype, rng):
    """Random values with NaN, both infinities, both zeros and subnormals sprinkled in."""
    a = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape)).astype(dtype)
    flat = a.reshape(-1)
    picks = rng.integers(0, flat.size, 60)
    flat[picks] = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(dtype).tiny / 4] * 10, dtype)
    return a


def _group(build, shape, dtype=F32, extra_shapes=()):
    """A fused group made by build(g, x, *extras) on inputs of these shapes."""
    g = Graph()
    x = g.input(shape, dtype, "x")
    extras = [g.input(s, d, f"e{i}") for i, (s, d) in enumerate(extra_shapes)]
    g.outputs = list(build(g, x, *extras))
    eqns = fuse.run(g).eqns
    assert len(eqns) == 1 and eqns[0].prim == "fused", [e.prim for e in eqns]
    return eqns[0].params["kernel"].value


def _op(g, prim, args, shape, dtype, **params):
    return g.add_eqn(prim, args, params, shape, dtype)


S = (64, 520)                 # 33280 elements: a kernel (not a parallel one), rows of 520 (> 128, not 8k)
SP = (512, 520)               # a parallel kernel

CASES = {
    "arithmetic with numbers": lambda g, x: [_op(g, "add", (_op(g, "multiply", (x, 0.1), x.shape, F32), 3), x.shape,
                                                  F32)],
    "divide, negative, abs, square": lambda g, x: [_op(g, "divide", (_op(g, "negative", (x,), x.shape, F32),
                                                                   _op(g, "square", (_op(g, "absolute", (x,), x.shape,
                                                                                         F32),), x.shape, F32)),
                                                       x.shape, F32)],
    "sqrt of abs": lambda g, x: [_op(g, "sqrt", (_op(g, "absolute", (x,), x.shape, F32),), x.shape, F32)],
    "maximum and minimum (relu, clamp)": lambda g, x: [
        _op(g, "maximum", (_op(g, "minimum", (_op(g, "maximum", (x, 0), x.shape, F32), 6.0), x.shape, F32),
                           _op(g, "negative", (x,), x.shape, F32)), x.shape, F32)],
    "where of a comparison": lambda g, x: [
        _op(g, "where", (_op(g, "greater", (x, 0.5), x.shape, np.bool_), x, _op(g, "multiply", (x, 0.01), x.shape,
                                                                                  F32)), x.shape, F32)],
    "logical ops": lambda g, x: [
        _op(g, "logical_or", (_op(g, "logical_not", (_op(g, "less_equal", (x, 0.0), x.shape, np.bool_),), x.shape,
                                  np.bool_), _op(g, "not_equal", (x, x), x.shape, np.bool_)), x.shape, np.bool_)],
    "casts": lambda g, x: [_op(g, "astype", (_op(g, "multiply", (_op(g, "astype", (x, F64), x.shape, F64), 1.5),
                                                 x.shape, F64), F32), x.shape, F32)],
    "erf (gelu)": lambda g, x: [_op(g, "multiply", (_op(g, "multiply", (0.5, x), x.shape, F32),
                                                   _op(g, "add", (1.0, _op(g, "erf", (_op(g, "multiply", (
                                                       x, 0.7071067811865476), x.shape, F32),), x.shape, F32)),
                                                       x.shape, F32)), x.shape, F32)],
    "exp (a softmax numerator)": lambda g, x: [_op(g, "multiply", (_op(g, "exp", (_op(g, "subtract", (x, 1.0), x.shape,
                                                                                F32),), x.shape, F32), 0.5),
                                                   x.shape, F32)],
    "tanh, log, and a power": lambda g, x: [
        _op(g, "add", (_op(g, "log", (_op(g, "add", (_op(g, "abs", (_op(g, "tanh", (x,), x.shape, F32),), x.shape, F32),
                                                    1.0), x.shape, F32),), x.shape, F32),
                       _op(g, "power", (_op(g, "abs", (x,), x.shape, F32), 1.5), x.shape, F32)), x.shape, F32)],
    "row sum": lambda g, x: [_op(g, "sum", (_op(g, "multiply", (x, x), x.shape, F32),), x.shape[:-1], F32, axis=-1)],
    "row mean, keepdims": lambda g, x: [_op(g, "mean", (_op(g, "add", (x, 1.0), x.shape, F32),), x.shape[:-1] + (1,),
                                            F32, axis=-1, keepdims=True)],
}


@pytest.mark.parametrize("shape", [S, SP], ids=["one thread", "parallel"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_generated_kernel_equals_the_numpy_executor_to_the_bit(name, shape):
    k = _group(CASES[name], shape)
    run = cpu_codegen.runner(k, now=True)
    assert run is not k and run.kernel is not None, cpu_codegen.source(k)
    assert ("parallel=True" in cpu_codegen.source(k)) == (np.prod(shape) >= cpu_codegen.PARALLEL_MIN or
                                                       name == "erf (gelu)")
    rng = np.random.default_rng(3)
    ins = [_special(v.shape, v.dtype, rng) for v in k.ins]
    with np.errstate(all="ignore"):
        want = k(*ins)
        got = run(*ins)
    for w, o in zip(want, got):
        assert w.shape == o.shape and w.dtype == o.dtype
        same = (w.view(np.uint8) == o.view(np.uint8)).reshape(w.shape + (-1,)).all(-1) | (
            np.isnan(w) & np.isnan(o) if w.dtype.kind == "f" else False)
        assert same.all(), (name, w[~same][:5], o[~same][:5])


@pytest.mark.parametrize("n", [1, 5, 8, 13, 128, 129, 520, 1000, 4096, 5000])
def test_row_sums_add_as_numpy_does(n):
    k = _group(CASES["row sum"], (40, n) if n >= 410 else (16384 // n + 1, n))
    run = cpu_codegen.runner(k, now=True)
    if np.prod(k.shape) < cpu_codegen.MIN_ELEMENTS:
        assert run is k
        return
    x = np.random.default_rng(n).standard_normal(k.shape).astype(np.float32) * 1000
    np.testing.assert_array_equal(run(x)[0], (x * x).sum(-1))


def test_broadcast_operands_are_read_where_numpy_reads_them():
    """A bias along the rows (i % m), a statistic per row (i // m), one number (0)."""
    def build(g, x, bias, stat, one):
        y = _op(g, "multiply", (_op(g, "subtract", (x, stat), x.shape, F32), bias), x.shape, F32)
        return [_op(g, "add", (y, one), x.shape, F32)]
    shape = (8, 16, 256)
    k = _group(build, shape, extra_shapes=[((256,), F32), ((8, 16, 1), F32), ((1, 1, 1), F32)])
    src = cpu_codegen.source(k)
    assert "i % 256" in src and "i // 256" in src and "[0]" in src
    rng = np.random.default_rng(0)
    ins = [_special(v.shape, v.dtype, rng) for v in k.ins]
    np.testing.assert_array_equal(cpu_codegen.runner(k, now=True)(*ins)[0], k(*ins)[0])


def test_a_channel_operand_is_read_where_numpy_reads_it():
    """Batch norm's per-channel scale in (N, C, H, W): a block of middle axes,
    (i // (H W)) % C; (1, C, H, 1) too; a gap between kept axes stays numpy's."""
    def build(g, x, chan, plane):
        y = _op(g, "multiply", (_op(g, "subtract", (x, chan), x.shape, F32), plane), x.shape, F32)
        return [_op(g, "where", (_op(g, "less_equal", (x, 0.0), x.shape, np.bool_), 0.0, y), x.shape, F32)]
    shape = (4, 6, 16, 20)
    k = _group(build, shape, extra_shapes=[((1, 6, 1, 1), F32), ((6, 16, 1), F32)])
    src = cpu_codegen.source(k)
    assert "(i // 320) % 6" in src and "(i // 20) % 96" in src
    rng = np.random.default_rng(0)
    ins = [_special(v.shape, v.dtype, rng) for v in k.ins]
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(cpu_codegen.runner(k, now=True)(*ins)[0], k(*ins)[0])
    gap = _group(lambda g, x, a: [_op(g, "multiply", (_op(g, "add", (x, a), x.shape, F32), 2.0), x.shape, F32)],
                 shape, extra_shapes=[((4, 1, 16, 1), F32)])
    assert cpu_codegen.runner(gap) is gap


def test_what_a_kernel_does_not_take_runs_the_numpy_executor(monkeypatch):
    rowmax = _group(lambda g, x: [_op(g, "max", (_op(g, "multiply", (x, 2.0), x.shape, F32),), x.shape[:-1], F32,
                                      axis=-1)], S)
    assert cpu_codegen.runner(rowmax) is rowmax                             # a row max: not yet
    small = _group(CASES["arithmetic with numbers"], (8, 8))
    assert cpu_codegen.runner(small) is small                               # below MIN_ELEMENTS
    k = _group(CASES["arithmetic with numbers"], S)
    run = cpu_codegen.runner(k, now=True)
    x = np.random.default_rng(1).standard_normal((S[1], S[0])).astype(np.float32).T     # not C-contiguous
    np.testing.assert_array_equal(run(x)[0], k(x)[0])
    monkeypatch.setenv("GPUAD_CPU_KERNELS", "numpy")
    assert cpu_codegen.runner(k) is k


def test_kernels_are_cached_on_disk_and_a_second_process_compiles_nothing(tmp_path):
    script = (
        "import time, numpy as np\n"
        "from tests.test_cpu_codegen import _group, CASES, S\n"
        "from gpuad.compiler.codegen import numba_groups as cpu_codegen\n"
        "k = _group(CASES['erf (gelu)'], S)\n"
        "t = time.perf_counter(); run = cpu_codegen.runner(k, now=True); run(np.ones(S, np.float32))\n"
        "print(time.perf_counter() - t)\n")
    env = dict(os.environ, GPUAD_CACHE_DIR=str(tmp_path / "shared"), PYTHONPATH=ROOT)
    env.pop("NUMBA_CACHE_DIR", None)           # (this process's, which its children would inherit)
    times = [float(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                  check=True, cwd=ROOT).stdout.split()[-1]) for _ in range(2)]
    files = os.listdir(tmp_path / "shared" / "cpu")
    assert any(f.startswith("group_") and f.endswith(".py") for f in files)
    assert any(f.endswith(".nbi") for f in os.listdir(tmp_path / "shared" / "cpu")) or any(
        f.endswith(".nbi") for _, _, fs in os.walk(tmp_path / "shared") for f in fs)
    assert times[1] < times[0] / 2, times


def test_a_compiled_step_runs_its_groups_as_kernels_and_equals_eager():
    gpuad.manual_seed(0)
    m = gpuad.nn.Sequential(gpuad.nn.Linear(64, 512), gpuad.nn.GELU(), gpuad.nn.LayerNorm(512),
                            gpuad.nn.Linear(512, 10))
    x = gpuad.tensor(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))

    def step(x):
        for p in m.parameters():
            p.grad = None
        loss = m(x).square().mean()
        loss.backward()
        return loss, [p.grad for p in m.parameters()]
    want = step(x)
    want = (want[0].item(), [g.numpy().copy() for g in want[1]])
    f = gpuad.compile(step)
    scope = None
    for call in range(cpu_codegen.TIER_AFTER + 2):      # the kernels come in after TIER_AFTER calls
        got = f(x)
        scope = f.compiled(x).fn.__globals__
        tiered = any(getattr(v, "kernel", None) is not None for v in scope.values())
        assert tiered == (call >= cpu_codegen.TIER_AFTER), call
        assert want[0] == got[0].item()
        for a, b in zip(want[1], got[1]):
            np.testing.assert_array_equal(a, b.numpy())


def test_an_unwritable_cache_keeps_the_numpy_executor_with_a_warning(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("GPUAD_CACHE_DIR", str(blocked))
    monkeypatch.setattr(cpu_codegen, "_warned", [])
    k = _group(CASES["arithmetic with numbers"], (33, 1001))
    x = np.random.default_rng(2).standard_normal(k.shape).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="cannot write generated CPU kernels"):
        run = cpu_codegen.runner(k, now=True)
    assert run is k
    lazy = cpu_codegen.runner(k)                       # tiered: the failure comes at its third call
    for _ in range(cpu_codegen.TIER_AFTER + 2):
        np.testing.assert_array_equal(lazy(x)[0], k(x)[0])
