"""Compiled against eager against torch, at every size the code branches on (#28).

Random programs (tests/programs.py: every primitive and composite, broadcasts,
row and column reductions, softmax, matmul, indexing, in-place writes, optimizer
updates) run three ways:

- gpuad.compile against gpuad eager: bitwise, or within 4 ulp (a fused row
  reduction or a one-element group on Python floats may round the last bit
  differently);
- gpuad eager against torch, float64: within 1e-10;
- forward mode (gpuad.jvp) against reverse mode, and the compiled replay with
  gpuad.set_kernels("triton") (Triton's interpreter) against eager, at small sizes.

The sizes straddle every size threshold in gpuad (test_sizes_cross_every_threshold
finds the thresholds in the source, so a new one fails it until a size crosses it).
`make test` runs a fixed subset (about 40 s here); `pytest tests/test_differential.py
--fuzz=N` runs N more programs at random sizes.
"""
import ast
import os

import numpy as np
import pytest

import gpuad
from tests import programs as P

torch = pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (rows, columns): one element (the scalar kernels), below TINY, below INPLACE_MIN,
# from INPLACE_MIN to CHUNK (and exactly SHARE_MIN bytes in float64), above CHUNK,
# more keys than an attention TILE, and rows longer than a CHUNK
SIZES = [(1, 1), (3, 5), (16, 48), (4, 512), (8, 1024), (40, 1024), (160, 96), (2, 20000)]
SMALL = [s for s in SIZES if s[0] * s[1] <= 2048]

G, T = P.Lib(gpuad), P.Lib(torch)


def assert_ulp(a, b, what, maxulp=4):
    """a and b equal to within maxulp units in the last place of each element, or of the
    array's largest element (an element that cancels, big - big, keeps the absolute
    error of its terms); NaN and infinities in the same places."""
    if b is None or a is None:
        assert a is None and b is None or not np.any(a if a is not None else b), what
        return
    assert a.shape == b.shape and a.dtype == b.dtype, what
    finite = np.isfinite(b)
    assert np.array_equal(np.isnan(a), np.isnan(b)), what
    assert np.array_equal(a[~finite & ~np.isnan(b)], b[~finite & ~np.isnan(b)]), what
    a, b = a[finite], b[finite]
    if not b.size:
        return
    scale = np.spacing(np.max(np.abs(b)).astype(b.dtype))
    bound = maxulp * np.maximum(np.spacing(np.maximum(np.abs(a), np.abs(b))), scale)
    err = np.abs(a.astype(np.float64) - b.astype(np.float64))
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (f"{what}: {a[worst]!r} against {b[worst]!r}, "
                                  f"{err[worst] / np.spacing(np.abs(b[worst])):.0f} ulp")


def assert_torch(a, b, what):
    """Within 1e-10 of torch's value, relative to it or to the array's largest element."""
    if b is None:
        assert a is None or not np.any(a), what
        return
    a = np.zeros_like(b) if a is None else a
    scale = float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * max(1.0, scale), err_msg=what)


def _pairs(x, y):
    keys = sorted(x)
    for k in keys:
        xs, ys = (x[k], y[k]) if isinstance(x[k], list) else ([x[k]], [y[k]])
        assert len(xs) == len(ys), k
        for i, (a, b) in enumerate(zip(xs, ys)):
            yield f"{k} {i}", a, b


def check_grad(prog, against_torch=True):
    eager = P.run_grad(G, prog)
    compiled = P.run_grad(G, prog, compiled=True)
    for what, a, b in _pairs(compiled, eager):
        assert_ulp(a, b, f"compiled vs eager, {what}, {prog}")
    if against_torch and not prog.random and np.dtype(prog.dtype) == np.float64:
        for what, a, b in _pairs(eager, P.run_grad(T, prog)):
            assert_torch(a, b, f"eager vs torch, {what}, {prog}")


def _cases(seeds, sizes=SIZES):
    return [pytest.param(seed, size, id=f"{size[0]}x{size[1]}-{seed}") for size in sizes for seed in seeds]


@pytest.mark.parametrize("seed,size", _cases(range(20)))
def test_programs_compiled_eager_torch(seed, size):
    check_grad(P.program(seed, size, length=12))


@pytest.mark.parametrize("seed,size", _cases(range(4), [(16, 48), (8, 1024), (40, 1024), (2, 20000)]))
def test_float32_programs_compiled_equal_eager(seed, size):
    # float32 takes other paths (the erf table, float32 donation sizes); no torch oracle at this precision
    check_grad(P.program(100 + seed, size, length=10, dtype=np.float32))


@pytest.mark.parametrize("opt", sorted(P.OPTIMIZERS))
@pytest.mark.parametrize("size", [(3, 5), (8, 1024), (40, 1024)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_training_steps_compiled_eager_torch(opt, size):
    """Backward, then an optimizer update in place, twice: the compiled step's losses,
    parameters, gradients and optimizer state against eager's and torch's."""
    prog = P.program(200 + SIZES.index(size), size, length=6, random=False)
    eager = P.run_step(G, prog, opt)
    compiled = P.run_step(G, prog, opt, compiled=True)
    for what, a, b in _pairs(compiled, eager):
        assert_ulp(a, b, f"compiled vs eager step ({opt}), {what}, {prog}")
    for what, a, b in _pairs(eager, P.run_step(T, prog, opt)):
        assert_torch(a, b, f"eager vs torch step ({opt}), {what}, {prog}")


# ops that round through float32 (a cast, a dropout mask): forward and reverse mode round
# different quantities there, so they agree to float32 precision only
_F32_ROUNDING = {"astype", "dropout", "sdpa_dropout"}


def check_jvp(prog):
    """gpuad.jvp of the loss along a direction equals <gradient, direction> from reverse
    mode, relative to the sum of |gradient * direction| (the terms it adds)."""
    xs = [gpuad.tensor(v) for v in prog.leaves]
    ts = [gpuad.tensor(d) for d in prog.direction]
    loss, tangent = gpuad.jvp(lambda *xs: P.forward(G, prog, xs)[1], tuple(xs), tuple(ts))
    rev = P.run_grad(G, prog)
    terms = [g * d for g, d in zip(rev["grads"], prog.direction) if g is not None]
    want = sum(float(np.sum(t)) for t in terms)
    scale = max(1.0, sum(float(np.sum(np.abs(t))) for t in terms))
    tol = 1e-5 if np.dtype(prog.dtype) == np.float32 else \
        1e-6 if any(s[0] in _F32_ROUNDING for s in prog.steps) else 1e-10
    assert_ulp(loss.numpy(), rev["loss"], f"jvp's value, {prog}")
    assert abs(float(tangent) - want) <= tol * scale, f"jvp {float(tangent)!r}, reverse {want!r}: {prog}"


# (1, 1) is left out: there a program meets exact zeros (a one-class cross-entropy, a
# one-element norm), kinks where forward mode's rules and reverse mode's subgradients
# (torch's) legitimately differ
@pytest.mark.parametrize("seed,size", _cases(range(6), [s for s in SIZES if s != (1, 1)]))
def test_forward_mode_equals_reverse_mode(seed, size):
    check_jvp(P.program(300 + seed, size, length=8))


@pytest.mark.interpreter
@pytest.mark.parametrize("seed,size", _cases(range(3), [(3, 5), (16, 48), (4, 512)]))
def test_triton_replay_equals_eager(seed, size):
    """With set_kernels("triton"), fused groups and fused primitives run as Triton kernels
    in the interpreter: float32, to float32 rounding of a reordered reduction."""
    pytest.importorskip("triton")
    from gpuad.backends import numpy_ns
    from gpuad.providers import provider_name
    prog = P.program(400 + seed, size, length=6, dtype=np.float32)
    eager = P.run_grad(G, prog)
    gpuad.set_kernels("triton")
    try:
        assert provider_name(numpy_ns) == "triton", "TRITON_INTERPRET=1 is not set: nothing would run in Triton"
        compiled = P.run_grad(G, prog, compiled=True)
        kernels_eager = P.run_grad(G, prog)
    finally:
        gpuad.set_kernels(None)
    for got in (compiled, kernels_eager):
        for what, a, b in _pairs(got, eager):
            if b is None:
                assert a is None or not np.any(a), what
                continue
            scale = max(1.0, float(np.max(np.abs(b[~np.isnan(b)]), initial=0.0)))
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{what}, {prog}")


def test_the_relu_example_of_the_issue():
    x = gpuad.tensor(np.random.default_rng(0).standard_normal((8, 1024)))
    lw = gpuad.tensor(np.random.default_rng(1).standard_normal((8, 1024)))
    for op in ("relu", "floor", "ceil", "trunc", "sign", "round"):
        f = lambda x: (getattr(gpuad, op)(x + 0.0137) * lw).sum()  # noqa: E731
        (v0, g0), (v1, g1) = gpuad.value_and_grad(f)(x), gpuad.compile(gpuad.value_and_grad(f))(x)
        np.testing.assert_array_equal(g1.numpy(), g0.numpy(), err_msg=op)
        assert v0.item() == v1.item()


# -- coverage: every primitive, every threshold ------------------------------------------------

def test_programs_cover_every_primitive():
    """A primitive registered without an op in the programs fails here (unary ones join by
    their declaration; others need an entry in tests/programs.py)."""
    from gpuad.ops import REGISTRY
    seen = set()
    for name in P.all_ops():
        seen |= P.primitives_of(G, name)
    missing = {n for n, p in REGISTRY.items() if p.differentiable} - seen - P.TEST_ONLY
    assert not missing, f"primitives no differential program records: {sorted(missing)}"


# Every module-level integer constant in gpuad/ and kernels/ that a size is compared
# with, by unit. "elements" and "bytes" are crossed by the programs' sizes (bytes in
# both float32 and float64); "row" by the length of their last axis; "keys" by the
# rows attention reads as keys.
THRESHOLDS = {
    "gpuad/memory/pool.py:INPLACE_MIN": "elements",
    "gpuad/engine/policy.py:DONATE_MIN": "elements",
    "gpuad/compiler/codegen/python_replay.py:CHUNK": "elements",
    "gpuad/compiler/codegen/python_replay.py:TINY": "elements",
    "gpuad/compiler/passes/fold.py:MAX_FOLD": "elements",
    "gpuad/backends/numpy_backend.py:_ERF_CHUNK": "elements",
    "gpuad/backends/cpu_kernels.py:MIN_SIZE": "elements",
    "gpuad/compiler/codegen/numba_groups.py:MIN_ELEMENTS": "elements",
    "gpuad/compiler/codegen/triton_groups.py:BLOCK": "elements",
    "gpuad/compiler/pipeline.py:SHARE_MIN": "bytes",
    "gpuad/compiler/passes/cse.py:SMALL": "bytes",
    "gpuad/compiler/codegen/triton_groups.py:MAX_ROW": "row",
    "gpuad/ops/attention.py:TILE": "keys",
}
# constants that are not sizes of arrays, and why
NOT_SIZES = {
    "gpuad/engine/anomaly.py:KEEP": "a count of recorded creation stacks (anomaly mode only)",
    "gpuad/ops/conv.py:WORKSPACE": "bytes of im2col columns per batch chunk: chunked and whole convolutions give "
                                  "the same values (tests/test_cnn.py)",
    "gpuad/compiler/passes/fuse.py:HORIZON": "a count of equations",
    "gpuad/compiler/passes/buffers.py:ALIGN": "an alignment",
    "gpuad/memory/pool.py:_ALIGN": "an alignment",
    "gpuad/memory/pool.py:_GRAIN": "the pool's block rounding: every size is rounded the same way",
    "gpuad/compiler/passes/remat.py:MAX_CHAIN": "a count of equations",
    "gpuad/compiler/passes/remat.py:MAX_STEPS": "a count of search steps",
    "gpuad/compiler/passes/remat.py:MAX_STALE": "a count of search steps",
    "gpuad/compiler/state.py:MAX_WALK": "the length of a Python list searched for state",
    "gpuad/compiler/compiled.py:RETRACE_WARN": "a count of traces",
    "gpuad/compiler/codegen/triton_groups.py:GEMM_WARPS": "warps per GEMM program (its registers: the sm_90 compile test)",
    "gpuad/compiler/codegen/numba_groups.py:PARALLEL_MIN": "elements x work: whether a kernel runs on one thread or all; "
                                                  "both give the same bits (tests/test_cpu_kernels.py)",
    "gpuad/backends/cpu_kernels.py:PARALLEL_MIN": "elements: one thread or all for the erf kernel; both give "
                                                  "the same bits (tests/test_cpu_kernels.py)",
    "gpuad/compiler/codegen/numba_groups.py:TIER_AFTER": "a count of calls before a group's kernel is compiled "
                                                "(tests/test_cpu_codegen.py)",
    "gpuad/compiler/compiled.py:MAX_PATHS": "a count of traced paths (tested in test_compile_branches)",
    "gpuad/compiler/compiled.py:VARYING": "a count of values met at a branch (tested in test_compile_branches)",
    "kernels/linear.py:SMEM_LIMIT": "the GPU's shared memory per block (checked by the sm_90 compile test)",
    "kernels/flash_attention.py:MAX_HEAD_DIM": "a head dimension: the Triton kernel's limit, tested in test_attention",
    "kernels/flash_attention.py:MAX_HEAD_DIM_MASKED": "a head dimension: the Triton kernel's limit, tested in test_attention",
    "kernels/flash_attention.py:MAX_HEAD_DIM_IEEE_BACKWARD": "a head dimension: the fp32 IEEE backward kernel's limit "
                                                       "(a GPU's; the interpreter takes any)",
}


_ALL_CONSTS = {}     # imported names resolve by their value where it is known (INPLACE_MIN)


def _int_constants():
    """'path:NAME' -> value for every module-level NAME = <integer expression> in gpuad/ and kernels/."""
    found = {}
    for top in ("gpuad", "kernels"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)
                scope = {}          # earlier constants of the module: DONATE_MIN = INPLACE_MIN
                for node in ast.parse(open(path).read()).body:
                    if isinstance(node, ast.ImportFrom):
                        for alias in node.names:
                            scope.setdefault(alias.asname or alias.name, None)
                    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                        continue
                    name = getattr(node.targets[0], "id", None)
                    if not name or name.lstrip("_") != name.lstrip("_").upper():
                        continue
                    try:
                        value = eval(compile(ast.Expression(node.value), path, "eval"), dict(_ALL_CONSTS, **{
                            k: v for k, v in scope.items() if v is not None}))
                    except Exception:
                        continue
                    scope[name] = _ALL_CONSTS[name] = value
                    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                        found[f"{rel}:{name}"] = value
    return found


def test_sizes_cross_every_threshold():
    _int_constants()                    # twice: names imported from a module read later resolve
    consts = _int_constants()
    unknown = set(consts) - set(THRESHOLDS) - set(NOT_SIZES)
    assert not unknown, (f"integer constants the differential test does not know: {sorted(unknown)}; add each "
                         f"to THRESHOLDS (with its unit) or to NOT_SIZES (with why it is not a size)")
    gone = (set(THRESHOLDS) | set(NOT_SIZES)) - set(consts)
    assert not gone, f"listed constants that no longer exist: {sorted(gone)}"
    measures = {
        "elements": [r * c for r, c in SIZES],
        "bytes": [r * c * n for r, c in SIZES for n in (4, 8)],
        "row": [c for _, c in SIZES],
        "keys": [r for r, _ in SIZES],
    }
    for key, unit in THRESHOLDS.items():
        t = consts[key]
        got = measures[unit]
        assert min(got) < t <= max(got), f"{key} = {t} {unit}: the sizes {sorted(set(got))} do not cross it"


def test_threshold_check_can_fail():
    """The crossing check itself: sizes that stay below CHUNK do not cross it."""
    from gpuad.compiler.codegen.python_replay import CHUNK
    small = [r * c for r, c in SIZES if r * c < CHUNK]
    assert not (min(small) < CHUNK <= max(small))


# -- long runs ---------------------------------------------------------------------------------

def test_fuzz(request):
    n = request.config.getoption("--fuzz")
    if not n:
        pytest.skip("the long sweep runs with --fuzz=N")
    rng = np.random.default_rng(12345)
    for seed in range(5000, 5000 + n):
        size = SIZES[rng.integers(len(SIZES))] if rng.random() < 0.7 else \
            (int(rng.integers(1, 64)), int(rng.integers(1, 1500)))
        dtype = np.float64 if rng.random() < 0.8 else np.float32
        prog = P.program(seed, size, length=int(rng.integers(4, 16)), dtype=dtype)
        try:
            check_grad(prog)
            if size != (1, 1) and not prog.random:
                check_jvp(prog)
        except Exception as e:
            raise AssertionError(f"{prog}: {type(e).__name__}: {e}") from e
