"""scaled_dot_product_attention against torch's, in float64 (1e-10) and float32 (1e-5),
with several key tiles (TILE made small), masks, causal, scale, broadcasting; what the
node saves; dropout replayed in backward."""
import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad.ops import attention as A

torch = pytest.importorskip("torch")
R = np.random.default_rng(12)


@pytest.fixture(params=[256, 3], ids=["one-tile", "many-tiles"])
def tile(request, monkeypatch):
    monkeypatch.setattr(A, "TILE", request.param)
    return request.param


CASES = {
    "plain": ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6), {}),
    "causal": ((2, 6, 4), (2, 6, 4), (2, 6, 5), {"is_causal": True}),
    "causal_rect": ((5, 4), (9, 4), (9, 4), {"is_causal": True}),
    "bool_mask": ((2, 5, 4), (2, 7, 4), (2, 7, 4), {"attn_mask": "bool"}),
    "additive_mask": ((2, 5, 4), (2, 7, 4), (2, 7, 4), {"attn_mask": "float"}),
    "scale": ((3, 4), (6, 4), (6, 2), {"scale": 0.17}),
    "broadcast_kv": ((2, 3, 5, 4), (1, 3, 6, 4), (1, 3, 6, 4), {}),
}


def _mask(kind, L, S, dtype):
    return (R.random((L, S)) > 0.3) | np.eye(L, S, dtype=bool) if kind == "bool" else \
        R.standard_normal((1, L, S)).astype(dtype)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_attention_matches_torch(name, dtype, tol, tile):
    qs, ks, vs, kw = CASES[name]
    arrays = [R.standard_normal(s).astype(dtype) for s in (qs, ks, vs)]
    kw = dict(kw)
    if "attn_mask" in kw:
        kw["attn_mask"] = _mask(kw["attn_mask"], qs[-2], ks[-2], dtype)
    mine = [gpuad.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    tkw = {k: (torch.tensor(v) if k == "attn_mask" else v) for k, v in kw.items()}
    o = F.scaled_dot_product_attention(*mine, **kw)
    ot = torch.nn.functional.scaled_dot_product_attention(*theirs, **tkw)
    w = R.standard_normal(o.shape).astype(dtype)
    (o * gpuad.tensor(w)).sum().backward()
    (ot * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(o.numpy(), ot.detach().numpy(), rtol=tol, atol=tol)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=tol, atol=tol)


def test_nothing_of_size_L_by_S_is_saved():
    q = gpuad.tensor(R.standard_normal((2, 64, 8)), requires_grad=True)
    k = gpuad.tensor(R.standard_normal((2, 96, 8)), requires_grad=True)
    out = F.scaled_dot_product_attention(q, k, k)
    sizes = [s.size for s in out._node.saved if hasattr(s, "size")]
    assert max(sizes) <= 2 * 96 * 8 and 2 * 64 * 96 not in sizes       # q, k, v, out, and lse (2 x 64 x 1)


def test_fully_masked_rows_give_zero_as_torch():
    mask = np.ones((3, 4), bool)
    mask[1] = False
    q, k = np.ones((3, 2)), np.ones((4, 2))
    mine = F.scaled_dot_product_attention(gpuad.tensor(q), gpuad.tensor(k), gpuad.tensor(k), attn_mask=mask)
    theirs = torch.nn.functional.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.tensor(k),
                                                              attn_mask=torch.tensor(mask))
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    qg = gpuad.tensor(q, requires_grad=True)
    F.scaled_dot_product_attention(qg, gpuad.tensor(k), gpuad.tensor(k), attn_mask=mask).sum().backward()
    assert not np.isnan(qg.grad.numpy()).any() and not qg.grad.numpy()[1].any()


def test_dropout_replays_its_masks_in_backward(tile):
    q, k, v = (gpuad.tensor(R.standard_normal((2, 5, 3)), requires_grad=True) for _ in range(3))
    gpuad.manual_seed(3)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    gpuad.manual_seed(3)
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    c = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())
    assert gpuad.gradcheck(lambda x, y, z: _seeded(x, y, z), [t.numpy() for t in (q, k, v)])


def _seeded(q, k, v):
    gpuad.manual_seed(11)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.4)


def test_bad_arguments_say_what_is_wrong():
    q = gpuad.ones((2, 3, 4))
    with pytest.raises(ValueError, match="not both"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((3, 3), bool), is_causal=True)
    with pytest.raises(ValueError, match="one E"):
        F.scaled_dot_product_attention(q, gpuad.ones((2, 3, 5)), q)
    with pytest.raises(ValueError, match="does not broadcast"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="one dtype"):
        F.scaled_dot_product_attention(q, q, gpuad.ones((2, 3, 4), dtype="float64"))
