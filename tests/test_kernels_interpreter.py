"""Every Triton kernel through Triton's interpreter on irregular shapes, against the numpy
backend: forward and all gradients, each activation, fp32 (1e-5) and fp16 inputs (1e-2)."""
import os
import warnings

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F

triton = pytest.importorskip("triton")
pytest.importorskip("torch")
# The online softmax computes exp(m - m_new) on lanes where both are -inf (padding
# past C) and discards the NaN with tl.where; numpy, under the interpreter, warns.
pytestmark = [pytest.mark.interpreter,
              pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")]

# Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets
# TRITON_INTERPRET=1); with one, the same tests run the compiled kernels on the device.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
if not INTERPRETED:
    from gpuad.backends.devices import cuda_available
    if not cuda_available()[0]:
        pytest.skip("neither Triton's interpreter nor a CUDA device", allow_module_level=True)


def T(a, **kw):
    """A tensor on the device under test."""
    return gpuad.tensor(a, device=DEVICE, **kw)


def V(base, view=lambda a: a):
    """A view of `base` on the device under test, strides kept (no copy into a new layout)."""
    if INTERPRETED:
        return gpuad.from_numpy(view(base))
    import cupy
    return gpuad.Tensor._from(view(cupy.asarray(base)))

ACTIVATIONS = [None, "relu", "tanh", "sigmoid", "gelu"]
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float16": dict(rtol=1e-2, atol=1e-2)}


@pytest.fixture
def provider(monkeypatch):
    """Select the Triton kernels and count their launches."""
    from gpuad.ops.fused_kernels import host
    gpuad.set_kernels("triton")
    tk = host("triton")
    calls = []
    for name in ("linear_forward", "linear_backward", "cross_entropy_forward", "cross_entropy_backward"):
        orig = getattr(tk, name)

        def spy(*a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(*a, **k)
        monkeypatch.setattr(tk, name, spy)
    yield calls
    gpuad.set_kernels(None)


def _run_linear(x, w, b, g, activation):
    xt, wt, bt = (T(a, requires_grad=True) for a in (x, w, b))
    y = F.linear(xt, wt, bt, activation)
    y.backward(T(g))
    return [np.asarray(a, dtype=np.float32) for a in (y.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy())]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_linear_matches_numpy(provider, activation, dtype):
    rng = np.random.default_rng(ACTIVATIONS.index(activation))
    M, K, N = 37, 29, 53
    x = (rng.standard_normal((M, K)) * 0.5).astype(dtype)
    w = (rng.standard_normal((N, K)) * 0.3).astype(dtype)
    b = (rng.standard_normal(N) * 0.1).astype(dtype)
    g = rng.standard_normal((M, N)).astype(dtype)
    got = _run_linear(x, w, b, g, activation)
    assert provider.count("linear_forward") == 1 and provider.count("linear_backward") == 1
    gpuad.set_kernels("numpy")               # reference: the numpy backend, in float32
    ref = _run_linear(*(a.astype(np.float32) for a in (x, w, b, g)), activation)
    for name, a, r in zip(("y", "dx", "dw", "db"), got, ref):
        np.testing.assert_allclose(a, r, err_msg=f"{name} ({activation}, {dtype})", **TOL[dtype])


def test_fused_linear_batched_input_and_grey_input(provider):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 5, 29)).astype(np.float32)
    w = rng.standard_normal((19, 29)).astype(np.float32)
    wt = T(w, requires_grad=True)
    y = F.linear(T(x), wt, None, "tanh")        # GREY input: only dW is asked for
    y.sum().backward()
    gpuad.set_kernels("numpy")
    wr = T(w, requires_grad=True)
    yr = F.linear(T(x), wr, None, "tanh")
    yr.sum().backward()
    np.testing.assert_allclose(y.numpy(), yr.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(wt.grad.numpy(), wr.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert "linear_forward" in provider


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_cross_entropy_matches_numpy(provider, dtype, reduction):
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((37, 53)) * 3).astype(dtype)
    t = rng.integers(0, 53, size=37)

    def run():
        zt = T(z, requires_grad=True)
        loss = F.cross_entropy(zt, T(t), reduction=reduction)
        w = T(np.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).astype(dtype))
        (loss * w).sum().backward()
        return np.asarray(loss.numpy(), np.float32), np.asarray(zt.grad.numpy(), np.float32)
    got = run()
    assert provider.count("cross_entropy_forward") == 1 and provider.count("cross_entropy_backward") == 1
    gpuad.set_kernels("numpy")
    ref = run()
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, **TOL[dtype])


def test_unsupported_dtype_falls_back_with_one_warning(provider):
    x = T(np.ones((3, 4)), requires_grad=True)           # float64
    w = T(np.ones((2, 4)), requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = F.linear(x, w, None, "relu")
        F.linear(x, w, None, "relu")
    assert np.allclose(y.numpy(), 4.0)
    msgs = [str(c.message) for c in caught if "triton kernels do not handle linear" in str(c.message)]
    assert len(msgs) <= 1 and all("float64" in m for m in msgs)


def test_kernel_traffic_is_recorded(provider):
    rng = np.random.default_rng(4)
    M, K, N = 37, 29, 53
    x = T(rng.standard_normal((M, K)).astype(np.float32))
    w = T(rng.standard_normal((N, K)).astype(np.float32), requires_grad=True)
    with gpuad.memory.track() as m:
        F.linear(x, w, None, "tanh")
    ops = m.by_op()
    assert ops["linear (triton)"]["bytes_read"] == (M * K + N * K) * 4
    assert ops["linear (triton)"]["bytes_written"] == M * N * 4


def test_fused_linear_reads_views_of_every_argument(provider):
    """Transposed x and w, a strided bias, a non-contiguous upstream gradient."""
    rng = np.random.default_rng(21)
    M, K, N = 13, 11, 17
    xb = rng.standard_normal((K, M)).astype(np.float32)          # x = xb.T: strides (4, 4M)
    wb = rng.standard_normal((K, N)).astype(np.float32)          # w = wb.T
    bb = rng.standard_normal(2 * N).astype(np.float32)           # b = bb[::2]: stride 2
    gb = rng.standard_normal((N, M)).astype(np.float32)          # g = gb.T

    def run():
        x = V(xb, lambda a: a.T).requires_grad_()
        w = V(wb, lambda a: a.T).requires_grad_()
        b = V(bb, lambda a: a[::2]).requires_grad_()
        y = F.linear(x, w, b, "tanh")
        y.backward(V(gb, lambda a: a.T))
        return [a.numpy().copy() for a in (y, x.grad, w.grad, b.grad)]
    got = run()
    assert "linear_forward" in provider and "linear_backward" in provider
    gpuad.set_kernels("numpy")
    for name, a, r in zip(("y", "dx", "dw", "db"), got, run()):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5, err_msg=name)


def test_fused_cross_entropy_reads_strided_targets(provider):
    rng = np.random.default_rng(22)
    z = (rng.standard_normal((6, 9)) * 2).astype(np.float32)
    labels = np.stack([rng.integers(0, 9, 6), rng.integers(0, 9, 6)], 1)     # labels[:, 0]: stride 2

    def run():
        zt = T(z, requires_grad=True)
        loss = F.cross_entropy(zt, V(labels, lambda a: a[:, 0]), reduction="none")
        loss.sum().backward()
        return loss.numpy().copy(), zt.grad.numpy().copy()
    got = run()
    assert "cross_entropy_forward" in provider
    gpuad.set_kernels("numpy")
    for a, r in zip(got, run()):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


def test_64_bit_offsets_give_the_same_results(provider, monkeypatch):
    """The int64 index path (taken for operands of 2^31 elements or more) on a small case."""
    from gpuad.backends import triton_backend
    rng = np.random.default_rng(23)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((9, 7), (5, 7), (5,)))
    g = rng.standard_normal((9, 5)).astype(np.float32)
    z, t = rng.standard_normal((4, 6)).astype(np.float32), rng.integers(0, 6, 4)

    def run():
        out = _run_linear(x, w, b, g, "gelu")
        zt = T(z, requires_grad=True)
        F.cross_entropy(zt, T(t)).backward()
        return out + [zt.grad.numpy().copy()]
    narrow = run()
    monkeypatch.setattr(triton_backend, "FORCE_INT64", True)
    wide = run()
    for a, r in zip(wide, narrow):
        np.testing.assert_array_equal(a, r)
    assert not triton_backend.needs_int64(np.zeros(3)) or triton_backend.FORCE_INT64


def test_int64_decision():
    from gpuad.backends.triton_backend import needs_int64

    class Big:
        size = 2 ** 31
    assert needs_int64(Big()) and not needs_int64(np.zeros(10), None)


def test_cross_entropy_keeps_the_log_sum_exp_in_float32_for_float16_logits(provider):
    z = T((np.random.default_rng(24).standard_normal((5, 7)) * 20).astype(np.float16),
                     requires_grad=True)
    loss = F.cross_entropy(z, T([0, 1, 2, 3, 4]))
    assert loss._node.saved[-1].dtype == np.float32


@pytest.mark.cpu_only("Triton's interpreter runs on host arrays")
def test_float32_matmul_precision_reaches_the_triton_kernels(provider, monkeypatch):
    from gpuad.backends import triton_backend
    seen = []
    tk = gpuad.ops.fused_kernels.host("triton")
    orig = tk.fwd

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append(kw["PRECISION"])
                return orig[grid](*args, **kw)
            return launch
    monkeypatch.setattr(tk, "fwd", Spy())
    x, w = gpuad.ones((3, 4)), gpuad.ones((2, 4), requires_grad=True)
    try:
        for p in ("highest", "high", "medium"):
            gpuad.set_float32_matmul_precision(p)
            F.linear(x, w)
    finally:
        gpuad.set_float32_matmul_precision("highest")
    assert seen == ["ieee", "tf32", "tf32"]
    with pytest.raises(ValueError, match="must be one of"):
        gpuad.set_float32_matmul_precision("fast")
    assert triton_backend is not None


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_norm_kernels_match_numpy(provider, monkeypatch, dtype, affine, norm):
    """layer_norm and rms_norm share one kernel pair (RMS a constexpr)."""
    rng = np.random.default_rng(25)
    x = (rng.standard_normal((3, 5, 37)) * 2 + 1).astype(dtype)
    w, b = (rng.standard_normal(37).astype(dtype) for _ in range(2))
    g = rng.standard_normal((3, 5, 37)).astype(dtype)
    calls = []
    tk = gpuad.ops.fused_kernels.host("triton")
    for name in ("layer_norm_forward", "layer_norm_backward"):
        orig = getattr(tk, name)
        monkeypatch.setattr(tk, name, lambda *a, _o=orig, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    params = (w, b) if norm == "layer_norm" else (w,)

    def run():
        ts = [T(a, requires_grad=True) for a in ((x,) + params if affine else (x,))]
        y = getattr(F, norm)(ts[0], (37,), *ts[1:])
        y.backward(T(g))
        return [y.numpy().astype(np.float32)] + [t.grad.numpy().astype(np.float32) for t in ts]
    got = run()
    assert calls == ["layer_norm_forward", "layer_norm_backward"]
    gpuad.set_kernels("numpy")
    for a, r in zip(got, run()):
        np.testing.assert_allclose(a, r, **TOL[dtype])


def _attention_mask(kind, rng):
    """None, or an attn_mask for batch 2 x L 19 x S 23: a boolean one shared by the batch
    (row 3 masked from every key), an additive one per batch entry, or key padding."""
    if kind == "bool":
        m = rng.random((19, 23)) > 0.3
        m[3] = False
        return m
    if kind == "additive":
        return (rng.standard_normal((2, 19, 23)) * 2).astype(np.float32)
    if kind == "padding":                  # key padding per batch entry: (2, 1, S), row stride 0 in the kernels
        m = np.ones((2, 1, 23), bool)
        m[0, :, 17:] = m[1, :, 9:] = False
        return m
    return None


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["full", "causal", "bool", "additive", "padding"])
def test_attention_kernels_match_numpy(provider, monkeypatch, dtype, kind):
    """The FlashAttention forward and backward kernels against the generic tiled code,
    unmasked, causal, and with boolean (one row fully masked) or additive masks."""
    rng = np.random.default_rng(26)
    q = rng.standard_normal((2, 19, 24)).astype(dtype)
    k, v = rng.standard_normal((2, 23, 24)).astype(dtype), rng.standard_normal((2, 23, 20)).astype(dtype)
    g = rng.standard_normal((2, 19, 20)).astype(dtype)
    mask = _attention_mask(kind, rng)
    calls = []
    tk = gpuad.ops.fused_kernels.host("triton")
    for name in ("attention_forward", "attention_backward"):
        def ran(*a, _o=getattr(tk, name), _n=name, **kw):     # counted only when the kernels ran (not declined)
            r = _o(*a, **kw)
            if r is not None:
                calls.append(_n)
            return r
        monkeypatch.setattr(tk, name, ran)

    def run():
        ts = [T(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*ts, attn_mask=mask, is_causal=kind == "causal")
        out.backward(T(g))
        return [out.numpy().astype(np.float32)] + [t.grad.numpy().astype(np.float32) for t in ts]
    got = run()
    assert calls == ["attention_forward", "attention_backward"]
    assert all(np.isfinite(a).all() for a in got)
    if kind == "bool":
        assert not got[0][:, 3].any() and not got[1][:, 3].any()      # the fully masked row: 0, as torch
    gpuad.set_kernels("numpy")
    tol = TOL[dtype] if dtype == "float32" else dict(rtol=2e-2, atol=2e-2)
    for a, r in zip(got, run()):
        np.testing.assert_allclose(a, r, **tol)


def test_masked_attention_above_head_dim_128_runs_the_generic_code(provider):
    """Masked tiles spill above head dim 128 on sm_90 (tests/test_kernels_aot.py), so the
    kernels decline them; unmasked ones run up to 256."""
    tk = gpuad.ops.fused_kernels.host("triton")
    q, v = np.zeros((1, 4, 160), np.float32), np.zeros((1, 4, 16), np.float32)
    assert tk._attention_declines(q, q, v, np.ones((4, 4), bool))
    assert not tk._attention_declines(q, q, v, None)
    assert not tk._attention_declines(q[..., :128], q[..., :128], v, np.ones((4, 4), bool))


def test_attention_masks_that_would_need_a_larger_copy_run_the_generic_code(provider):
    """The kernels index a mask by batch x head and row; a mask broadcast over some
    batch dims but not others would have to be copied per head, so they decline it."""
    tk = gpuad.ops.fused_kernels.host("triton")
    m, batch_stride, row_stride = tk._attention_mask(np, np.ones((1, 1, 1, 5), bool), (2, 3), 4, 5)
    assert m.shape == (1, 5) and batch_stride == 0 and row_stride == 0
    m, batch_stride, row_stride = tk._attention_mask(np, np.zeros((2, 3, 4, 5), np.float32), (2, 3), 4, 5)
    assert m.shape == (6, 4, 5) and batch_stride == 20 and row_stride == 5
    assert tk._attention_mask(np, np.ones((2, 1, 4, 5), bool), (2, 3), 4, 5) is None


CONVS = [dict(), dict(stride=2, padding=1), dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1)),
         dict(groups=2, stride=2, padding=1), dict(groups=4, padding="same"), dict(padding="same", kernel=(2, 4)),
         dict(transpose=True, stride=2, padding=1, output_padding=1), dict(transpose=True, groups=2, dilation=2)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kw", CONVS, ids=[str(k) for k in CONVS])
def test_conv_kernels_match_numpy(provider, monkeypatch, dtype, kw):
    """The implicit-GEMM forward, dgrad and wgrad kernels against the generic im2col code:
    strides, asymmetric 'same' padding, dilation, groups (depthwise), transposed
    convolutions (whose forward is the dgrad kernel), views with other strides."""
    kw = dict(kw)
    transpose, kernel = kw.pop("transpose", False), kw.pop("kernel", (3, 3))
    groups = kw.get("groups", 1)
    rng = np.random.default_rng(27)
    x = rng.standard_normal((2, 4, 11, 9)).astype(dtype)
    w = (rng.standard_normal((4, 8 // groups, *kernel) if transpose else (8, 4 // groups, *kernel)) * 0.3).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    calls = []
    tk = gpuad.ops.fused_kernels.host("triton")
    for name in ("conv_forward", "conv_dgrad", "conv_wgrad"):
        orig = getattr(tk, name)
        monkeypatch.setattr(tk, name, lambda *a, _o=orig, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])

    def run():
        # x as a view: channels-last memory read through NCHW strides
        xt = V(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), lambda a: a.transpose(0, 3, 1, 2))
        xt.requires_grad = True
        wt, bt = T(w, requires_grad=True), T(b, requires_grad=True)
        y = (F.conv_transpose2d if transpose else F.conv2d)(xt, wt, bt, **kw)
        y.backward(T(np.random.default_rng(28).standard_normal(y.shape).astype(dtype)))
        return [a.astype(np.float32) for a in (y.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy())]
    got = run()
    assert sorted(calls) == ["conv_dgrad", "conv_forward", "conv_wgrad"]
    gpuad.set_kernels("numpy")
    for a, r in zip(got, run()):
        np.testing.assert_allclose(a, r, **TOL[dtype])


def test_conv_kernels_decline_float64_and_other_ranks(provider):
    """float64 (no fp64 tensor-core path) and 1-D/3-D convolutions run the generic code."""
    x64 = T(np.ones((1, 2, 5, 5)), requires_grad=True)
    assert F.conv2d(x64, T(np.ones((3, 2, 3, 3)))).shape == (1, 3, 3, 3)
    assert F.conv1d(T(np.ones((1, 2, 5), np.float32)), T(np.ones((3, 2, 3), np.float32))).shape == (1, 3, 3)


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
def test_flipped_operands_read_right_in_compiled_groups_and_kernels(provider, linear, axis):
    """A flipped view (negative strides) read by a fused group's kernel, the fused linear
    kernel or a GEMM epilogue: copied before its strides are read (they once were read
    from the view and applied to the interpreter's contiguous copy: wrong gradients)."""
    rng = np.random.default_rng(30 + axis)
    a0 = rng.standard_normal((3, 5)).astype(np.float32)
    w = T(rng.standard_normal((5, 5)).astype(np.float32))

    def f(a):
        v = a * 1.5
        if linear:
            v = F.linear(gpuad.flip(v, (axis,)), w) + v
        v = gpuad.flip(v, (axis,)) * v
        return gpuad.autograd.grad(v.sum(), [a])[0]
    a = T(a0, requires_grad=True)
    got_compiled, got_eager = gpuad.compile(f)(a).numpy(), f(a).numpy()
    gpuad.set_kernels("numpy")
    want = f(a).numpy()
    np.testing.assert_allclose(got_compiled, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_eager, want, rtol=1e-5, atol=1e-5)


def test_a_negative_stride_operand_never_reaches_a_kernel_silently():
    from gpuad.backends.triton_backend import nonnegative_strides, triton_arg
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)[::-1]
    if INTERPRETED:
        with pytest.raises(ValueError, match="negative strides"):
            triton_arg(x)
    y = nonnegative_strides(x)
    assert y.flags.c_contiguous and np.array_equal(y, x) and nonnegative_strides(y) is y
