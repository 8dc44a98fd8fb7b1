"""The public API: construction and dtype rules, Tensor methods, and values and
gradients against PyTorch on a broad set of functions (float64)."""
import numpy as np
import pytest

import gpuad
from tests.conftest import torch_or_skip

R = np.random.default_rng(11)


def test_dtype_rules():
    assert gpuad.tensor(1.5).dtype == np.float32
    assert gpuad.tensor([1.5, 2.0]).dtype == np.float32
    assert gpuad.tensor([1, 2]).dtype == np.int64
    assert gpuad.tensor(np.ones(2, dtype=np.float64)).dtype == np.float64
    assert gpuad.tensor(np.ones(2, dtype=np.float16)).dtype == np.float16
    for spec in ("float64", np.float64, np.dtype("float64"), gpuad.float64, "double"):
        assert gpuad.tensor(1.0, dtype=spec).dtype == np.float64
    assert (gpuad.tensor([1.0]) * 2.5).dtype == np.float32


def test_tensor_copies_numpy_and_from_numpy_shares():
    a = np.ones(3)
    t = gpuad.tensor(a)
    a[0] = 5
    assert t.tolist() == [1.0, 1.0, 1.0]
    s = gpuad.from_numpy(a)
    assert s.data is a


def test_properties_and_conversions():
    t = gpuad.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size() == (2, 3) and t.size(-1) == 3 and t.numel() == 6 and t.dtype == np.float32
    assert t.T.shape == (3, 2)
    assert t.numpy().shape == (2, 3)
    assert np.asarray(t).dtype == np.float32
    assert t[1, 2].item() == 6.0
    assert float(t.sum()) == 21.0
    assert len(t) == 2
    assert [row.shape for row in t] == [(3,), (3,)]
    assert t.device == gpuad.get_default_device()
    assert "requires_grad=True" in repr(t)
    assert "grad_fn=multiply" in repr(t * 2)
    with pytest.raises(ValueError, match="one element"):
        t.item()


@pytest.mark.cpu_only("a host numpy operand with a device tensor is a device mismatch, as in torch")
def test_numpy_operands_defer_to_tensor():
    """ndarray (op) Tensor gives a Tensor in the graph, not an ndarray."""
    x = gpuad.tensor([1.0, 2.0], requires_grad=True)
    y = np.array([3.0, 4.0], dtype=np.float32) * x
    assert isinstance(y, gpuad.Tensor) and y.requires_grad
    y.sum().backward()
    assert x.grad.tolist() == [3.0, 4.0]


def test_comparisons_have_no_gradient():
    x = gpuad.tensor([1.0, 2.0], requires_grad=True)
    for c in (x < 1.5, x <= 1.5, x > 1.5, x >= 1.5, x == 1.0, x != 1.0):
        assert c.dtype == np.bool_ and not c.requires_grad
    assert (x > 1.5).tolist() == [False, True]


def test_factories():
    gpuad.manual_seed(3)
    a = gpuad.randn(2, 3)
    gpuad.manual_seed(3)
    b = gpuad.randn((2, 3))
    assert a.shape == (2, 3) and np.array_equal(a.numpy(), b.numpy())
    assert gpuad.zeros(2, 2).sum().item() == 0
    assert gpuad.ones((2,), dtype="float64").dtype == np.float64
    assert gpuad.arange(5).tolist() == [0, 1, 2, 3, 4]
    assert gpuad.eye(3).sum().item() == 3
    assert gpuad.full((2,), 7.0).tolist() == [7.0, 7.0]
    assert gpuad.zeros_like(a).shape == a.shape
    assert 0 <= gpuad.rand(100).min().item() and gpuad.rand(100).max().item() < 1


def test_clone_stays_in_graph_and_copies():
    x = gpuad.tensor([1.0, 2.0], requires_grad=True)
    y = x.clone()
    assert y.data is not x.data
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------
# Values and gradients against PyTorch, float64.

def _u(*shape, lo=-2, hi=2):
    return R.uniform(lo, hi, size=shape)


# name: (gpuad fn, torch fn, input arrays)
TORCH_CASES = {
    "add_bcast": (lambda a, b: a + b, lambda a, b: a + b, [_u(3, 4), _u(4)]),
    "sub_rsub": (lambda a, b: 1 - a - b, lambda a, b: 1 - a - b, [_u(2, 3), _u(2, 1)]),
    "mul_div": (lambda a, b: a * b / (b * b + 1), lambda a, b: a * b / (b * b + 1), [_u(3), _u(3)]),
    "rdiv": (lambda a: 2 / (a + 3), lambda a: 2 / (a + 3), [_u(4)]),
    "pow": (lambda a, b: (a * a + 0.5) ** b, lambda a, b: (a * a + 0.5) ** b, [_u(4), _u(4)]),
    "rpow": (lambda a: 3.0 ** a, lambda a: 3.0 ** a, [_u(4)]),
    "exp_log": (lambda a: gpuad.log(gpuad.exp(a) + 1), lambda a: (a.exp() + 1).log(), [_u(5)]),
    "log1p_sqrt": (lambda a: gpuad.log1p(gpuad.sqrt(a * a + 1)), lambda a: (a * a + 1).sqrt().log1p(), [_u(5)]),
    "abs": (gpuad.abs, lambda a: a.abs(), [_u(6)]),
    "trig": (lambda a: gpuad.sin(a) * gpuad.cos(a), lambda a: a.sin() * a.cos(), [_u(5)]),
    "hyper": (lambda a: gpuad.sinh(a) + gpuad.cosh(a) * gpuad.tanh(a), lambda a: a.sinh() + a.cosh() * a.tanh(), [_u(5)]),
    "sigmoid": (gpuad.sigmoid, lambda a: a.sigmoid(), [_u(7, lo=-40, hi=40)]),
    "relu": (gpuad.relu, lambda a: a.relu(), [_u(7)]),
    "gelu": (gpuad.gelu, lambda a: __import__("torch").nn.functional.gelu(a), [_u(7, lo=-4, hi=4)]),
    "gelu_tanh": (lambda a: gpuad.gelu(a, approximate="tanh"),
                  lambda a: __import__("torch").nn.functional.gelu(a, approximate="tanh"), [_u(7, lo=-4, hi=4)]),
    "softplus": (gpuad.softplus, lambda a: __import__("torch").nn.functional.softplus(a), [_u(7, lo=-30, hi=30)]),
    "softplus_beta": (lambda a: gpuad.softplus(a, beta=2, threshold=5),
                      lambda a: __import__("torch").nn.functional.softplus(a, beta=2, threshold=5), [_u(7, lo=-5, hi=5)]),
    "erf": (gpuad.erf, lambda a: a.erf(), [_u(5)]),
    "max_min_ties": (lambda a, b: gpuad.maximum(a, b) + gpuad.minimum(a, b) * 2,
                     lambda a, b: __import__("torch").maximum(a, b) + __import__("torch").minimum(a, b) * 2,
                     [np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0])]),
    "where": (lambda a, b: gpuad.where(a > 0, a, b), lambda a, b: __import__("torch").where(a > 0, a, b), [_u(3, 4), _u(4)]),
    "clamp": (lambda a: gpuad.clamp(a, -0.5, 0.7), lambda a: a.clamp(-0.5, 0.7), [_u(9)]),
    "sum_axes": (lambda a: a.sum(axis=(0, 2)) * a.sum(dim=1, keepdim=True).sum(),
                 lambda a: a.sum(dim=(0, 2)) * a.sum(dim=1, keepdim=True).sum(), [_u(2, 3, 4)]),
    "mean": (lambda a: a.mean(axis=0), lambda a: a.mean(dim=0), [_u(3, 4)]),
    "var_std": (lambda a: a.var(axis=1, ddof=0) + a.std(unbiased=False), lambda a: a.var(dim=1, unbiased=False) + a.std(unbiased=False), [_u(3, 4)]),
    "var_std_unbiased": (lambda a: a.var(1) + a.std() + a.var(0, keepdim=True).sum() + a.std(correction=2),
                         lambda a: a.var(1) + a.std() + a.var(0, keepdim=True).sum() + a.std(correction=2), [_u(3, 4)]),
    "max_reduce_ties": (lambda a: a.max() + a.amax(axis=1).sum(),
                        lambda a: a.amax() + a.amax(dim=1).sum(), [np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])]),
    "min_reduce": (lambda a: a.amin(axis=0), lambda a: a.amin(dim=0), [_u(3, 4)]),
    "logsumexp": (lambda a: gpuad.logsumexp(a, axis=1), lambda a: a.logsumexp(dim=1), [_u(3, 4, lo=-50, hi=50)]),
    "softmax": (lambda a: gpuad.softmax(a, dim=1) * gpuad.arange(4, dtype="float64"),
                lambda a: a.softmax(dim=1) * __import__("torch").arange(4, dtype=__import__("torch").float64), [_u(3, 4)]),
    "log_softmax": (lambda a: gpuad.log_softmax(a, axis=0), lambda a: a.log_softmax(dim=0), [_u(3, 4, lo=-100, hi=100)]),
    "reshape_T": (lambda a: a.reshape(4, 3).T @ a.reshape(4, 3), lambda a: a.reshape(4, 3).T @ a.reshape(4, 3), [_u(3, 4)]),
    "transpose_permute": (lambda a: a.transpose(0, 2).permute(1, 0, 2) * 2,
                          lambda a: a.transpose(0, 2).permute(1, 0, 2) * 2, [_u(2, 3, 4)]),
    "squeeze_unsqueeze": (lambda a: a.unsqueeze(0).squeeze(1) * 3, lambda a: a.unsqueeze(0).squeeze(1) * 3, [_u(1, 4)]),
    "flatten": (lambda a: a.flatten(1) ** 2, lambda a: a.flatten(1) ** 2, [_u(2, 3, 4)]),
    "getitem": (lambda a: a[1:, [0, 2, 2]] * a[0, None, :3], lambda a: a[1:, [0, 2, 2]] * a[0, None, :3], [_u(3, 4)]),
    "concat_stack": (lambda a, b: gpuad.stack([gpuad.concat([a, b], dim=1), gpuad.concat([b, a], dim=1)]),
                     lambda a, b: __import__("torch").stack([__import__("torch").cat([a, b], dim=1),
                                                             __import__("torch").cat([b, a], dim=1)]), [_u(2, 3), _u(2, 3)]),
    "matmul_batched": (lambda a, b: a @ b, lambda a, b: a @ b, [_u(2, 3, 4), _u(4, 5)]),
    "matmul_vec": (lambda a, b: (a @ b) @ a, lambda a, b: (a @ b) @ a, [_u(3, 4), _u(4)]),
    "expand": (lambda a: a.expand(3, 4) * gpuad.arange(12, dtype="float64").reshape(3, 4),
               lambda a: a.expand(3, 4) * __import__("torch").arange(12, dtype=__import__("torch").float64).reshape(3, 4), [_u(1, 4)]),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_against_torch(name):
    torch = torch_or_skip()
    fn, tfn, arrays = TORCH_CASES[name]
    xs = [gpuad.tensor(a, dtype="float64", requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out, tout = fn(*xs), tfn(*ts)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12, atol=1e-14)
    w = R.standard_normal(out.shape)
    (out * gpuad.tensor(w)).sum().backward()
    (tout * torch.tensor(w)).sum().backward()
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_micrograd_sanity_check():
    """The peer library micrograd's own test, against PyTorch."""
    torch = torch_or_skip()
    x = gpuad.tensor(-4.0, dtype="float64", requires_grad=True)
    z = 2 * x + 2 + x
    q = z.relu() + z * x
    h = (z * z).relu()
    y = h + q + q * x
    y.backward()
    xt = torch.tensor([-4.0], dtype=torch.float64, requires_grad=True)
    zt = 2 * xt + 2 + xt
    qt = zt.relu() + zt * xt
    ht = (zt * zt).relu()
    yt = ht + qt + qt * xt
    yt.backward()
    assert y.item() == yt.item()
    assert x.grad.item() == xt.grad.item()


def test_micrograd_more_ops():
    torch = torch_or_skip()

    def run(mk):
        a = mk(-4.0)
        b = mk(2.0)
        c = a + b
        d = a * b + b ** 3
        c = c + c + 1
        c = c + 1 + c + (-a)
        d = d + d * 2 + (b + a).relu()
        d = d + 3 * d + (b - a).relu()
        e = c - d
        f = e ** 2
        g = f / 2.0
        g = g + 10.0 / f
        g.backward()
        return g.item(), a.grad.item(), b.grad.item()

    mine = run(lambda v: gpuad.tensor(v, dtype="float64", requires_grad=True))
    ref = run(lambda v: torch.tensor(v, dtype=torch.float64, requires_grad=True))
    np.testing.assert_allclose(mine, ref, rtol=1e-12)
