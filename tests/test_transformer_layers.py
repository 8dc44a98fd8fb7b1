"""layer_norm, rms_norm, embedding and the transformer modules against torch, float64."""
import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn

torch = pytest.importorskip("torch")
R = np.random.default_rng(8)


def both(arrays):
    return [gpuad.tensor(a, requires_grad=True) for a in arrays], [torch.tensor(a, requires_grad=True) for a in arrays]


def compare(mine_out, theirs_out, mine_in, theirs_in, tol=1e-10):
    w = R.standard_normal(theirs_out.shape)
    (mine_out * gpuad.tensor(w)).sum().backward()
    (theirs_out * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(mine_out.numpy(), theirs_out.detach().numpy(), rtol=tol, atol=tol)
    for a, b in zip(mine_in, theirs_in):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape,norm", [((4, 6), (6,)), ((2, 3, 4, 5), (4, 5)), ((7,), 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(shape, norm, affine):
    ns = (norm,) if isinstance(norm, int) else norm
    arrays = [R.standard_normal(shape)] + ([R.standard_normal(ns), R.standard_normal(ns)] if affine else [])
    g, t = both(arrays)
    compare(F.layer_norm(g[0], norm, *g[1:], eps=1e-5), torch.nn.functional.layer_norm(t[0], ns, *t[1:], eps=1e-5), g, t)


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm_matches_torch(eps):
    g, t = both([R.standard_normal((3, 4, 6)), R.standard_normal(6)])
    compare(F.rms_norm(g[0], (6,), g[1], eps), torch.nn.functional.rms_norm(t[0], (6,), t[1], eps), g, t)


def test_norms_save_statistics_not_copies():
    x = gpuad.tensor(R.standard_normal((8, 16)), requires_grad=True)
    y = F.layer_norm(x, (16,))
    assert sorted(s.shape for s in y._node.saved if hasattr(s, "shape")) == [(8, 1), (8, 1), (8, 16)]


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_matches_torch_with_repeated_ids(padding_idx):
    ids = np.array([[1, 2, 1, 4], [4, 4, 0, 2]])
    g, t = both([R.standard_normal((5, 3))])
    compare(F.embedding(gpuad.tensor(ids), g[0], padding_idx),
            torch.nn.functional.embedding(torch.tensor(ids), t[0], padding_idx), g, t)


def test_modules_have_torchs_names_and_init():
    emb, ln, rms = nn.Embedding(10, 4, padding_idx=0), nn.LayerNorm((4,)), nn.RMSNorm(4)
    assert [n for n, _ in emb.named_parameters()] == ["weight"] and not emb.weight.numpy()[0].any()
    assert [n for n, _ in ln.named_parameters()] == ["weight", "bias"] and ln.weight.numpy().tolist() == [1] * 4
    assert rms(gpuad.ones(2, 4)).shape == (2, 4)
    mha = nn.MultiheadAttention(8, 2)
    assert [n for n, _ in mha.named_parameters()] == ["in_proj_weight", "in_proj_bias", "out_proj.weight",
                                                      "out_proj.bias"]
    assert [n for n, _ in mha.named_parameters()] == [n for n, _ in torch.nn.MultiheadAttention(8, 2).named_parameters()]


MHA = {
    "plain": dict(), "no_weights": dict(need_weights=False), "per_head": dict(average_attn_weights=False),
    "bool_mask": dict(attn_mask="bool"), "float_mask_no_weights": dict(attn_mask="float", need_weights=False),
    "padding": dict(key_padding_mask=True), "padding_fused": dict(key_padding_mask=True, need_weights=False),
    "causal_fused": dict(attn_mask="causal", is_causal=True, need_weights=False),
}


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", sorted(MHA))
def test_multihead_attention_matches_torch(name, batch_first):
    E, H, N, L, S = 8, 2, 3, 5, 6
    kw = dict(MHA[name])
    theirs = torch.nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=torch.float64)
    mine = nn.MultiheadAttention(E, H, batch_first=batch_first, dtype="float64")
    mine.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    shape_q = (N, L, E) if batch_first else (L, N, E)
    shape_k = (N, S, E) if batch_first else (S, N, E)
    if name.startswith("causal"):
        shape_k = shape_q
    g, t = both([R.standard_normal(shape_q), R.standard_normal(shape_k), R.standard_normal(shape_k)])
    s = shape_k[1] if batch_first else shape_k[0]
    mkw, tkw = {}, {}
    for key, value in kw.items():
        if key == "attn_mask":
            m = {"bool": R.random((L, S)) > 0.7, "float": R.standard_normal((L, S)),
                 "causal": np.triu(np.ones((L, L), bool), 1)}[value]
            mkw[key], tkw[key] = m, torch.tensor(m)
        elif key == "key_padding_mask":
            kp = np.zeros((N, s), bool)
            kp[:, -2:] = True
            mkw[key], tkw[key] = kp, torch.tensor(kp)
        else:
            mkw[key] = tkw[key] = value
    out, w = mine(*g, **mkw)
    out_t, w_t = theirs(*t, **tkw)
    compare(out, out_t, g, t)
    if w_t is None:
        assert w is None
    else:
        np.testing.assert_allclose(w.numpy(), w_t.detach().numpy(), rtol=1e-10, atol=1e-12)


def _gpt_grads(checkpoint):
    gpuad.manual_seed(1)
    gpt = nn.GPT(13, 16, d_model=16, n_layers=4, n_heads=2, checkpoint=checkpoint)
    ids = np.random.default_rng(2).integers(0, 13, (3, 16))
    loss = F.cross_entropy(gpt(gpuad.tensor(ids)).reshape(-1, 13), gpuad.tensor(np.roll(ids, -1, 1)).reshape(-1))
    loss.backward()
    return [p.grad.numpy().copy() for p in gpt.parameters()]


def test_gpt_checkpointing_gives_bitwise_equal_gradients():
    plain = _gpt_grads(None)
    for option in ("sqrt", 2):
        for a, b in zip(plain, _gpt_grads(option)):
            np.testing.assert_array_equal(a, b)


def test_gpt_step_peak_is_predicted():
    gpuad.manual_seed(1)
    gpt = nn.GPT(13, 32, d_model=32, n_layers=2, n_heads=4)
    ids = np.random.default_rng(3).integers(0, 13, (4, 32))
    with gpuad.memory.track() as m:
        loss = F.cross_entropy(gpt(gpuad.tensor(ids)).reshape(-1, 13), gpuad.tensor(ids).reshape(-1))
        predicted = gpuad.memory.predict_backward_peak(loss)
        gpuad.memory.reset_peak()
        loss.backward()
    assert predicted == pytest.approx(m.peak_bytes_absolute, rel=0.02)


def test_gpt_demo_learns():
    from gpuad.demo import train_gpt
    losses = train_gpt(verbose=False, steps=80)
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:5])
