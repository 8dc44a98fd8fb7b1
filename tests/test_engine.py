"""The engine: deep graphs without recursion, freeing, recording modes, higher order, hooks."""
import gc
import tracemalloc

import numpy as np
import pytest

import gpuad
from tests.conftest import torch_or_skip


def test_chain_of_100k_ops_backprops():
    x = gpuad.tensor(0.5, dtype="float64", requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y = y + 0.0
    y.backward()
    assert x.grad.item() == 1.0


def test_deep_graph_is_released_without_recursion():
    """Dropping a 100k-node graph must not hit the recursion limit either."""
    x = gpuad.tensor(0.5, requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y + 1.0
    del y
    gc.collect()


def _step(w, x):
    h = gpuad.tanh(x @ w)
    loss = (h * h).mean()
    loss.backward()
    w.grad = None


def test_graph_is_freed_after_backward():
    rng = np.random.default_rng(0)
    w = gpuad.tensor(rng.standard_normal((64, 64)), requires_grad=True)
    x = gpuad.tensor(rng.standard_normal((32, 64)))
    for _ in range(50):
        _step(w, x)
    gc.collect()
    tracemalloc.start()
    _step(w, x)
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(1000):
        _step(w, x)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 64 * 1024, f"memory grew by {grown} bytes over 1000 steps"


def test_no_grad_and_enable_grad():
    w = gpuad.tensor([1.0], requires_grad=True)
    with gpuad.no_grad():
        assert not (w * 2).requires_grad
        assert not gpuad.is_grad_enabled()
        with gpuad.enable_grad():
            assert (w * 2).requires_grad
        assert not (w * 2).requires_grad
    assert gpuad.is_grad_enabled()

    @gpuad.no_grad()
    def f(t):
        return t * 2

    @gpuad.enable_grad()
    def g(t):
        return t * 2
    assert not f(w).requires_grad
    with gpuad.no_grad():
        assert g(w).requires_grad


def test_no_grad_restores_on_exception():
    with pytest.raises(ZeroDivisionError):
        with gpuad.no_grad():
            1 / 0
    assert gpuad.is_grad_enabled()


def test_retain_graph_allows_a_second_backward():
    x = gpuad.tensor(2.0, requires_grad=True)
    y = gpuad.sin(x) * x
    y.backward(retain_graph=True)
    first = x.grad.item()
    y.backward()
    assert x.grad.item() == pytest.approx(2 * first)


def test_grad_accumulates_across_backward_calls_and_can_be_cleared():
    x = gpuad.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])
    x.grad = None
    (x * 1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])


def test_leaf_grad_does_not_alias_engine_buffers():
    """sum's VJP is a broadcast view; the leaf must get its own writable copy."""
    x = gpuad.tensor(np.zeros(3), requires_grad=True)
    x.sum().backward()
    x.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])


def test_grad_dtype_follows_the_input():
    x = gpuad.tensor([1.0, 2.0], dtype="float32", requires_grad=True)
    y = gpuad.tensor([1.0, 2.0], dtype="float64")
    (x * y).sum().backward()
    assert x.grad.dtype == np.float32


def test_hessian_vector_product():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 4))
    A = A + A.T
    x = gpuad.tensor(rng.standard_normal(4), requires_grad=True)
    v = rng.standard_normal(4)
    At = gpuad.tensor(A)
    f = (gpuad.tanh(x) @ At @ gpuad.tanh(x)) / 2 + (x ** 4).sum()
    (g,) = gpuad.autograd.grad(f, x, create_graph=True)
    (hv,) = gpuad.autograd.grad((g * gpuad.tensor(v)).sum(), x)
    xv = x.numpy()
    t, s = np.tanh(xv), 1 - np.tanh(xv) ** 2
    H = np.diag(s) @ A @ np.diag(s) + np.diag(-2 * t * s * (A @ t)) + np.diag(12 * xv ** 2)
    np.testing.assert_allclose(hv.numpy(), H @ v, rtol=1e-10)


def test_hvp_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(4)
    W = rng.standard_normal((5, 3))
    xv = rng.standard_normal(5)
    v = rng.standard_normal(5)

    x = gpuad.tensor(xv, requires_grad=True)
    f = gpuad.softplus(gpuad.sigmoid(x) @ gpuad.tensor(W)).sum() + gpuad.logsumexp(x * x)
    (g,) = gpuad.autograd.grad(f, x, create_graph=True)
    (hv,) = gpuad.autograd.grad(g, x, grad_outputs=gpuad.tensor(v))

    xt = torch.tensor(xv, requires_grad=True)
    ft = torch.nn.functional.softplus(torch.sigmoid(xt) @ torch.tensor(W)).sum() + torch.logsumexp(xt * xt, 0)
    (gt,) = torch.autograd.grad(ft, xt, create_graph=True)
    (hvt,) = torch.autograd.grad(gt, xt, grad_outputs=torch.tensor(v))
    np.testing.assert_allclose(hv.numpy(), hvt.numpy(), rtol=1e-10)


def test_third_derivative():
    x = gpuad.tensor(0.7, dtype="float64", requires_grad=True)
    y = gpuad.sin(x)
    (d1,) = gpuad.autograd.grad(y, x, create_graph=True)
    (d2,) = gpuad.autograd.grad(d1, x, create_graph=True)
    (d3,) = gpuad.autograd.grad(d2, x)
    assert d3.item() == pytest.approx(-np.cos(0.7), rel=1e-14)


def test_create_graph_backward_records_grad():
    x = gpuad.tensor(3.0, dtype="float64", requires_grad=True)
    (x ** 3).backward(create_graph=True)
    assert x.grad.requires_grad
    g = x.grad
    x.grad = None
    g.backward()
    assert x.grad.item() == pytest.approx(18.0)


def test_autograd_grad_does_not_touch_dot_grad():
    x = gpuad.tensor(1.5, requires_grad=True)
    y = x * x
    gpuad.autograd.grad(y, x)
    assert x.grad is None


def test_autograd_grad_allow_unused():
    x = gpuad.tensor(1.0, requires_grad=True)
    z = gpuad.tensor(1.0, requires_grad=True)
    y = x * 2
    assert gpuad.autograd.grad(y, [x, z], allow_unused=True)[1] is None


def test_autograd_grad_prunes_unneeded_branches():
    """Only nodes between the outputs and the requested inputs run their VJP."""
    a = gpuad.tensor(np.ones(3), requires_grad=True)
    b = gpuad.tensor(np.ones(3), requires_grad=True)
    side = gpuad.exp(b)
    y = (a * 2 + side).sum()
    gpuad.autograd.grad(y, a, retain_graph=True)
    assert side._node.saved is not gpuad.graph.FREED   # exp's VJP never ran


def test_multiple_outputs_and_grad_outputs():
    x = gpuad.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    y1, y2 = x * 2, x ** 2
    gpuad.autograd.backward([y1, y2], [gpuad.tensor([1.0, 1.0], dtype="float64"),
                                       gpuad.tensor([1.0, 0.5], dtype="float64")])
    np.testing.assert_allclose(x.grad.numpy(), [2 + 2 * 1.0, 2 + 0.5 * 4.0])


def test_register_hook_sees_and_replaces_the_gradient():
    x = gpuad.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    seen = []
    h.register_hook(lambda g: seen.append(g.numpy().copy()))
    handle = x.register_hook(lambda g: g * 10)
    (h * h).sum().backward()
    np.testing.assert_allclose(seen[0], 2 * h.numpy())
    np.testing.assert_allclose(x.grad.numpy(), 10 * 3 * 2 * h.numpy())
    handle.remove()
    x.grad = None
    (x * 1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0])


def test_post_accumulate_hook_fires_once_per_leaf_when_final():
    w1 = gpuad.tensor([1.0], requires_grad=True)
    w2 = gpuad.tensor([2.0], requires_grad=True)
    order = []
    w1.register_post_accumulate_grad_hook(lambda t: order.append(("w1", t.grad.item())))
    w2.register_post_accumulate_grad_hook(lambda t: order.append(("w2", t.grad.item())))
    h = w1 * 3
    loss = (h * w2 + h).sum()
    loss.backward()
    assert sorted(order) == [("w1", 9.0), ("w2", 3.0)]


def test_hooked_leaves_finish_right_after_their_last_consumer():
    # The order a data-parallel trainer needs: layer 2's weight is final (and its
    # all-reduce can start) before layer 1's backward runs, not at the end of the walk.
    gpuad.manual_seed(0)
    l1, l2 = gpuad.nn.Linear(3, 4), gpuad.nn.Linear(4, 2)
    shared = gpuad.tensor([0.5, -1.0], requires_grad=True)       # used by two nodes: final after both
    order = []
    handles = [p.register_post_accumulate_grad_hook(lambda t, n=n: order.append(n))
               for n, p in (("w1", l1.weight), ("w2", l2.weight), ("shared", shared))]
    x = gpuad.ones(5, 3).requires_grad_()
    h0 = x * 1.0
    h0.register_hook(lambda g: order.append("h0"))
    h1 = l1(h0).tanh()
    h1.register_hook(lambda g: order.append("h1"))
    loss = ((l2(h1) * shared).sum() + shared.sum() * 2).tanh()
    loss.backward()
    assert order == ["shared", "w2", "h1", "w1", "h0"], order
    got = {n: p.grad.numpy().copy() for n, p in (("w1", l1.weight), ("w2", l2.weight), ("shared", shared))}
    for h in handles:
        h.remove()
    for p in (l1.weight, l2.weight, shared, x):
        p.grad = None
    ((l2(l1(x * 1.0).tanh()) * shared).sum() + shared.sum() * 2).tanh().backward()
    for n, p in (("w1", l1.weight), ("w2", l2.weight), ("shared", shared)):
        np.testing.assert_array_equal(got[n], p.grad.numpy())     # the same sums, bitwise


def test_hooked_leaves_inside_checkpoints_get_the_same_gradients():
    gpuad.manual_seed(1)
    net = gpuad.nn.MLP([4, 8, 8, 8, 2], checkpoint=2)
    x = gpuad.randn(3, 4)
    net(x).square().sum().backward()
    want = [p.grad.numpy().copy() for p in net.parameters()]
    net.zero_grad()
    fired = []
    hs = [p.register_post_accumulate_grad_hook(lambda t: fired.append(1)) for p in net.parameters()]
    net(x).square().sum().backward()
    assert len(fired) == len(want)
    for w, p in zip(want, net.parameters()):
        np.testing.assert_array_equal(w, p.grad.numpy())
    for h in hs:
        h.remove()


def test_backward_order_is_deterministic():
    def run():
        order = []
        xs = [gpuad.tensor(float(i), requires_grad=True) for i in range(5)]
        for i, x in enumerate(xs):
            x.register_hook(lambda g, i=i: order.append(i))
        y = xs[3] * xs[1] + xs[4] * xs[0] + xs[2]
        y.backward()
        return order
    assert run() == run() == [4, 3, 2, 1, 0]


def test_exception_in_backward_releases_pending_gradients():
    x = gpuad.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    z = y.sin()

    def boom(g):
        raise RuntimeError("boom")
    y.register_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        z.sum().backward()
    assert y._node.grad is None and z._node.grad is None and x._node.grad is None


def test_exception_in_backward_releases_a_hooked_leafs_partial_gradient():
    w = gpuad.tensor([1.0, 2.0], requires_grad=True)
    h = w.register_post_accumulate_grad_hook(lambda t: None)
    v = (w * 2).sin()
    v.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("boom")))
    z = v + w * 3                   # w * 3 sends w its share before v's hook raises
    with pytest.raises(RuntimeError, match="boom"):
        z.sum().backward()
    assert w._node.grad is None and w.grad is None
    h.remove()


def test_requires_grad_flags():
    x = gpuad.tensor([1.0])
    assert not x.requires_grad and x.is_leaf
    x.requires_grad = True
    assert x.requires_grad and x.is_leaf and x.grad_fn is None
    y = x * 2
    assert not y.is_leaf and y.grad_fn.op.name == "multiply"
    x.requires_grad_(False)
    assert not (x * 2).requires_grad
