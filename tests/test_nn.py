"""nn: the fused linear, losses, dropout, modules, optimizers; the lecture's three
architectures against PyTorch and trained until the loss falls."""
import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim
from tests.conftest import torch_or_skip

R = np.random.default_rng(21)


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid", "gelu"])
def test_fused_linear_equals_composite(activation):
    x = R.standard_normal((6, 5))
    w = R.standard_normal((4, 5))
    b = R.standard_normal(4)
    u = R.standard_normal((6, 4))
    acts = {None: lambda z: z, "relu": gpuad.relu, "tanh": gpuad.tanh, "sigmoid": gpuad.sigmoid, "gelu": gpuad.gelu}

    def run(fused):
        xt, wt, bt = (gpuad.tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.linear(xt, wt, bt, activation) if fused else acts[activation](xt @ wt.T + bt)
        (y * gpuad.tensor(u)).sum().backward()
        return y.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()

    for a, c in zip(run(True), run(False)):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-13)


def test_linear_saves_the_least():
    x = gpuad.tensor(R.standard_normal((3, 4)))                      # GREY input
    w = gpuad.tensor(R.standard_normal((2, 4)), requires_grad=True)
    b = gpuad.tensor(np.zeros(2), requires_grad=True)
    y = F.linear(x, w, b, "tanh")
    xs, ws, ys = y._node.saved
    assert xs is x.data and ws is None and ys is y.data              # W not kept: nobody needs dX
    assert F.linear(x, w, b)._node.saved == (x.data, None)           # no activation: nothing more
    z = F.linear(x, w, b, "gelu")
    assert len(z._node.saved) == 4 and z._node.saved[3].shape == (3, 2)   # gelu keeps its pre-activation


def test_linear_backward_computes_dz_once():
    """dX, dW and db all come from one dZ: check by counting tanh-derivative passes."""
    x = gpuad.tensor(R.standard_normal((3, 4)), requires_grad=True)
    w = gpuad.tensor(R.standard_normal((2, 4)), requires_grad=True)
    b = gpuad.tensor(np.zeros(2), requires_grad=True)
    y = F.linear(x, w, b, "tanh")
    calls = []
    from gpuad.ops import fused as N
    orig = N._linear_grads

    def spy(xp, dz, *a):
        calls.append(dz)
        return orig(xp, dz, *a)
    N._linear_grads = spy
    gpuad.set_kernels("numpy")           # the generic VJP (a device provider's kernel has its own)
    try:
        y.sum().backward()
    finally:
        N._linear_grads = orig
        gpuad.set_kernels(None)
    assert len(calls) == 1
    np.testing.assert_allclose(b.grad.numpy(), (1 - y.numpy() ** 2).sum(0))


def test_mse_and_cross_entropy_against_torch():
    torch = torch_or_skip()
    z = R.standard_normal((5, 7)) * 30       # large logits: must stay stable
    t = np.array([0, 6, 3, 3, 1])
    for reduction in ("mean", "sum", "none"):
        zg = gpuad.tensor(z, requires_grad=True)
        zt = torch.tensor(z, requires_grad=True)
        lg = F.cross_entropy(zg, gpuad.tensor(t), reduction=reduction)
        lt = torch.nn.functional.cross_entropy(zt, torch.tensor(t), reduction=reduction)
        np.testing.assert_allclose(lg.numpy(), lt.detach().numpy(), rtol=1e-12)
        w = R.standard_normal(lg.shape)
        (lg * gpuad.tensor(w)).sum().backward()
        (lt * torch.tensor(w)).sum().backward()
        np.testing.assert_allclose(zg.grad.numpy(), zt.grad.numpy(), rtol=1e-10, atol=1e-14)
    a, b = R.standard_normal((3, 4)), R.standard_normal((3, 4))
    np.testing.assert_allclose(F.mse_loss(gpuad.tensor(a), gpuad.tensor(b)).item(),
                               torch.nn.functional.mse_loss(torch.tensor(a), torch.tensor(b)).item(), rtol=1e-14)


def test_dropout_seed_mask_and_eval():
    x = gpuad.ones((50, 40), requires_grad=True)
    gpuad.manual_seed(9)
    a = F.dropout(x, 0.3)
    gpuad.manual_seed(9)
    b = F.dropout(x, 0.3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    kept = a.numpy() != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(a.numpy()[kept], 1 / 0.7, rtol=1e-6)
    a.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), kept / 0.7, rtol=1e-6)
    layer = nn.Dropout(0.5)
    layer.eval()
    assert layer(x) is x
    assert F.dropout(x, 0.5, training=False) is x


def _copy_to_torch(torch, module, tmodule, mapping=None):
    with torch.no_grad():
        for name, p in module.named_parameters():
            tname = mapping(name) if mapping else name
            dict(tmodule.named_parameters())[tname].copy_(torch.tensor(p.numpy()))


def test_mlp_gradients_equal_torch():
    torch = torch_or_skip()
    gpuad.manual_seed(1)
    net = nn.MLP([6, 16, 16, 3], activation="tanh", dtype="float64")
    tnet = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).double()
    names = {"0": "0", "1": "2", "2": "4"}
    _copy_to_torch(torch, net, tnet, lambda n: names[n.split(".")[0]] + "." + n.split(".")[1])
    x, y = R.standard_normal((8, 6)), R.standard_normal((8, 3))
    F.mse_loss(net(gpuad.tensor(x)), gpuad.tensor(y)).backward()
    torch.nn.functional.mse_loss(tnet(torch.tensor(x)), torch.tensor(y)).backward()
    tparams = dict(tnet.named_parameters())
    for name, p in net.named_parameters():
        tp = tparams[names[name.split(".")[0]] + "." + name.split(".")[1]]
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_resnet_gradients_equal_torch():
    torch = torch_or_skip()
    gpuad.manual_seed(2)
    net = nn.ResNet(5, 8, 3, 2, activation="tanh", dtype="float64")
    layers = [torch.nn.Linear(5, 8).double()] + [torch.nn.Linear(8, 8).double() for _ in range(3)] + \
             [torch.nn.Linear(8, 2).double()]
    with torch.no_grad():
        for name, p in net.named_parameters():
            idx, rest = name.split(".", 1)
            getattr(layers[int(idx)], rest.split(".")[-1]).copy_(torch.tensor(p.numpy()))
    x = R.standard_normal((4, 5))
    net(gpuad.tensor(x)).sum().backward()
    h = torch.tanh(layers[0](torch.tensor(x)))
    for layer in layers[1:4]:
        h = torch.tanh(layer(h)) + h
    layers[4](h).sum().backward()
    for name, p in net.named_parameters():
        idx, rest = name.split(".", 1)
        tp = getattr(layers[int(idx)], rest.split(".")[-1])
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_rnn_gradients_equal_torch_including_shared_accumulation():
    torch = torch_or_skip()
    gpuad.manual_seed(3)
    rnn = nn.RNN(3, 6, dtype="float64")
    trnn = torch.nn.RNN(3, 6).double()
    _copy_to_torch(torch, rnn, trnn)
    x = R.standard_normal((9, 2, 3))
    out, h = rnn(gpuad.tensor(x))
    tout, th = trnn(torch.tensor(x))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12)
    w = R.standard_normal(out.shape)
    ((out * gpuad.tensor(w)).sum() + h.sum()).backward()
    ((tout * torch.tensor(w)).sum() + th.sum()).backward()
    tparams = dict(trnn.named_parameters())
    for name, p in rnn.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tparams[name].grad.numpy(), rtol=1e-8, atol=1e-12)
    # shared parameters: the gradient is the sum of per-step contributions (BPTT)
    assert rnn.weight_hh_l0.grad is not None


def _train(model, loss_fn, opt, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_reduces_loss_10x():
    """The lecture's three architectures (the GPT and CNN demos have their own tests)."""
    from gpuad import demo
    for name, run in demo.TASKS.items():
        if name in ("gpt", "cnn"):
            continue
        losses = run(verbose=False)
        assert losses[-1] * 10 <= losses[0], f"{name}: loss went {losses[0]:.4g} -> {losses[-1]:.4g}"


@pytest.mark.parametrize("kind", ["sgd", "sgd_momentum", "sgd_nesterov_wd", "adam", "adam_wd"])
def test_optimizer_steps_equal_torch(kind):
    torch = torch_or_skip()
    w0 = R.standard_normal((3, 4))
    grads = [R.standard_normal((3, 4)) for _ in range(4)]
    configs = {
        "sgd": (optim.SGD, torch.optim.SGD, dict(lr=0.1)),
        "sgd_momentum": (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1)),
        "sgd_nesterov_wd": (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
        "adam": (optim.Adam, torch.optim.Adam, dict(lr=0.01)),
        "adam_wd": (optim.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    }
    ours, theirs, kw = configs[kind]
    p = gpuad.tensor(w0, requires_grad=True)
    tp = torch.tensor(w0, requires_grad=True)
    opt, topt = ours([p], **kw), theirs([tp], **kw)
    for g in grads:
        p.grad = gpuad.tensor(g)
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-13, atol=1e-15)


def test_state_dict_round_trip():
    gpuad.manual_seed(4)
    a = nn.MLP([4, 8, 2])
    gpuad.manual_seed(5)
    b = nn.MLP([4, 8, 2])
    x = gpuad.tensor(R.standard_normal((3, 4)), dtype="float32")
    assert not np.array_equal(a(x).numpy(), b(x).numpy())
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    with pytest.raises(KeyError, match=r"Missing key\(s\) in state_dict"):
        b.load_state_dict({})
    bad = dict(a.state_dict())
    bad["0.weight"] = gpuad.zeros((1, 1))
    with pytest.raises(ValueError, match=r"0\.weight has shape \(1, 1\)"):
        b.load_state_dict(bad)


def test_module_api():
    net = nn.Sequential(nn.Linear(2, 3, activation="relu"), nn.Dropout(0.1), nn.Linear(3, 1))
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert net[1].training
    lin = nn.Linear(5, 7)
    bound = 1 / np.sqrt(5)
    assert lin.weight.shape == (7, 5) and np.abs(lin.weight.numpy()).max() <= bound
    assert lin.weight.requires_grad and isinstance(lin.weight, nn.Parameter)
    assert "in_features=5" in repr(lin)


# --- bad input ---------------------------------------------------------------------

def test_linear_wrong_inner_dimension_names_layer_and_shapes():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"Linear\(in_features=4, out_features=3.*input of shape \(2, 5\) does not "
                                         r"fit weight of shape \(3, 4\)"):
        lin(gpuad.ones((2, 5)))


def test_unknown_activation_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; choose one of None, 'relu', 'tanh'"):
        nn.Linear(2, 2, activation="swish")
    with pytest.raises(ValueError, match="unknown activation"):
        F.linear(gpuad.ones((1, 2)), gpuad.ones((2, 2)), activation="elu")


def test_cross_entropy_bad_targets():
    z = gpuad.zeros((3, 4), requires_grad=True)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\) \(or be ignore_index=-100\), got values from 0 to 4"):
        F.cross_entropy(z, gpuad.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"probability targets of shape \(3,\) do not fit logits"):
        F.cross_entropy(z, gpuad.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer class indices or float probabilities, got dtype bool"):
        F.cross_entropy(z, gpuad.tensor([True, False, True]))
    with pytest.raises(ValueError, match=r"targets of shape \(2,\)"):
        F.cross_entropy(z, gpuad.tensor([0, 1]))


def test_optimizer_rejects_an_empty_list_and_non_tensors():
    # (a frozen parameter is accepted and skipped: tests/test_torch_habits.py)
    with pytest.raises(TypeError, match="parameter 1 is a list, not a Tensor"):
        optim.SGD([gpuad.ones(3, requires_grad=True), [1.0]], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_linear_with_only_its_bias_trainable(activation):
    """A frozen weight and input, a trainable bias (BitFit): the fused linear's backward
    saves neither x nor w, and its kernels still know the weight's shape."""
    rng = np.random.default_rng(0)
    x, w = gpuad.tensor(rng.standard_normal((5, 3))), gpuad.tensor(rng.standard_normal((4, 3)))
    b = gpuad.tensor(rng.standard_normal(4), requires_grad=True)
    F.linear(x, w, b, activation).sum().backward()
    z = x.numpy() @ w.numpy().T + b.detach().numpy()
    d = {None: np.ones_like(z), "relu": (z > 0) * 1.0}.get(activation)
    if d is None:
        from math import erf, pi, sqrt
        cdf = 0.5 * (1 + np.vectorize(erf)(z / sqrt(2)))
        d = cdf + z * np.exp(-z * z / 2) / sqrt(2 * pi)
    np.testing.assert_allclose(b.grad.numpy(), d.sum(0), rtol=1e-5, atol=1e-6)
