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
pytestmark = pytest.mark.interpreter

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("a GPU is present: the kernels run for real in the gpu tests", allow_module_level=True)

ACTIVATIONS = [None, "relu", "tanh", "sigmoid", "gelu"]
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float16": dict(rtol=1e-2, atol=1e-2)}


@pytest.fixture
def provider(monkeypatch):
    """Select the Triton kernels and count their launches."""
    from gpuad import providers
    gpuad.set_kernels("triton")
    tk = providers.get("triton")
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
    xt, wt, bt = (gpuad.tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.linear(xt, wt, bt, activation)
    y.backward(gpuad.tensor(g))
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
    wt = gpuad.tensor(w, requires_grad=True)
    y = F.linear(gpuad.tensor(x), wt, None, "tanh")        # GREY input: only dW is asked for
    y.sum().backward()
    gpuad.set_kernels("numpy")
    wr = gpuad.tensor(w, requires_grad=True)
    yr = F.linear(gpuad.tensor(x), wr, None, "tanh")
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
        zt = gpuad.tensor(z, requires_grad=True)
        loss = F.cross_entropy(zt, gpuad.tensor(t), reduction=reduction)
        w = gpuad.tensor(np.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).astype(dtype))
        (loss * w).sum().backward()
        return np.asarray(loss.numpy(), np.float32), np.asarray(zt.grad.numpy(), np.float32)
    got = run()
    assert provider.count("cross_entropy_forward") == 1 and provider.count("cross_entropy_backward") == 1
    gpuad.set_kernels("numpy")
    ref = run()
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, **TOL[dtype])


def test_unsupported_dtype_falls_back_with_one_warning(provider):
    x = gpuad.tensor(np.ones((3, 4)), requires_grad=True)           # float64
    w = gpuad.tensor(np.ones((2, 4)), requires_grad=True)
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
    x = gpuad.tensor(rng.standard_normal((M, K)).astype(np.float32))
    w = gpuad.tensor(rng.standard_normal((N, K)).astype(np.float32), requires_grad=True)
    with gpuad.memory.track() as m:
        F.linear(x, w, None, "tanh")
    ops = m.by_op()
    assert ops["linear (triton)"]["bytes_read"] == (M * K + N * K) * 4
    assert ops["linear (triton)"]["bytes_written"] == M * N * 4
