"""nn and optim as torch has them: containers, losses, clipping, optimizers with groups
and resumable state, schedulers; each against torch in float64."""
import warnings

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim

torch = pytest.importorskip("torch")
R = np.random.default_rng(5)


def pair(a):
    return gpuad.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


# --- containers ---------------------------------------------------------------------------

def test_module_list_and_dict_register_their_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(3, 3) for _ in range(2)])
            self.heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 2)})

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.heads["a"](x).sum() + self.heads["b"](x).sum()
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias", "heads.a.weight",
                     "heads.a.bias", "heads.b.weight", "heads.b.bias"]
    net(gpuad.ones(2, 3)).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.blocks.append(nn.Linear(3, 3))
    assert len(net.blocks) == 3 and len(list(net.parameters())) == 10 and "a" in net.heads


def test_a_plain_list_of_modules_warns():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Linear(2, 2)]
    with pytest.warns(UserWarning, match="registers none of them.*ModuleList"):
        Net()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_module(approximate):
    x, xt = pair(R.uniform(-3, 3, 7))
    y, yt = nn.GELU(approximate)(x), torch.nn.GELU(approximate)(xt)
    y.sum().backward(), yt.sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-13)


# --- losses -------------------------------------------------------------------------------

CE = {
    "plain": (lambda m, F_, z, t: F_.cross_entropy(z, t), (4, 5), "idx"),
    "spatial": (lambda m, F_, z, t: F_.cross_entropy(z, t), (2, 5, 3, 2), "idx_spatial"),
    "ignore": (lambda m, F_, z, t: F_.cross_entropy(z, t, ignore_index=1), (6, 4), "idx"),
    "ignore_sum": (lambda m, F_, z, t: F_.cross_entropy(z, t, ignore_index=2, reduction="sum"), (6, 4), "idx"),
    "smooth": (lambda m, F_, z, t: F_.cross_entropy(z, t, label_smoothing=0.2), (4, 5), "idx"),
    "weight": (lambda m, F_, z, t: F_.cross_entropy(z, t, weight=m.tensor([1.0, 2.0, 0.5, 3.0, 1.0],
                                                                             dtype=m.float64)), (4, 5), "idx"),
    "weight_smooth_ignore": (lambda m, F_, z, t: F_.cross_entropy(
        z, t, weight=m.tensor([1.0, 2.0, 0.5, 3.0], dtype=m.float64), ignore_index=0, label_smoothing=0.1),
        (6, 4), "idx"),
    "probs": (lambda m, F_, z, t: F_.cross_entropy(z, t), (4, 5), "probs"),
    "probs_smooth_none": (lambda m, F_, z, t: F_.cross_entropy(z, t, label_smoothing=0.3, reduction="none"),
                          (4, 5), "probs"),
    "unbatched": (lambda m, F_, z, t: F_.cross_entropy(z, t), (5,), "idx0"),
}


@pytest.mark.parametrize("name", sorted(CE))
def test_cross_entropy_variants_match_torch(name):
    fn, shape, kind = CE[name]
    z = R.standard_normal(shape)
    if kind == "idx":
        t = R.integers(0, shape[1], shape[0])
    elif kind == "idx_spatial":
        t = R.integers(0, shape[1], (shape[0],) + shape[2:])
    elif kind == "idx0":
        t = np.array(2)
    else:
        t = R.dirichlet(np.ones(shape[1]), shape[0])
    zg, zt = pair(z)
    got = fn(gpuad, F, zg, gpuad.tensor(t))
    want = fn(torch, torch.nn.functional, zt, torch.tensor(t))
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-12)
    got.sum().backward(), want.sum().backward()
    np.testing.assert_allclose(zg.grad.numpy(), zt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_mse_loss_warns_when_shapes_broadcast():
    with pytest.warns(UserWarning, match="different to the input size"):
        F.mse_loss(gpuad.ones(3, 1), gpuad.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.mse_loss(gpuad.ones(3), gpuad.ones(3))


# --- clipping -----------------------------------------------------------------------------

@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    a, b = R.standard_normal((3, 4)), R.standard_normal(5)
    (ga, ta), (gb, tb) = pair(a), pair(b)
    ((ga ** 2).sum() * 3 + gb.sum()).backward()
    ((ta ** 2).sum() * 3 + tb.sum()).backward()
    n = nn.utils.clip_grad_norm_([ga, gb], 0.5, norm_type)
    nt = torch.nn.utils.clip_grad_norm_([ta, tb], 0.5, norm_type)
    assert n.item() == pytest.approx(nt.item(), rel=1e-12)
    np.testing.assert_allclose(ga.grad.numpy(), ta.grad.numpy(), rtol=1e-12)
    nn.utils.clip_grad_value_([ga, gb], 0.01)
    torch.nn.utils.clip_grad_value_([ta, tb], 0.01)
    np.testing.assert_allclose(gb.grad.numpy(), tb.grad.numpy(), rtol=1e-12)


# --- optimizers ---------------------------------------------------------------------------

def _train(lib, opt_cls, groups_fn, steps, sched=None, start=None):
    rng = np.random.default_rng(0)
    w0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(3)
    w = (gpuad if lib is gpuad else torch).tensor(w0, requires_grad=True)
    b = (gpuad if lib is gpuad else torch).tensor(b0, requires_grad=True)
    opt = opt_cls(groups_fn(w, b))
    s = sched(opt) if sched else None
    x = (gpuad if lib is gpuad else torch).tensor(rng.standard_normal((8, 4)))
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x @ w.T + b) ** 2).mean()
        loss.backward()
        opt.step()
        if s:
            s.step()
    return w, b, opt, s


OPTS = {
    "adamw": (lambda m: lambda g: m.optim.AdamW(g, lr=0.05), lambda w, b: [w, b]),
    "adamw_groups": (lambda m: lambda g: m.optim.AdamW(g, lr=0.05, weight_decay=0.1),
                     lambda w, b: [{"params": [w], "lr": 0.01}, {"params": [b], "weight_decay": 0.0}]),
    "adam_amsgrad": (lambda m: lambda g: m.optim.Adam(g, lr=0.05, amsgrad=True), lambda w, b: [w, b]),
    "sgd_groups": (lambda m: lambda g: m.optim.SGD(g, lr=0.1, momentum=0.9),
                   lambda w, b: [{"params": [w]}, {"params": [b], "lr": 0.01, "momentum": 0.5}]),
}


@pytest.mark.parametrize("name", sorted(OPTS))
def test_optimizers_and_param_groups_match_torch(name):
    make, groups = OPTS[name]
    w, b, _, _ = _train(gpuad, make(gpuad), groups, 6)
    wt, bt, _, _ = _train(torch, make(torch), groups, 6)
    np.testing.assert_allclose(w.detach().numpy(), wt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), bt.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_a_resumed_run_reproduces_the_uninterrupted_one_bitwise(kind, tmp_path):
    make = {"sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
            "adam": lambda ps: optim.Adam(ps, lr=0.01), "adamw": lambda ps: optim.AdamW(ps, lr=0.01)}[kind]
    rng = np.random.default_rng(1)
    x = gpuad.tensor(rng.standard_normal((16, 3)).astype(np.float32))
    y = gpuad.tensor(rng.standard_normal((16, 2)).astype(np.float32))

    def run(net, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(net(x), y).backward()
            opt.step()

    gpuad.manual_seed(3)
    net = nn.MLP([3, 8, 2], activation="tanh")
    opt = make(net.parameters())
    run(net, opt, 10)
    straight = [p.numpy().copy() for p in net.parameters()]

    gpuad.manual_seed(3)
    net2 = nn.MLP([3, 8, 2], activation="tanh")
    opt2 = make(net2.parameters())
    run(net2, opt2, 4)
    gpuad.save({"model": net2.state_dict(), "optim": opt2.state_dict()}, tmp_path / "ckpt.gpuad")
    gpuad.manual_seed(99)
    net3 = nn.MLP([3, 8, 2], activation="tanh")
    opt3 = make(net3.parameters())
    ckpt = gpuad.load(tmp_path / "ckpt.gpuad")
    net3.load_state_dict(ckpt["model"])
    opt3.load_state_dict(ckpt["optim"])
    run(net3, opt3, 6)
    for a, b in zip(straight, net3.parameters()):
        np.testing.assert_array_equal(a, b.numpy())


# --- schedulers ---------------------------------------------------------------------------

SCHEDS = {
    "step": lambda m: lambda o: m.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "cosine": lambda m: lambda o: m.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7, eta_min=0.001),
    "lambda": lambda m: lambda o: m.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "linear": lambda m: lambda o: m.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4),
}


@pytest.mark.parametrize("name", sorted(SCHEDS))
def test_schedulers_match_torch(name):
    lrs = {}
    for lib in (gpuad, torch):
        w = lib.tensor(np.ones(2), requires_grad=True)
        opt = lib.optim.SGD([w], lr=0.1)
        s = SCHEDS[name](lib)(opt)
        seq = []
        for _ in range(10):
            (w * w).sum().backward()
            opt.step()
            s.step()
            seq.append(s.get_last_lr()[0])
        lrs[lib.__name__] = seq
    np.testing.assert_allclose(lrs["gpuad"], lrs["torch"], rtol=1e-12)
