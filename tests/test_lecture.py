"""The lecture's worked example, its MLP backprop loop, and its graph semantics:
fan-out, BLACK/GREY colouring, stop-gradient, edge severing."""
import numpy as np
import pytest

import gpuad
from gpuad.graph import FREED


def lecture_fn(x, y, z):
    return gpuad.sin(gpuad.cosh(y ** 2 + x / z) + gpuad.tanh(x * y * z)) / gpuad.log(1 + gpuad.exp(x))


def test_worked_example():
    x, y, z = (gpuad.tensor(v, dtype="float64", requires_grad=True) for v in (3.3, 1.1, 2.3))
    lecture_fn(x, y, z).backward()
    np.testing.assert_allclose([x.grad.item(), y.grad.item(), z.grad.item()],
                               [-0.285274, -1.01578, 0.288027], atol=5e-6)


def test_worked_example_closed_form():
    """The lecture's symbolic derivatives (Mathematica output), to machine precision."""
    x, y, z = 3.3, 1.1, 2.3
    a = np.cosh(y ** 2 + x / z) + np.tanh(x * y * z)
    L = np.log(1 + np.exp(x))
    sech2 = 1 / np.cosh(x * y * z) ** 2
    sh = np.sinh(y ** 2 + x / z)
    dx = -np.exp(x) * np.sin(a) / ((1 + np.exp(x)) * L ** 2) + np.cos(a) / L * (y * z * sech2 + sh / z)
    dy = np.cos(a) / L * (x * z * sech2 + 2 * y * sh)
    dz = np.cos(a) / L * (x * y * sech2 - x * sh / z ** 2)
    ts = [gpuad.tensor(v, dtype="float64", requires_grad=True) for v in (x, y, z)]
    lecture_fn(*ts).backward()
    np.testing.assert_allclose([t.grad.item() for t in ts], [dx, dy, dz], rtol=1e-13)


def _sigma(u):
    return np.tanh(u)


def _sigma_prime(u):
    return 1 - np.tanh(u) ** 2


def test_mlp_loop_matches_engine():
    """The lecture's forward/backward loop (column vectors, A_l y + b_l), by hand."""
    rng = np.random.default_rng(0)
    sizes = [5, 7, 6, 1]
    L = len(sizes) - 1
    A_list = [rng.standard_normal((sizes[i + 1], sizes[i])) * 0.5 for i in range(L)]
    b_list = [rng.standard_normal((sizes[i + 1], 1)) * 0.1 for i in range(L)]
    X = rng.standard_normal((sizes[0], 1))
    Y = np.array([[0.3]])

    # forward pass (the lecture's code, with y_list.append(y))
    y_list = [X]
    y = X
    for ell in range(L):
        y = _sigma(A_list[ell] @ y + b_list[ell])
        y_list.append(y)
    # backward pass (dy as a row vector, as on the slide)
    dA_list, db_list = [], []
    dy = (y - Y).T
    for ell in reversed(range(L)):
        A, b, y = A_list[ell], b_list[ell], y_list[ell]
        db = dy * _sigma_prime(A @ y + b).T
        dA = (_sigma_prime(A @ y + b) * dy.T) @ y.T
        dy = (dy * _sigma_prime(A @ y + b).T) @ A
        dA_list.insert(0, dA)
        db_list.insert(0, db)

    As = [gpuad.tensor(A, requires_grad=True) for A in A_list]
    bs = [gpuad.tensor(b, requires_grad=True) for b in b_list]
    h = gpuad.tensor(X)
    for A, b in zip(As, bs):
        h = gpuad.tanh(A @ h + b)
    loss = 0.5 * ((h - gpuad.tensor(Y)) ** 2).sum()
    loss.backward()
    for A, dA in zip(As, dA_list):
        np.testing.assert_allclose(A.grad.numpy(), dA, rtol=1e-10, atol=1e-14)
    for b, db in zip(bs, db_list):
        np.testing.assert_allclose(b.grad.numpy(), db.T, rtol=1e-10, atol=1e-14)


def test_fan_out_accumulates():
    a = gpuad.tensor(1.0, requires_grad=True)
    b = a + a
    c = b + b
    c.backward()
    assert a.grad.item() == 4.0


def test_fan_out_in_place_accumulation_keeps_buffers_apart():
    """Gradients shared by two edges (add returns g twice) must not be written through."""
    x = gpuad.tensor(np.arange(5000.0), requires_grad=True)   # large enough for in-place paths
    y = x + x
    z = (y * 2.0 + y * 3.0).sum()
    z.backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(5000, 10.0))


def test_grey_inputs_are_not_recorded():
    p = gpuad.tensor([1.0, 2.0], requires_grad=True)        # BLACK
    c = gpuad.tensor([3.0, 4.0])                             # GREY
    grey = c * 2 + 1
    assert grey._node is None and not grey.requires_grad
    out = (p * grey).sum()
    mul_node = out._node.parents[0]
    assert mul_node.op.name == "multiply"
    assert mul_node.parents[1] is None                       # the GREY edge carries nothing
    assert mul_node.needs == (True, False)
    out.backward()
    assert c.grad is None
    np.testing.assert_array_equal(p.grad.numpy(), grey.numpy())


def test_no_gradient_computed_for_grey_inputs():
    """The VJP is asked only for the inputs that need it, and saves only what that needs."""
    w = gpuad.tensor(np.ones((3, 3)), requires_grad=True)
    x = gpuad.tensor(np.ones((3, 3)))
    y = x @ w
    a, b = y._node.saved
    assert a is x.data and b is None                         # w itself is not kept: nobody needs dx
    calls = []
    vjp = y._node.op.vjp

    def spy(xp, g, saved, node, donate):
        grads = vjp(xp, g, saved, node, donate)
        calls.append(tuple(gr is not None for gr in grads))
        return grads
    y._node.op.vjp = spy
    try:
        y.sum().backward()
    finally:
        y._node.op.vjp = vjp
    assert calls == [(False, True)]


def test_stop_gradient_drops_exactly_one_edge():
    """Lecture: y6 = f6(y2, [[y4]], y5): the path y4 -> y6 is cut, y4 -> y5 -> y6 stays."""
    y1 = gpuad.tensor(0.7, dtype="float64", requires_grad=True)
    y2 = gpuad.tensor(-0.4, dtype="float64", requires_grad=True)
    y3 = gpuad.tensor(1.3, dtype="float64", requires_grad=True)
    y4 = gpuad.exp(y1 * y2 * y3)
    y5 = y1 * y4
    y6 = gpuad.sin(y2 + y4.detach() + y5)
    y6.backward()
    # by hand: d y6 / d y1 through y5 only (y5 = y1 * y4 with y4 = exp(y1 y2 y3))
    c = np.cos(y2.item() + y4.item() + y5.item())
    v4 = y4.item()
    d4 = c * y1.item()                      # only the edge y4 -> y5 survives
    expect_y1 = c * v4 + d4 * v4 * y2.item() * y3.item()
    expect_y2 = c + d4 * v4 * y1.item() * y3.item()
    expect_y3 = d4 * v4 * y1.item() * y2.item()
    np.testing.assert_allclose([y1.grad.item(), y2.grad.item(), y3.grad.item()],
                               [expect_y1, expect_y2, expect_y3], rtol=1e-12)


def test_detach_is_a_fixed_input_copy():
    x = gpuad.tensor([1.0, 2.0], requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and d.data is x.data


def test_edge_severing_equals_making_the_node_an_input():
    """The gradient at an intermediate (retain_grad) equals the gradient obtained by
    cutting the edges into it and making it an input node with the same value."""
    def rest(x, v):
        return (gpuad.sin(v) * x + v ** 2).sum()

    x = gpuad.tensor([0.3, -1.2, 2.0], dtype="float64", requires_grad=True)
    v = gpuad.tanh(x * 3.0)
    v.retain_grad()
    rest(x, v).backward()

    x2 = gpuad.tensor(x.numpy(), dtype="float64")
    v2 = gpuad.tensor(v.numpy(), dtype="float64", requires_grad=True)   # edges into v severed
    rest(x2, v2).backward()
    np.testing.assert_allclose(v.grad.numpy(), v2.grad.numpy(), rtol=1e-14)
    # and autograd.grad at the intermediate says the same
    x3 = gpuad.tensor(x.numpy(), dtype="float64", requires_grad=True)
    v3 = gpuad.tanh(x3 * 3.0)
    (gv,) = gpuad.autograd.grad(rest(x3, v3), v3)
    np.testing.assert_allclose(gv.numpy(), v2.grad.numpy(), rtol=1e-14)


def test_backward_frees_saved_values():
    x = gpuad.tensor(np.ones(4), requires_grad=True)
    y = gpuad.sin(x)
    z = (y * 2).sum()
    z.backward()
    assert y._node.saved is FREED


@pytest.mark.parametrize("depth", [3, 10])
def test_resnet_and_rnn_graphs(depth):
    """The lecture's ResNet (h_i = g(h_{i-1}) + h_{i-1}) and RNN (shared theta) shapes of graph."""
    rng = np.random.default_rng(depth)
    W = gpuad.tensor(rng.standard_normal((4, 4)) * 0.3, requires_grad=True)
    h0 = gpuad.tensor(rng.standard_normal((2, 4)))
    h = h0
    for _ in range(depth):
        h = gpuad.tanh(h @ W) + h
    assert gpuad.gradcheck(lambda w: _resnet(h0, w, depth), (W,))
    assert gpuad.gradcheck(lambda w: _rnn(h0, w, depth), (W,))


def _resnet(h, W, depth):
    for _ in range(depth):
        h = gpuad.tanh(h @ W) + h
    return h


def _rnn(u, W, T):
    h = gpuad.zeros((2, 4), dtype="float64")
    for _ in range(T):
        h = gpuad.tanh(h @ W + u)
    return h
