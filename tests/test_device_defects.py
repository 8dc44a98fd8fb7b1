"""The device defects two reviews of the GPU path found (#21, #29), one test each.

Most run on the strict CuPy stand-in only (`pytest --device=cuda-standin`, the second
pass of `make test`): there, `import cupy` is tests/cupy_standin, which refuses what
CuPy refuses (numpy operands, implicit host conversion, numpy-only flags, host reads
while a stream captures). Each of these failed on the stand-in before its fix. A few
check host-side logic (Triton's launch grid, the gpu-check script) and run on the CPU.
"""
import os

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim
from tests.device_plugin import DEVICE

standin = pytest.mark.skipif(DEVICE != "cuda-standin", reason="runs on the CuPy stand-in device (--device=cuda-standin)")
R = np.random.default_rng(11)


def _cpu(t):
    return gpuad.tensor(t.numpy(), device="cpu")


def _on_device(t):
    return type(t.data).__module__.startswith("cupy")


# --- #21: the second review ----------------------------------------------------------------

@standin
def test_linear_pruner_takes_the_device_argument_wrapper():
    """Triton's Autotuner calls early_config_prune with the launch's arguments: on a
    device those are gpuad's CuPy shims, which have a dtype and no element_size()."""
    import cupy
    import triton
    from gpuad.backends.triton_backend import _CupyArg
    from kernels import linear as L
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
               for bm, bn, bk, w, st in L.CANDIDATES]
    # through Triton's own Autotuner, as a device launch reaches it (the pruner sees the
    # launch's arguments as they are passed: gpuad's shims)
    tuned = triton.autotune(configs=configs, key=["M", "N", "K"],
                            prune_configs_by={"early_config_prune": L.pruner("fwd")})(L.linear_fwd_kernel)
    for dtype, itemsize in ((cupy.float16, 2), (cupy.float32, 4)):
        tuned.nargs = {"x_ptr": _CupyArg(cupy.zeros((4, 4), dtype))}
        kept = tuned.prune_configs({})
        want = L.kept("fwd", itemsize)
        assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
                for c in kept] == want


@standin
def test_ddp_step_over_nccl_on_the_device():
    """A one-rank NCCL world: DDP's buckets all-reduce device gradients and write them
    back (CuPy's Flags has no `writeable`); the gradients equal the plain step's."""
    import copy
    import gpuad.distributed as dist
    world = dist.init("nccl")
    try:
        gpuad.manual_seed(0)
        net = nn.MLP([16, 32, 8], activation="tanh")
        ref = copy.deepcopy(net)
        ddp = nn.parallel.DistributedDataParallel(net, bucket_bytes=1 << 10)
        x, y = (gpuad.tensor(R.standard_normal(s).astype(np.float32)) for s in ((4, 16), (4, 8)))
        for model in (ddp, ref):
            model.zero_grad()
            F.mse_loss(model(x), y).backward()
        for a, b in zip(net.parameters(), ref.parameters()):
            assert _on_device(a.grad)
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-6)
        h = world.ibarrier("barrier")
        h.wait()
        assert world.name == "nccl" and h.keep is None           # released once the collective is done
    finally:
        dist.destroy()


@standin
def test_nccl_barrier_keeps_its_buffer_until_done():
    import gpuad.distributed as dist
    world = dist.init("nccl")
    try:
        h = world.ibarrier("barrier")
        assert h.keep is not None and _on_device(gpuad.Tensor._from(h.keep))
        h.wait()
        assert h.keep is None
    finally:
        dist.destroy()


def _mlp_step(dropout=0.0, seed=0):
    gpuad.manual_seed(seed)
    m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 4))
    opt = optim.AdamW(m.parameters(), lr=1e-2)
    x = gpuad.tensor(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))
    y = gpuad.tensor(np.array([0, 3, 1, 2, 1]))

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)          # a guard (no target is ignore_index) and arange in a group
        loss.backward()
        opt.step()
        return loss
    return step, m


def _gpt_step():
    from tests.test_compile_triton import _gpt
    step, args = _gpt()
    return (lambda: step(*args)), None


@standin
@pytest.mark.parametrize("make", [lambda: _mlp_step(), lambda: _mlp_step(dropout=0.3), _gpt_step],
                         ids=["mlp", "mlp-dropout", "gpt"])
def test_compiled_steps_capture_one_cuda_graph_and_equal_eager(make):
    """The compiled step on the device: host constants moved at build, random draws made
    before the replay, guards read after it, and one CUDA graph captured on the second
    call (no host read or host-to-device copy during the capture), in the replay's
    private pool on one stream: the capture reuses the blocks the first call warmed."""
    import warnings
    from gpuad.compiler.graphs import CupyGraphs
    from gpuad.compiler.ir import Literal, map_leaves
    sizes = {}
    for name in ("warmup", "capture"):
        def spy(self, *a, _f=getattr(CupyGraphs, name), _n=name):
            out = _f(self, *a)
            sizes[_n] = self.pool.total_bytes()
            return out
        setattr(CupyGraphs, f"_orig_{name}", getattr(CupyGraphs, name))
        setattr(CupyGraphs, name, spy)
    try:
        runs = _compare(make, Literal, map_leaves)
    finally:
        for name in ("warmup", "capture"):
            setattr(CupyGraphs, name, getattr(CupyGraphs, f"_orig_{name}"))
    # the capture took every block from the arena the first call warmed on the same stream
    assert sizes["capture"] == sizes["warmup"] > 0, sizes
    (eager, ep), (comp, cp) = runs
    np.testing.assert_allclose(comp, eager, rtol=1e-6)
    for a, b in zip(cp, ep):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _compare(make, Literal, map_leaves):
    import warnings
    runs = []
    for compiled in (False, True):
        step, m = make()
        f = gpuad.compile(step) if compiled else step
        gpuad.manual_seed(7)
        with warnings.catch_warnings():
            warnings.simplefilter("error")           # a failed capture warns: it must not happen
            warnings.filterwarnings("ignore", "gpuad: the Triton driver", RuntimeWarning)
            losses = [float(f().item()) for _ in range(4)]
        runs.append((losses, [p.numpy().copy() for p in m.parameters()] if m is not None else []))
        if compiled:
            entry = f.compiled()
            replay = entry.fn
            # (the first call made the optimizer's state, so the second traced again: its entry
            # ran calls 2-4, warm-up, capture, one more launch)
            assert replay.captures == 1 and not replay.failed and replay.graph.launches == replay.calls - 1 >= 2
            found = []
            map_leaves([e.args for e in entry.graph.eqns], lambda a: found.append(a.value)
                       if isinstance(a, Literal) and isinstance(a.value, np.ndarray) else None)
            assert not found, "a host array literal in a device replay"
    return runs


@standin
def test_a_guard_that_fails_on_the_device_runs_the_call_eagerly():
    m = nn.Linear(3, 4)
    f = gpuad.compile(lambda x, y: F.cross_entropy(m(x), y))
    x = gpuad.ones(2, 3)
    f(x, gpuad.tensor([1, 2]))
    f(x, gpuad.tensor([1, 2]))                          # captured
    y = gpuad.tensor([1, -100])
    with pytest.warns(gpuad.compiler.CompileWarning, match="ignore_index"):
        got = f(x, y)
    assert got.item() == F.cross_entropy(m(x), y).item()


@standin
def test_matmul_precision_sets_cupys_compute_type():
    """set_float32_matmul_precision reaches cuBLAS through CuPy's compute type (CuPy 14
    has no CUBLAS_TF32_TENSOR_OP_MATH)."""
    import cupy
    from cupy._core import _routines_linalg as linalg
    x, w = gpuad.tensor(R.standard_normal((3, 4)).astype(np.float32)), \
        gpuad.tensor(R.standard_normal((5, 4)).astype(np.float32))
    try:
        for precision, want in (("high", linalg.COMPUTE_TYPE_TF32), ("highest", linalg.COMPUTE_TYPE_DEFAULT)):
            gpuad.set_float32_matmul_precision(precision)
            gpuad.set_kernels("cupy")
            F.linear(x, w, None, "tanh")
            assert linalg.get_compute_type(cupy.dtype(cupy.float32)) == want
    finally:
        gpuad.set_kernels(None)
        gpuad.set_float32_matmul_precision("highest")


def test_compute_capability_reads_three_digit_devices():
    from gpuad.providers import compute_capability
    assert compute_capability("90") == (9, 0) and compute_capability("100") == (10, 0)
    assert compute_capability(120) == (12, 0)


def test_int64_indexing_counts_the_farthest_offset_not_the_size():
    from gpuad.backends.triton_backend import needs_int64
    base = np.zeros(16, np.float32)
    small = np.lib.stride_tricks.as_strided(base, (3, 4), (2 ** 30 * 4, 4))   # 12 elements, offsets past 2^31
    assert not needs_int64(np.zeros((1000, 1000), np.float32)) and needs_int64(small)


def test_attention_grid_puts_batch_and_heads_on_axis_x_and_dots_take_the_precision(monkeypatch):
    """CUDA caps grid y at 65,535: batch x heads goes on x. Every tl.dot takes the
    precision set_float32_matmul_precision chose."""
    import inspect
    from gpuad.ops.fused_kernels import host
    from kernels import flash_attention as A
    src = inspect.getsource(A)
    assert src.count("tl.dot(") == src.count("input_precision=PRECISION")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("launches in Triton's interpreter")
    tk = host("triton")
    grids = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            grids.append(grid)
            return self.fn[grid]
    for name in ("attention_fwd_kernel", "attention_bwd_dkdv_kernel", "attention_bwd_dq_kernel"):
        monkeypatch.setattr(tk.A, name, Recorder(getattr(tk.A, name)))
    q, k, v = (np.random.default_rng(i).standard_normal((3, 2, 20, 16)).astype(np.float32) for i in range(3))
    gpuad.set_float32_matmul_precision("high")
    try:
        assert tk._attention_meta(16, 16, True, False)["PRECISION"] == "tf32"
    finally:
        gpuad.set_float32_matmul_precision("highest")
    out, lse = tk.attention_forward(np, q, k, v, causal=True, scale=0.25)
    assert grids[0][0] == 6 and grids[0][1] == -(-20 // 16)          # (batch x heads, query tiles)


def test_a_generated_kernel_is_made_once_not_at_every_launch(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("launches in Triton's interpreter")
    from gpuad.compiler.codegen import triton_groups as tc
    x = gpuad.tensor(np.ones((3, 70), np.float32), device="cpu")
    f = gpuad.compile(lambda x: (gpuad.tanh(x * 2.0) + x).sum(-1))
    f(x)
    (k,) = [e.params["kernel"].value for e in f.compiled(x).graph.eqns if e.prim == "fused"]
    tc.launch(k, [x.numpy()], [np.empty(o.shape, o.dtype) for o in k.outs], torch_like=_torch())
    calls = []
    monkeypatch.setattr(tc, "source", lambda k: calls.append(k) or "")
    tc.launch(k, [x.numpy()], [np.empty(o.shape, o.dtype) for o in k.outs], torch_like=_torch())
    assert not calls


def _torch():
    torch = pytest.importorskip("torch")
    return torch.from_numpy


def test_gpu_check_fails_a_step_whose_tests_fail_and_bounds_each_step(tmp_path):
    """A step that finds failures (the GPU tests' pytest exit status) is reported failed
    and the run exits nonzero; a step past its share of the deadline is stopped."""
    import time
    from bench import gpu_check as G
    rep = G.Report(str(tmp_path), deadline_s=600)

    def failing():
        raise G.StepFailed("`pytest` exit 1", {"returncode": 1})
    rep.step("GPU tests", failing, budget_s=5)
    rep.step("slow", lambda: time.sleep(30) or ("", {}), budget_s=1)
    assert rep.data["steps"] == {"GPU tests": "failed", "slow": "failed"} and rep.failed == ["GPU tests", "slow"]
    assert "StepTimeout" in (tmp_path / "report.md").read_text()


@standin
def test_gpu_check_quick_steps_run_on_a_device(monkeypatch):
    """The --quick steps' code on the stand-in (torch absent, as a machine without a CUDA
    torch): the machine step records which provider really runs."""
    import sys
    from bench import gpu_check as G
    monkeypatch.setitem(sys.modules, "torch", None)
    md, info = G.machine()
    assert info["provider by default"] == "cupy" and "provider when triton is asked" in info
    for fn, args in ((G.mlp, (1, ("triton",))), (G.compiled_steps, (1, False, False)),
                     (G.attention, (1, (64,)))):
        md, data = fn(*args)
        assert md and data


# --- #29: the third review -----------------------------------------------------------------

@standin
@pytest.mark.parametrize("kw", [dict(is_causal=True), dict(attn_mask="bool"), dict(dropout_p=0.2)],
                         ids=["causal", "mask", "dropout"])
def test_generic_attention_masks_on_the_device(kw):
    """float64 takes the generic code (the kernels are fp32/fp16): its causal mask, user
    masks and dropout masks are made on the device."""
    q, k, v = (R.standard_normal((2, 5, 4)) for _ in range(3))
    if kw.get("attn_mask") == "bool":
        kw = dict(attn_mask=np.tril(np.ones((5, 5), bool)))
    outs = []
    for dev in ("cuda", "cpu"):
        gpuad.manual_seed(3)
        ts = [gpuad.tensor(a, device=dev, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*ts, **kw)
        out.sum().backward()
        outs.append([out.numpy()] + [t.grad.numpy() for t in ts])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@standin
def test_indices_stay_on_the_device():
    x = gpuad.tensor(R.standard_normal((4, 6)))
    for t in (gpuad.argmax(x, 1), gpuad.argmin(x), x.max(1)[1], gpuad.sort(x, 1)[1], gpuad.argsort(x, 0),
              gpuad.topk(x, 2, 1)[1]):
        assert _on_device(t)
    np.testing.assert_array_equal(gpuad.topk(x, 2, 1)[1].numpy(), gpuad.topk(_cpu(x), 2, 1)[1].numpy())


@standin
def test_accumulating_into_an_existing_grad_on_the_device():
    w = gpuad.tensor(R.standard_normal(3), requires_grad=True)
    for _ in range(2):
        (w * w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 4 * w.numpy())


@standin
def test_multihead_attention_masks_on_the_device():
    gpuad.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = gpuad.tensor(R.standard_normal((2, 5, 8)).astype(np.float32))
    pad = np.zeros((2, 5), bool)
    pad[0, 3:] = True
    out, _ = mha(x, x, x, attn_mask=np.triu(np.ones((5, 5), bool), 1), key_padding_mask=pad)
    out2, _ = mha(x, x, x, is_causal=True, attn_mask=np.triu(np.ones((5, 5), bool), 1))
    assert _on_device(out) and np.isfinite(out.numpy()).all() and _on_device(out2)


@standin
def test_state_dicts_saved_on_the_cpu_load_on_the_device():
    gpuad.manual_seed(0)
    m = nn.Linear(3, 2)
    opt = optim.Adam(m.parameters())
    F.mse_loss(m(gpuad.ones(4, 3)), gpuad.zeros(4, 2)).backward()
    opt.step()
    host = {k: v.numpy() for k, v in m.state_dict().items()}
    ost = opt.state_dict()
    ost["state"] = {i: {k: (v.get() if hasattr(v, "get") else v) for k, v in st.items()}
                    for i, st in ost["state"].items()}
    m2 = nn.Linear(3, 2)
    m2.load_state_dict(host)
    opt2 = optim.Adam(m2.parameters())
    opt2.load_state_dict(ost)
    F.mse_loss(m2(gpuad.ones(4, 3)), gpuad.zeros(4, 2)).backward()
    opt2.step()
    assert all(_on_device(gpuad.Tensor._from(v)) for st in opt2.state.values() for v in st.values()
               if hasattr(v, "shape"))


@standin
def test_erf_keeps_float16_and_takes_out_on_the_device():
    from gpuad.backends import _cupy_namespace
    xp = _cupy_namespace()
    x = gpuad.tensor(np.linspace(-2, 2, 7).astype(np.float16)).data
    y = xp.erf(x)
    out = xp.empty(x.shape, x.dtype)
    assert y.dtype == np.float16 and xp.erf(x, out=out) is out
    assert gpuad.erf(gpuad.Tensor._from(x)).dtype == np.float16


@standin
@pytest.mark.parametrize("op", ["floor", "ceil", "trunc", "sign", "round"])
def test_piecewise_constant_vjps_on_the_device(op):
    x = gpuad.tensor(R.standard_normal(5), requires_grad=True)                 # small: not donated
    getattr(gpuad, op)(x).sum().backward()
    assert _on_device(x.grad) and not x.grad.numpy().any()


@standin
def test_an_in_place_multiply_keeps_what_its_node_saved_on_the_device():
    w = gpuad.tensor(R.standard_normal(4), requires_grad=True)
    t = w * 1.0
    s = gpuad.tensor(R.standard_normal(4), requires_grad=True)
    t.mul_(s)                          # saves t's old values for s's gradient: copied first
    t.sum().backward()
    np.testing.assert_allclose(s.grad.numpy(), w.numpy())


@standin
def test_tril_triu_cumprod_and_where_on_the_device():
    x = gpuad.tensor(np.array([[1.0, 0.0, 2.0], [3.0, 4.0, 0.0]]), requires_grad=True)
    (gpuad.tril(x) + gpuad.triu(x, 1) + gpuad.cumprod(x, 1)).sum().backward()     # cumprod with zeros: exact path
    cx = _cpu(x).requires_grad_()
    (gpuad.tril(cx) + gpuad.triu(cx, 1) + gpuad.cumprod(cx, 1)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), cx.grad.numpy())
    w = gpuad.where(x > 1, 0.0, 1.0)
    assert _on_device(w) and w.dtype == np.float32


@standin
def test_checkpoint_costs_count_device_bytes():
    from gpuad.checkpoint import chain_costs
    layers = [nn.Linear(32, 32) for _ in range(3)]
    chain = chain_costs(layers, gpuad.tensor(R.standard_normal((8, 32)).astype(np.float32)))
    assert all(k > 0 for k in chain.keep)


@standin
def test_device_side_factories_norms_forward_mode_and_gradcheck():
    x = gpuad.tensor(R.standard_normal(3), requires_grad=True)
    for t in (gpuad.zeros_like(x), gpuad.ones_like(x), gpuad.full_like(x, 2.0), gpuad.randn_like(x)):
        assert _on_device(t)
    (x * x).sum().backward()
    assert _on_device(nn.utils.clip_grad_norm_([x], 1.0))
    y, tangent = gpuad.jvp(lambda a: (a.sin() * a).sum(), (x.detach(),), (gpuad.ones(3),))
    assert _on_device(tangent)
    g, = gpuad.autograd.grad((x.exp() * x).sum(), x, create_graph=True)
    gg, = gpuad.autograd.grad(g.sum(), x)                   # create_graph: constants on the device
    assert _on_device(gg)
    assert gpuad.gradcheck(lambda a: (a * a).tanh(), (x.detach(),))


@standin
def test_cuda_available_allocates():
    from gpuad.backends import devices
    assert devices.cuda_available()[0]


def test_compiled_gradient_of_a_power_with_a_constant_base():
    """pow's VJP casts its saved base with astype to the same dtype: on a device the
    abstract rule hands back the device constant itself, an alias, not an error."""
    a = gpuad.tensor(np.linspace(-1.0, 1.0, 15).reshape(3, 5), requires_grad=True)

    def f(a):
        base = gpuad.tensor(np.full((3, 5), 0.3))
        y = ((base * base + 0.5) ** (a * 0.5)).sum()
        return gpuad.autograd.grad(y, [a])[0]
    np.testing.assert_allclose(gpuad.compile(f)(a).numpy(), f(a).numpy(), rtol=1e-14)
