"""Checkpointing: exact recompute, sqrt(L) memory, optimal schedules, clear errors."""
import math
import random

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import memory, nn
from gpuad.schedule import (Chain, Schedule, cost_of, min_peak, optimal, peak_of, revolve_dp, revolve_steps,
                            segments_tree)

R = np.random.default_rng(5)


def _grads(params):
    return [p.grad.numpy().copy() for p in params]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("how", [dict(), dict(segments=1), dict(segments=3), dict(segments=9),
                                 dict(budget_bytes=7 * 64 * 16 * 8)])
def test_mlp_gradients_bitwise_equal(how):
    net = nn.MLP([16] * 10, activation="tanh", dtype="float64")
    x = gpuad.tensor(R.standard_normal((64, 16)))
    F.mse_loss(net(x), gpuad.zeros((64, 16), dtype="float64")).backward()
    ref = _grads(net.parameters())
    net.zero_grad()
    F.mse_loss(gpuad.checkpoint_sequential(net, x, **how), gpuad.zeros((64, 16), dtype="float64")).backward()
    _same(ref, _grads(net.parameters()))


def test_resnet_gradients_bitwise_equal():
    net = nn.ResNet(8, 16, 6, 4, activation="tanh", dtype="float64")
    x = gpuad.tensor(R.standard_normal((10, 8)))
    net(x).sum().backward()
    ref = _grads(net.parameters())
    net.zero_grad()
    gpuad.checkpoint_sequential(net, x).sum().backward()
    _same(ref, _grads(net.parameters()))


def test_rnn_gradients_bitwise_equal():
    """Checkpoint blocks of time steps; the shared weights collect every step's share."""
    rnn = nn.RNN(3, 8, dtype="float64")
    seq = gpuad.tensor(R.standard_normal((12, 2, 3)))

    def steps(h, xs):
        for t in range(xs.shape[0]):
            h = gpuad.tanh(F.linear(xs[t], rnn.weight_ih_l0, rnn.bias_ih_l0)
                           + F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0))
        return h
    h0 = gpuad.zeros((2, 8), dtype="float64")
    steps(h0, seq).sum().backward()
    ref = _grads(rnn.parameters())
    rnn.zero_grad()
    h = h0
    for block in range(3):
        h = gpuad.checkpoint(steps, h, seq[block * 4:(block + 1) * 4])
    h.sum().backward()
    _same(ref, _grads(rnn.parameters()))


def test_dropout_inside_a_segment_replays_its_mask():
    net = nn.MLP([16] * 5, activation="relu", dtype="float64")
    x = gpuad.tensor(R.standard_normal((8, 16)))

    def block(h):
        for layer in net:
            h = F.dropout(layer(h), 0.3)
        return h
    gpuad.manual_seed(11)
    block(x).sum().backward()
    ref = _grads(net.parameters())
    net.zero_grad()
    gpuad.manual_seed(11)
    gpuad.checkpoint(block, x).sum().backward()
    _same(ref, _grads(net.parameters()))


def test_gradients_reach_closed_over_parameters_and_grey_args_pass():
    w = gpuad.tensor(R.standard_normal((4, 4)), requires_grad=True)
    x = gpuad.tensor(R.standard_normal((3, 4)))                 # GREY: no input requires grad
    y = gpuad.checkpoint(lambda a, scale, note: (a @ w).tanh() * scale, x, 2.0, note="text")
    assert y.requires_grad
    y.sum().backward()
    ref = gpuad.tensor(w.numpy(), requires_grad=True)
    ((x @ ref).tanh() * 2.0).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), ref.grad.numpy())


def test_autograd_grad_and_nested_checkpoints():
    w = gpuad.tensor(R.standard_normal((5, 5)), requires_grad=True)
    x = gpuad.tensor(R.standard_normal((2, 5)), requires_grad=True)

    def inner(h):
        return (h @ w).sin()

    def outer(h):
        return gpuad.checkpoint(inner, (h @ w).tanh()) * h

    (gx, gw) = gpuad.autograd.grad(gpuad.checkpoint(outer, x).sum(), [x, w])
    (rx, rw) = gpuad.autograd.grad((((x @ w).tanh() @ w).sin() * x).sum(), [x, w])
    np.testing.assert_array_equal(gx.numpy(), rx.numpy())
    np.testing.assert_array_equal(gw.numpy(), rw.numpy())
    assert w.grad is None


def test_tuple_outputs():
    w = gpuad.tensor(R.standard_normal(4), requires_grad=True)
    a, b, tag = gpuad.checkpoint(lambda t: (t * w, (t * w).sin().sum(), "tag"), gpuad.ones(4, dtype="float64"))
    assert tag == "tag" and a.shape == (4,) and b.shape == ()
    (a.sum() + b).backward()
    np.testing.assert_allclose(w.grad.numpy(), 1 + np.cos(w.numpy()), rtol=1e-14)


def test_under_no_grad_it_just_runs():
    w = gpuad.tensor([1.0], requires_grad=True)
    with gpuad.no_grad():
        y = gpuad.checkpoint(lambda t: t * w, gpuad.ones(1))
    assert not y.requires_grad


def test_sequential_checkpoint_option():
    layers = [nn.Linear(8, 8, activation="tanh", dtype="float64") for _ in range(9)]
    x = gpuad.tensor(R.standard_normal((4, 8)))
    plain = nn.Sequential(*layers)
    plain(x).sum().backward()
    ref = _grads(plain.parameters())
    for option in ("sqrt", 3, gpuad.checkpoint.Budget(10_000), "20KiB"):
        net = nn.Sequential(*layers, checkpoint=option)
        net.zero_grad()
        net(x).sum().backward()
        _same(ref, _grads(net.parameters()))
    with pytest.raises(ValueError, match="checkpoint=50 segments, but there are 9 layers"):
        nn.Sequential(*layers, checkpoint=50)


# --- memory ----------------------------------------------------------------------------

def _activation_peak(net, x, **how):
    net.zero_grad()
    with memory.track() as m:
        if how:
            y = gpuad.checkpoint_sequential(net, x, **how)
        else:
            y = net(x)
        y.backward(gpuad.ones(y.shape))          # (a .sum() would add its own output)
        del y
    return m.stats()["activation_peak_bytes"] + x.nbytes     # the chain input is stored too


@pytest.mark.parametrize("L", [16, 64, 256])
def test_activation_peak_grows_like_sqrt_L(L):
    width, batch = 32, 64
    net = nn.MLP([width] * (L + 1), activation="tanh")
    x = gpuad.tensor(R.standard_normal((batch, width)).astype(np.float32))
    plain = _activation_peak(net, x)
    ckpt = _activation_peak(net, x, segments=math.ceil(math.sqrt(L)))
    ratio = ckpt / plain
    assert ratio == pytest.approx(2 / math.sqrt(L), rel=0.10), (ckpt, plain)


@pytest.mark.parametrize("budget_acts", [8, 10, 14])
def test_measured_activation_peak_never_exceeds_the_budget(budget_acts):
    width, batch, L = 32, 64, 24
    net = nn.MLP([width] * (L + 1), activation="tanh")
    x = gpuad.tensor(R.standard_normal((batch, width)).astype(np.float32))
    a = x.nbytes
    budget = budget_acts * a
    measured = _activation_peak(net, x, budget_bytes=budget) - x.nbytes
    assert measured <= budget


def test_predict_backward_peak_accounts_for_checkpoints():
    net = nn.MLP([64] * 17, activation="tanh")
    x = gpuad.tensor(R.standard_normal((128, 64)).astype(np.float32))
    with memory.track() as m:
        y = gpuad.checkpoint_sequential(net, x).sum()
        predicted = memory.predict_backward_peak(y)
        y.backward()
    measured = m.peak_bytes_absolute
    assert measured <= predicted <= 1.5 * measured


# --- the scheduler ----------------------------------------------------------------------

@pytest.mark.parametrize("s", [1, 2, 3, 4, 5])
def test_scheduler_equals_revolve_closed_form(s):
    for steps in range(1, 40):
        assert revolve_dp(steps, s) == revolve_steps(steps, s)
    # with s slots and t sweeps a chain of C(s+t, s) steps is reachable
    for t in range(1, 5):
        n = math.comb(s + t, s)
        assert revolve_dp(n, s) == t * n - math.comb(s + t, s + 1)


def _random_chain(rng, L):
    act = [rng.randint(1, 5) * 10 for _ in range(L + 1)]
    return Chain([rng.randint(1, 9) for _ in range(L)], act, [act[i + 1] + rng.randint(0, 2) * 10 for i in range(L)])


def _all_trees(i, j):
    yield ("store", i, j)
    for k in range(i + 1, j):
        for left in _all_trees(i, k):
            for right in _all_trees(k, j):
                yield ("split", i, k, j, left, right)


@pytest.mark.parametrize("seed", range(12))
def test_scheduler_agrees_with_brute_force(seed):
    rng = random.Random(seed)
    L = rng.randint(1, 6)
    chain = _random_chain(rng, L)
    trees = list(_all_trees(0, L))
    assert min(peak_of(t, chain) for t in trees) == min_peak(chain)
    for budget in sorted({peak_of(t, chain) for t in trees}):
        best = min(cost_of(t, chain) for t in trees if peak_of(t, chain) <= budget)
        sched = optimal(chain, budget)
        assert sched.recompute_cost == best and sched.peak_bytes <= budget


def test_cost_never_increases_with_budget_and_large_budget_stores_everything():
    chain = Chain.homogeneous(32, 1.0, 1000, 1000)
    costs = [optimal(chain, b).recompute_cost for b in range(min_peak(chain), 40_000, 1000)]
    assert all(b <= a for a, b in zip(costs, costs[1:]))
    big = optimal(chain, 10 ** 9)
    assert big.tree == ("store", 0, 32) and big.recomputed_layers == 0


def test_budget_at_sqrt_peak_recomputes_no_more_than_sqrt():
    for L in (16, 64):
        chain = Chain.homogeneous(L, 1.0, 1 << 20, 1 << 20)
        sq = Schedule(segments_tree(L, math.ceil(math.sqrt(L))), chain)
        best = optimal(chain, sq.peak_bytes)
        assert best.recomputed_layers <= sq.recomputed_layers
    half = optimal(chain, sq.peak_bytes // 2)          # L = 64: half the sqrt schedule's memory
    assert half.peak_bytes <= sq.peak_bytes // 2 and half.recomputed_layers <= 2 * 64


def test_plan_prints_what_is_stored():
    text = repr(gpuad.checkpoint.plan([(1.0, 4096, 4096)] * 16, (1024,), 10 * 4096))
    assert "stores x_{" in text and "predicted activation peak" in text and "recomputes" in text


# --- bad input -----------------------------------------------------------------------------

def test_budget_too_small_states_the_smallest_that_fits():
    chain = Chain.homogeneous(16, 1.0, 1000, 1000)
    smallest = min_peak(chain)
    with pytest.raises(ValueError, match=rf"smallest budget that fits is {smallest:,} bytes"):
        optimal(chain, smallest - 1)
    net = nn.MLP([8] * 5)
    with pytest.raises(ValueError, match="smallest budget that fits"):
        gpuad.checkpoint_sequential(net, gpuad.ones((2, 8)), budget_bytes=10)


def test_bad_segments_and_layers():
    net = nn.MLP([8] * 5)
    x = gpuad.ones((2, 8))
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"segments must be between 1 and 4"):
            gpuad.checkpoint_sequential(net, x, segments=bad)
    with pytest.raises(TypeError, match=r"layer 1 \(int\) is not callable"):
        gpuad.checkpoint_sequential([net[0], 3], x)
    with pytest.raises(TypeError, match="fn must be callable"):
        gpuad.checkpoint(42, x)


def test_fn_returning_no_tensor():
    w = gpuad.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="returned float, not a Tensor"):
        gpuad.checkpoint(lambda t: float((t * w).sum()), gpuad.ones(2))


def test_nondeterministic_recompute_is_detected():
    w = gpuad.tensor(np.ones(6), requires_grad=True)
    calls = []

    def shape_changes(t):
        calls.append(1)
        return (t * w)[: 6 - len(calls)]
    y = gpuad.checkpoint(shape_changes, gpuad.ones(6, dtype="float64"))
    with pytest.raises(RuntimeError, match="not deterministic"):
        y.sum().backward()

    v = gpuad.tensor(np.ones(6), requires_grad=True)
    flips = []

    def uses_other_tensor(t):
        flips.append(1)
        return t * (w if len(flips) == 1 else v)
    y = gpuad.checkpoint(uses_other_tensor, gpuad.ones(6, dtype="float64"))
    with pytest.raises(RuntimeError, match="which the first run did not read"):
        y.sum().backward()


@pytest.mark.parametrize("nested", [False, True])
def test_create_graph_through_checkpoint_gives_torchs_second_derivatives(nested):
    """The recompute runs on identity nodes over the segment's inputs, so the recorded
    backward reaches the outer graph: Hessian-vector products equal torch's."""
    torch = pytest.importorskip("torch")
    from torch.utils.checkpoint import checkpoint as tcheckpoint
    rng = np.random.default_rng(8)
    x0, w0 = rng.standard_normal((3, 4)), rng.standard_normal((4, 4))
    res = []
    for lib, ck in ((gpuad, gpuad.checkpoint), (torch, lambda f, *a: tcheckpoint(f, *a, use_reentrant=False))):
        x, w = lib.tensor(x0, requires_grad=True), lib.tensor(w0, requires_grad=True)
        inner = (lambda a: ck(lambda b: (b @ w).sin(), a) * a) if nested else (lambda a: (a @ w).tanh() * a.sum())
        y = ck(inner, x * 1.0)
        gx, gw = lib.autograd.grad((y ** 2).sum(), (x, w), create_graph=True)
        hx, hw = lib.autograd.grad((gx * gx).sum() + (gw.sin()).sum(), (x, w))
        res.append([t.detach().numpy() for t in (gx, gw, hx, hw)])
    for a, b in zip(*res):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
