"""gpuad.compile's generated Triton kernels (#14), without a GPU: every fused group
of a fixed set of compiled steps (the gelu block, an MLP step, a GPT step, softmax
rows) runs through Triton's interpreter and must equal the numpy executor's kernel
within 1e-6 of its output's magnitude (fp32); the same kernels compile for sm_90
ahead of time. Sizes are small and irregular: the interpreter is slow."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim
from gpuad.compiler.codegen import triton_groups as tc
from tests.test_compile import train_step

triton = pytest.importorskip("triton")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.interpreter
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gelu_block(dtype="float32"):
    """The gelu block step and its tensors (a 16-bit dtype: groups that load and store 16 bits)."""
    rng = np.random.default_rng(0)
    ts = [gpuad.tensor(rng.standard_normal(s).astype(np.float32)).astype(dtype).requires_grad_()
          for s in ((33, 70), (70,), (70,))]

    def step(x, w, b):
        x.grad = w.grad = b.grad = None
        y = (F.gelu(x * w + b) + x).sum()
        y.backward()
        return y
    return step, ts


def _mlp():
    gpuad.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 20), nn.GELU(), nn.Linear(20, 5))
    opt = optim.Adam(m.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    x, y = gpuad.tensor(rng.standard_normal((9, 12)).astype(np.float32)), gpuad.tensor(rng.integers(0, 5, 9))
    return train_step(m, opt), [x, y]


def _gpt():
    gpuad.manual_seed(0)
    m = nn.GPT(13, 8, d_model=16, n_layers=1, n_heads=2)
    opt = optim.AdamW(m.parameters(), lr=1e-2)
    ids = np.random.default_rng(2).integers(0, 13, (3, 9))
    x, y = gpuad.tensor(ids[:, :-1]), gpuad.tensor(ids[:, 1:])
    return train_step(m, opt), [x, y]


def _softmax_rows():
    x = gpuad.tensor(np.random.default_rng(3).standard_normal((6, 37)).astype(np.float32), requires_grad=True)

    def step(x):
        x.grad = None
        y = (F.softmax(x * 1.5, dim=-1) * x).sum(-1).tanh().sum() + F.log_softmax(x, -1).mean()
        y.backward()
        return y
    return step, [x]


GRAPHS = {"gelu block": _gelu_block, "MLP step": _mlp, "GPT step": _gpt, "softmax rows": _softmax_rows}
GRAPHS_16 = {"gelu block float16": lambda: _gelu_block("float16"), "gelu block bfloat16": lambda: _gelu_block("bfloat16")}


def _groups(name):
    step, args = {**GRAPHS, **GRAPHS_16}[name]()
    f = gpuad.compile(step)
    f(*args)
    return f, args, [e.params["kernel"].value for e in f.compiled(*args).graph.eqns if e.prim == "fused"]


def _random_inputs(k, rng):
    return [rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else
            (rng.random(v.shape) < 0.5 if v.dtype.kind == "b" else rng.integers(0, 3, v.shape).astype(v.dtype))
            for v in k.ins]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUAD_CACHE_DIR", str(tmp_path / "kernels"))


@pytest.mark.cpu_only("Triton's interpreter runs on host arrays")
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_generated_kernels_equal_the_numpy_executor(name):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels in Triton's interpreter")
    _, _, groups = _groups(name)
    rng = np.random.default_rng(7)
    ran = 0
    for k in groups:
        if tc.kernel(k) is None:
            continue
        ins = _random_inputs(k, rng)
        with np.errstate(all="ignore"):
            want = k(*ins)
        got = tc.launch(k, ins, [np.empty(o.shape, o.dtype) for o in k.outs], torch_like=torch.from_numpy)
        for w, g, o in zip(want, got, k.outs):
            w, g = np.asarray(w), np.asarray(g)
            if o.dtype.kind == "b":
                np.testing.assert_array_equal(g, w)
                continue
            scale = float(np.nanmax(np.abs(w))) or 1.0
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * scale, equal_nan=True,
                                       err_msg=f"{name}: group {[m.prim for m in k.members]}")
        ran += 1
    assert ran >= 1 and ran >= len(groups) // 2, f"{name}: {ran} of {len(groups)} groups have a Triton kernel"


def test_kernels_are_printable_and_cached_on_disk_by_their_hash():
    f, args, groups = _groups("gelu block")
    text = f.kernels(*args)
    assert text.count("@triton.jit") >= 2 and "tl.math.erf" in text
    fn = tc.kernel(groups[0])
    path = tc.module_path(tc.source(groups[0]))
    assert os.path.dirname(path) == tc.cache_dir() and os.path.exists(path)
    assert tc.kernel(groups[0]) is fn                                        # the same source: the same kernel
    with open(path) as fh:
        assert fh.read() == tc.source(groups[0])


def test_a_member_without_a_triton_form_keeps_the_group_on_numpy():
    x = gpuad.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    f = gpuad.compile(lambda x: (x.log1p() * 2).sum())
    f(x)
    (k,) = [e.params["kernel"].value for e in f.compiled(x).graph.eqns if e.prim == "fused"]
    assert tc.kernel(k) is None
    assert "no Triton kernel (log1p)" in f.kernels(x)


_PTR = {"float32": "*fp32", "float64": "*fp64", "float16": "*fp16", "bfloat16": "*bf16", "bool": "*i1",
        "int64": "*i64", "int32": "*i32"}


@pytest.mark.cpu_only("Triton's interpreter runs on host arrays")
@pytest.mark.parametrize("name", sorted(GRAPHS_16))
def test_16_bit_groups_compute_in_float32(name):
    """Triton's exp, log, sqrt, erf and tanh take fp32 or fp64 only: a 16-bit group loads,
    upcasts, computes in fp32 and rounds when it stores; it runs (in the interpreter)
    and agrees with the numpy executor to the 16-bit type's precision."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels in Triton's interpreter")
    _, _, groups = _groups(name)
    sixteen = [k for k in groups if any(np.dtype(o.dtype).name in ("float16", "bfloat16") for o in k.outs)
               and tc.kernel(k) is not None]
    assert sixteen, f"{name}: no 16-bit group with a Triton kernel"
    rng = np.random.default_rng(3)
    for k in sixteen:
        text = tc.source(k)
        assert ".to(tl.float32)" in text and "tl.store" in text
        ins = _random_inputs(k, rng)
        with np.errstate(all="ignore"):
            want = k(*ins)
        got = tc.launch(k, ins, [np.empty(o.shape, o.dtype) for o in k.outs], torch_like=_torch_16)
        for w, g in zip(want, got):
            w, g = np.asarray(w, np.float32), np.asarray(g, np.float32)
            np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-2 * (float(np.abs(w).max()) or 1.0))


def _torch_16(a):
    """torch.from_numpy, with ml_dtypes' bfloat16 (which torch cannot take) viewed as torch's."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _ptr_types(k):
    """Triton's pointer type of each array argument of group k's generated kernel."""
    ptrs = {f"{n}_ptr": _PTR[np.dtype(a.dtype if hasattr(a, "dtype") and not hasattr(a, "value")
                                      else np.asarray(a.value).dtype).name] for n, a in tc._inputs(k)}
    ptrs.update({f"o{j}_ptr": _PTR[o.dtype.name] for j, o in enumerate(k.outs)})
    return ptrs | {"*": "*fp32"}


def _compile_for_sm90(cases):
    """ptxas' resources per case (tests/aot_compile.py, in a process without the
    interpreter); skips the test where no case can compile for sm_90 here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "aot_compile.py")], input=json.dumps(cases),
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    if all("skip" in res for res in results.values()):
        pytest.skip(next(iter(results.values()))["skip"])
    return results


@pytest.mark.cpu_only("compiles the host replay's groups ahead of time")
def test_generated_kernels_compile_for_sm90(tmp_path):
    """Every generated kernel of the MLP, GPT and gelu-block steps through Triton's
    compiler and ptxas for an H200: no spills, at most 255 registers."""
    cases = {}
    for name in ("gelu block", "MLP step", "GPT step", *GRAPHS_16):
        _, _, groups = _groups(name)
        for i, k in enumerate(groups):
            try:
                text = tc.source(k)
            except tc.Unsupported:
                continue
            reduce = k.reduces
            block = max(16, 1 << (k.shape[-1] - 1).bit_length()) if reduce else tc.BLOCK
            cases[f"{name}-{i}"] = {"path": tc.module_path(text), "kernel": "fused_kernel", "ptrs": _ptr_types(k),
                                    "constexprs": {"BLOCK": block}, "warps": 4, "stages": 1}
    assert len(cases) >= 6
    results = _compile_for_sm90(cases)
    skipped = [n for n, res in results.items() if "skip" in res]
    assert len(results) - len(skipped) >= 6
    for n, res in results.items():
        assert "error" not in res, (n, res["error"])
        if "skip" not in res:
            assert res["spills"] == 0 and res["regs"] <= 255, (n, res)


@pytest.mark.parametrize("name", ["MLP step", "GPT step"])
def test_whole_compiled_steps_with_triton_groups_match_the_numpy_executor(name):
    """The device path end to end on the CPU: with gpuad.set_kernels('triton') (the
    interpreter) every fused group of the replay runs as its generated kernel. The loss
    and the gradients of a training step agree with the numpy executor's to float32
    rounding. (Parameters after Adam would not: Adam's first step is lr * sign(g),
    so a gradient near 0 may flip.)"""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels in Triton's interpreter")
    runs = []
    for kernels in (None, "triton"):
        step, args = GRAPHS[name]()
        params = gc_params(step)
        gpuad.set_kernels(kernels)
        try:
            f = gpuad.compile(step)
            loss = f(*args).item()
            src = f.source(*args)
        finally:
            gpuad.set_kernels(None)
        runs.append((loss, [p.grad.numpy().copy() for p in params], src))
    assert "fused" in runs[1][2]
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-6)
    for a, b in zip(runs[1][1], runs[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max() or 1))


def gc_params(step):
    from gpuad.compiler.state import discover
    return [t for t in discover(step).tensors if t.requires_grad]


def _gemm_groups(name):
    """The GEMM-with-epilogue groups of a step compiled with Triton groups (the pass runs
    where groups are Triton kernels)."""
    step, args = GRAPHS[name]()
    gpuad.set_kernels("triton")
    try:
        f = gpuad.compile(step)
        f(*args)
        eqns = f.compiled(*args).graph.eqns
    finally:
        gpuad.set_kernels(None)
    return [e.params["kernel"].value for e in eqns if e.prim == "fused" and hasattr(e.params["kernel"].value, "mm")]


def _gemm_inputs(k, rng, transposed=True):
    """Random factors (the second as a transposed view, as nn.Linear's x @ W.T has it) and
    random epilogue operands."""
    a, b = (rng.standard_normal(v.shape).astype(v.dtype) for v in k.ins[:2])
    if transposed:
        b = np.ascontiguousarray(b.T).T
    return [a, b] + _random_inputs(type("G", (), {"ins": k.rest})(), rng)


@pytest.mark.cpu_only("Triton's interpreter runs on host arrays")
@pytest.mark.parametrize("name", ["MLP step", "GPT step"])
def test_gemm_epilogue_kernels_equal_matmul_then_the_group(name):
    """Each matmul whose only reader is an elementwise group (bias, activation, residual)
    becomes one kernel; in the interpreter it gives numpy's matmul followed by the group
    (to float32 rounding: tl.dot sums in another order)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels in Triton's interpreter")
    groups = _gemm_groups(name)
    assert len(groups) >= 2, f"{name}: {len(groups)} GEMM epilogues"
    rng = np.random.default_rng(11)
    for k in groups:
        assert "tl.dot" in tc.source(k) and not k.inplace_ok
        for transposed in (True, False):
            ins = _gemm_inputs(k, rng, transposed)
            with np.errstate(all="ignore"):
                want = k(*ins)
            got = tc.launch_gemm(k, ins, [np.empty(o.shape, o.dtype) for o in k.outs], torch_like=torch.from_numpy)
            for w, g in zip(want, got):
                scale = float(np.nanmax(np.abs(w))) or 1.0
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale,
                                           err_msg=f"{name}: matmul{[m.prim for m in k.group.members]}")


def test_gemm_epilogue_pass_legality():
    """Fused only where nothing else reads the product, the weight is 2-D and the dtypes
    are a dot's; a first factor whose rows do not collapse runs matmul, then the group."""
    from gpuad.compiler.ir import Graph
    from gpuad.compiler.passes import epilogue, fuse
    f32 = np.float32

    def graph(w_shape=(3, 5), dtype=f32, also_return=False):
        g = Graph()
        x = g.input((2, 4, 3), dtype, "x")
        w = g.input(w_shape, dtype, "w")
        b = g.input((5,), dtype, "b")
        y = g.add_eqn("matmul", (x, w), {}, (2, 4, 5) if len(w_shape) == 2 else (2, 4, 5), dtype)
        z = g.add_eqn("tanh", (g.add_eqn("add", (y, b), {}, (2, 4, 5), dtype),), {}, (2, 4, 5), dtype)
        g.outputs = [z, y] if also_return else [z]
        return g
    prims = lambda g: [e.params["kernel"].name if e.prim == "fused" else e.prim   # noqa: E731
                       for e in epilogue.run(fuse.run(g)).eqns]
    assert prims(graph()) == ["matmul{add,tanh}"]
    assert prims(graph(also_return=True)) == ["matmul", "{add,tanh}"]
    assert prims(graph(dtype=np.float64)) == ["matmul", "{add,tanh}"]
    assert prims(graph(w_shape=(2, 3, 5))) == ["matmul", "{add,tanh}"]
    k = epilogue.run(fuse.run(graph())).eqns[0].params["kernel"].value
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3)).astype(f32).transpose(1, 0, 2)     # rows that do not collapse
    w, b = rng.standard_normal((3, 5)).astype(f32), rng.standard_normal(5).astype(f32)
    assert tc.rows(x) is None and tc.rows(np.ascontiguousarray(x)) == (3, 1)
    run = tc.runner(gpuad.backends.numpy_ns)(k)
    np.testing.assert_allclose(run(x, w, b)[0], np.tanh(x @ w + b), rtol=1e-6)


@pytest.mark.cpu_only("compiles the host replay's groups ahead of time")
def test_gemm_epilogue_kernels_compile_for_sm90():
    """The GEMM kernels through Triton's compiler and ptxas for an H200: no spills, at
    most 255 registers, shared memory within the block limit (their tiles are staged
    there)."""
    cases = {}
    for name in ("MLP step", "GPT step"):
        for i, k in enumerate(_gemm_groups(name)):
            ptrs = _ptr_types(k) | {"_a_ptr": _PTR[k.ins[0].dtype.name], "_b_ptr": _PTR[k.ins[1].dtype.name]}
            cases[f"{name}-gemm-{i}"] = {"path": tc.module_path(tc.source(k)), "kernel": "gemm_kernel",
                                         "ptrs": ptrs, "constexprs": {**tc.GEMM_BLOCKS, "PRECISION": "ieee"},
                                         "warps": tc.GEMM_WARPS, "stages": 2}
    assert len(cases) >= 4
    for n, res in _compile_for_sm90(cases).items():
        assert "error" not in res, (n, res["error"])
        assert res["spills"] == 0 and res["regs"] <= 255 and res.get("shared", 0) <= 232448, (n, res)
