"""The everyday torch ops: values and gradients against torch in float64, one table."""
import numpy as np
import pytest

import gpuad

torch = pytest.importorskip("torch")
R = np.random.default_rng(11)


def u(*shape, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, size=shape)


IDX = np.array([[2, 0, 1], [1, 1, 0]])

# name: (function of the library module m and tensors, inputs)
CASES = {
    "max_dim": (lambda m, a: m.max(a, 1)[0] * 2 + m.max(a, dim=0, keepdim=True).values.sum(), [u(3, 4)]),
    "min_dim": (lambda m, a: a.min(dim=1).values, [u(3, 4)]),
    "max_two": (lambda m, a, b: m.max(a, b), [u(3, 4), u(3, 4)]),
    "sort": (lambda m, a: a.sort(dim=1, descending=True)[0] * m.arange(4, dtype=a.dtype), [u(3, 4)]),
    "topk": (lambda m, a: a.topk(2, dim=-1).values.exp(), [u(3, 5)]),
    "topk_smallest": (lambda m, a: m.topk(a, 2, dim=0, largest=False)[0], [u(4, 3)]),
    "cumsum": (lambda m, a: m.cumsum(a, dim=1) ** 2, [u(3, 4)]),
    "cumprod": (lambda m, a: m.cumprod(a, 0), [u(5, 2)]),
    "cumprod_zero": (lambda m, a: m.cumprod(a * m.tensor([1.0, 0.0, 1.0, 1.0], dtype=a.dtype), 0), [u(4)]),
    "prod": (lambda m, a: a.prod() + m.prod(a, dim=1).sum(), [u(3, 4)]),
    "prod_keep": (lambda m, a: a.prod(0, keepdim=True), [u(3, 2)]),
    "flip": (lambda m, a: m.flip(a, (0, 1)) * m.arange(8, dtype=a.dtype).reshape(2, 4), [u(2, 4)]),
    "roll": (lambda m, a: m.roll(a, 2, 1) * m.arange(12, dtype=a.dtype).reshape(3, 4), [u(3, 4)]),
    "roll_flat": (lambda m, a: m.roll(a, -3) * m.arange(12, dtype=a.dtype).reshape(3, 4), [u(3, 4)]),
    "tril": (lambda m, a: m.tril(a, -1) + m.triu(a, 1) * 2, [u(3, 4)]),
    "masked_fill": (lambda m, a: a.masked_fill(a > 0.5, 0.25), [u(3, 4)]),
    "gather": (lambda m, a: m.gather(a, 1, m.tensor(IDX)), [u(2, 4)]),
    "gather_dim0": (lambda m, a: a.gather(0, m.tensor(IDX[:, :2])), [u(3, 3)]),
    "take_along_dim": (lambda m, a: m.take_along_dim(a, m.tensor(IDX), 1), [u(2, 5)]),
    "index_select": (lambda m, a: m.index_select(a, 0, m.tensor([2, 0, 2])), [u(3, 4)]),
    "scatter_add": (lambda m, a, s: m.scatter_add(a, 1, m.tensor(IDX), s), [u(2, 4), u(2, 3)]),
    "index_add": (lambda m, a, s: a.index_add(0, m.tensor([0, 2, 0]), s, alpha=2.0), [u(3, 4), u(3, 4)]),
    "split": (lambda m, a: a.split(2, dim=1)[1] * 3 + a.split([1, 2], 0)[1].sum(), [u(3, 4)]),
    "chunk": (lambda m, a: m.chunk(a, 3, dim=1)[2].sum() + a.chunk(2)[0].sum(), [u(3, 5)]),
    "repeat": (lambda m, a: a.repeat(2, 1, 3) * m.arange(36, dtype=a.dtype).reshape(2, 3, 6), [u(3, 2)]),
    "tile": (lambda m, a: m.tile(a, (2,)) * m.arange(6, dtype=a.dtype).reshape(3, 2), [u(3, 1)]),
    "expand": (lambda m, a: a.expand(2, 3, 4).sum(0), [u(3, 1)]),
    "tan": (lambda m, a: m.tan(a), [u(5, lo=-1.2, hi=1.2)]),
    "reciprocal": (lambda m, a: m.reciprocal(a) + a.reciprocal(), [u(5, lo=0.5, hi=2)]),
    "rsqrt": (lambda m, a: m.rsqrt(a), [u(5, lo=0.5, hi=2)]),
    "expm1": (lambda m, a: m.expm1(a), [u(5)]),
    "log2": (lambda m, a: m.log2(a) + m.log10(a), [u(5, lo=0.5, hi=2)]),
    "atan": (lambda m, a: m.atan(a) + m.asin(a * 0.4) + m.acos(a * 0.4), [u(5)]),
    "einsum": (lambda m, a, b, c: m.einsum("bij,bjk,k->bi", a, b, c), [u(2, 3, 4), u(2, 4, 5), u(5)]),
    "einsum_list": (lambda m, a, b: m.einsum("ij,kj", [a, b]), [u(3, 4), u(2, 4)]),
    "einsum_trace_out": (lambda m, a: m.einsum("ij->", a), [u(3, 4)]),
    "norm": (lambda m, a: m.norm(a) + a.norm(p=3, dim=1).sum() + a.norm(dim=0, keepdim=True).sum(), [u(3, 4)]),
    "norm_zero_row": (lambda m, a: m.norm(a * m.tensor([[0.0], [1.0]], dtype=a.dtype), dim=1), [u(2, 3)]),
    "norm_inf": (lambda m, a: m.linalg.vector_norm(a, float("inf"), dim=1), [u(3, 4)]),
    "atan2": (lambda m, a, b: m.atan2(a, b), [u(3, 4), u(4)]),
    "var_std": (lambda m, a: a.var() + a.std(dim=0).sum() + m.var(a, 1, keepdim=True).sum(), [u(3, 4)]),
    "floor_ceil": (lambda m, a: m.floor(a) * a + m.ceil(a) + m.round(a) * a + m.trunc(a) + m.sign(a) * a,
                   [u(6) + 0.05]),
}


def _run(lib, fn, arrays):
    make = (lambda v: gpuad.tensor(v, requires_grad=True)) if lib is gpuad else \
        (lambda v: torch.tensor(v, requires_grad=True))
    ts = [make(a) for a in arrays]
    out = fn(lib, *ts)
    w = np.linspace(0.5, 1.5, int(np.prod(out.shape))).reshape(tuple(out.shape))
    (out * (gpuad.tensor(w) if lib is gpuad else torch.tensor(w))).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() if t.grad is not None else None for t in ts]


@pytest.mark.parametrize("name", sorted(CASES))
def test_everyday_op_matches_torch(name):
    fn, arrays = CASES[name]
    got, got_grads = _run(gpuad, fn, arrays)
    want, want_grads = _run(torch, fn, arrays)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        if w is None:
            assert g is None or not g.any()
        else:
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_argmin(name):
    a = u(3, 4)
    for kw in ({}, {"dim": 1}, {"dim": 0, "keepdim": True}):
        got = getattr(gpuad.tensor(a), name)(**kw)
        want = getattr(torch.tensor(a), name)(**kw)
        assert got.tolist() == want.tolist() and str(got.dtype) == "int64"


def test_sort_returns_indices_that_sort():
    a = u(4, 6)
    v, i = gpuad.sort(gpuad.tensor(a), dim=1)
    vt, it = torch.sort(torch.tensor(a), dim=1)
    assert i.tolist() == it.tolist() and v.tolist() == vt.tolist()


def test_size_and_format_as_torch():
    t = gpuad.zeros(2, 3)
    assert t.size() == (2, 3) and t.size(1) == 3 and t.size(-2) == 2 and t.numel() == 6
    loss = gpuad.tensor(0.123456)
    assert f"{loss:.3f}" == f"{torch.tensor(0.123456):.3f}" == "0.123"
    with pytest.raises(IndexError):
        t.size(2)


def test_masks_and_integer_operators_as_torch():
    a = np.array([[1, -2, 3], [4, 0, -6]])
    g, t = gpuad.tensor(a), torch.tensor(a)
    for fn in (lambda x: (x > 0) & (x < 4), lambda x: (x > 0) | (x == -6), lambda x: (x > 0) ^ (x > 2),
               lambda x: ~(x > 0), lambda x: x % 4, lambda x: x // 4, lambda x: (x > 0).any(dim=1),
               lambda x: (x != 0).all(), lambda x: x.logical_not(), lambda x: x.logical_and(x > 1)):
        mine, theirs = fn(g), fn(t)
        assert mine.tolist() == theirs.tolist() and str(mine.dtype) == str(theirs.dtype).replace("torch.", "")


def test_remainder_gradient_as_torch():
    a, b = u(5) * 3, u(5) + 3.5
    x, y, xt, yt = (gpuad.tensor(a, requires_grad=True), gpuad.tensor(b, requires_grad=True),
                    torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True))
    (x % y).sum().backward(), (xt % yt).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), yt.grad.numpy())
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_erf_matches_torch(dtype):
    x = np.concatenate([np.linspace(-6, 6, 20001), [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -3e-8]]).astype(dtype)
    got = gpuad.erf(gpuad.tensor(x)).numpy()
    want = torch.erf(torch.from_numpy(x.astype(np.float32 if dtype == np.float16 else dtype))).numpy()
    assert got.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-300)
    else:
        finite = np.isfinite(x)
        ulps = np.abs(got[finite].astype(np.float64) - want[finite].astype(dtype).astype(np.float64)) / \
            np.spacing(np.abs(want[finite].astype(dtype))).astype(np.float64)
        assert ulps.max() <= 2
        assert np.isnan(got[-3]) and got[-5] == 1.0 and got[-4] == -1.0
