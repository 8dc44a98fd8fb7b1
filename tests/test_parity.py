"""PyTorch parity: each defect a user porting torch code met, as a regression test
(float64, against torch where it is installed, else the closed form)."""
import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F

torch = pytest.importorskip("torch")


def t64(values, grad=True):
    return gpuad.tensor(np.asarray(values, dtype=np.float64), requires_grad=grad)


def tt(values, grad=True):
    return torch.tensor(np.asarray(values, dtype=np.float64), requires_grad=grad)


# --- 1. every op returns a new Tensor, even when it changes nothing -------------------

@pytest.mark.parametrize("view", [
    lambda x: x.reshape(2, 2), lambda x: x.squeeze(), lambda x: x.permute(0, 1), lambda x: x.transpose(0, 0),
    lambda x: x.expand(2, 2), lambda x: x[0].flatten(), lambda x: x.view(2, 2), lambda x: x[0].swapaxes(0, 0)])
def test_identity_shape_ops_return_a_new_tensor(view):
    for lib, make in ((gpuad, t64), (torch, tt)):
        x = make([[1.0, 2.0], [3.0, 4.0]])
        h = view(x)
        assert h is not x
        h.register_hook(lambda g: g * 0)
        ((h * 1).sum() + (x * 2).sum()).backward()
        if lib is gpuad:
            mine = x.grad.numpy()
        else:
            np.testing.assert_array_equal(mine, x.grad.numpy())


# --- 2. a 0-d tensor reduces over its axis 0 --------------------------------------------

@pytest.mark.parametrize("name", ["sum", "max", "min", "logsumexp", "mean", "amax", "amin"])
@pytest.mark.parametrize("dim", [0, -1])
def test_reductions_of_a_0d_tensor_along_axis_0(name, dim):
    x, xt = t64(3.0), tt(3.0)
    y, yt = getattr(x, name)(dim=dim), getattr(xt, name)(dim=dim)
    yt = yt[0] if isinstance(yt, tuple) else yt   # torch's max(dim) is (values, indices)
    y = y[0] if isinstance(y, tuple) else y
    assert y.shape == tuple(yt.shape) and y.item() == yt.item()
    y.backward(), yt.backward()
    assert x.grad.item() == xt.grad.item()


def test_reduction_axis_out_of_range_on_0d_still_raises():
    with pytest.raises(ValueError, match="out of range"):
        t64(3.0).sum(dim=1)


# --- 3. masked VJPs select: an infinite upstream gradient never becomes NaN --------------

def test_relu_selects_instead_of_multiplying():
    x, xt = t64([-1.0, 0.0, 4.0]), tt([-1.0, 0.0, 4.0])
    gpuad.sqrt(gpuad.relu(x)).sum().backward()
    torch.sqrt(torch.relu(xt)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), xt.grad.numpy())
    assert x.grad.tolist() == [0.0, 0.0, 0.25]


@pytest.mark.parametrize("big", [False, True])
def test_fused_linear_relu_selects(big):
    rng = np.random.default_rng(0)
    n = 64 if big else 3                          # big: the donated, in-place path
    xv, wv = rng.standard_normal((n, 5)), rng.standard_normal((n, 5))
    x, w = t64(xv), t64(wv)
    xt, wt = tt(xv), tt(wv)
    bias = -10.0 * np.ones(n)                     # some outputs exactly 0 after relu
    y = F.linear(x, w, gpuad.tensor(bias), activation="relu")
    yt = torch.relu(torch.nn.functional.linear(xt, wt, torch.tensor(bias)))
    gpuad.sqrt(y).sum().backward()
    torch.sqrt(yt).sum().backward()
    assert not np.isnan(x.grad.numpy()).any()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), wt.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("fn", [
    lambda m, a, b: m.abs(a), lambda m, a, b: m.maximum(a, b), lambda m, a, b: m.minimum(a, b),
    lambda m, a, b: m.clamp(a, -0.5, 0.5), lambda m, a, b: m.where(a > 0, a, b)])
def test_other_masked_vjps_match_torch_under_an_infinite_gradient(fn):
    a, b = [0.0, -1.0, 0.5, 2.0], [0.0, 1.0, 0.5, -2.0]
    x, y, xt, yt = t64(a), t64(b), tt(a), tt(b)
    up = np.array([np.inf, 1.0, np.inf, 2.0])
    fn(gpuad, x, y).backward(up)
    fn(torch, xt, yt).backward(torch.tensor(up))
    for mine, theirs in ((x, xt), (y, yt)):
        if theirs.grad is None:
            continue
        np.testing.assert_array_equal(mine.grad.numpy(), theirs.grad.numpy())


# --- 4. power at base 0 -----------------------------------------------------------------

def test_power_gradient_at_base_zero():
    x, xt = t64([0.0, 2.0]), tt([0.0, 2.0])
    (x ** 0).sum().backward(), (xt ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), xt.grad.numpy())
    p, pt = t64(1.5), tt(1.5)
    base = [0.0, 1.5]
    (gpuad.tensor(base, dtype="float64") ** p).sum().backward()
    (torch.tensor(base, dtype=torch.float64) ** pt).sum().backward()
    assert p.grad.item() == pytest.approx(pt.grad.item(), rel=1e-14)
    q, qt = t64([0.0, 2.0]), tt([0.0, 2.0])      # tensor exponent at 0 with base 0
    (t64([0.0, 3.0], grad=False) ** q).sum().backward()
    (tt([0.0, 3.0], grad=False) ** qt).sum().backward()
    np.testing.assert_allclose(q.grad.numpy(), qt.grad.numpy(), rtol=1e-14)


# --- 5. softplus' second derivative at 0 ------------------------------------------------

@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_softplus_second_derivative_at_zero(beta):
    x, xt = t64(0.0), tt(0.0)
    (g,) = gpuad.autograd.grad(gpuad.softplus(x, beta=beta), x, create_graph=True)
    (gt,) = torch.autograd.grad(torch.nn.functional.softplus(xt, beta=beta), xt, create_graph=True)
    (gg,), (ggt,) = gpuad.autograd.grad(g, x), torch.autograd.grad(gt, xt)
    assert gg.item() == pytest.approx(ggt.item(), rel=1e-14) and gg.item() == pytest.approx(0.25 * beta)


# --- 6. constants take the computation's dtype ------------------------------------------

def test_constant_base_power_second_order_in_float64():
    x, xt = t64([0.3, -1.2]), tt([0.3, -1.2])
    (g,) = gpuad.autograd.grad((2.0 ** x).sum(), x, create_graph=True)
    (gt,) = torch.autograd.grad((2.0 ** xt).sum(), xt, create_graph=True)
    (gg,), (ggt,) = gpuad.autograd.grad(g.sum(), x), torch.autograd.grad(gt.sum(), xt)
    np.testing.assert_allclose(gg.numpy(), ggt.numpy(), rtol=1e-15)


def test_float32_base_with_float64_exponent_takes_a_float64_log():
    """The result is float64, so is its log (torch takes a float32 log here: 4e-8 off)."""
    base = np.array([1.1, 2.7], np.float32)
    p = t64(1.3)
    (gpuad.tensor(base) ** p).sum().backward()
    b64 = base.astype(np.float64)
    assert p.grad.item() == pytest.approx(float((b64 ** 1.3 * np.log(b64)).sum()), rel=1e-15)


# --- 7. empty tensors -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_over_an_empty_axis(name):
    x, xt = t64(np.zeros((3, 0))), tt(np.zeros((3, 0)))
    y, yt = getattr(gpuad, name)(x, dim=-1), getattr(torch, name)(xt, dim=-1)
    assert y.shape == tuple(yt.shape) == (3, 0)
    y.sum().backward(), yt.sum().backward()
    assert x.grad.shape == (3, 0)


@pytest.mark.parametrize("shape_x,shape_w", [((4, 0), (3, 0)), ((4, 2), (0, 2)), ((0, 2), (3, 2))])
def test_linear_with_an_empty_dimension(shape_x, shape_w):
    x, w, b = t64(np.zeros(shape_x)), t64(np.ones(shape_w)), t64(np.ones(shape_w[0]))
    xt, wt, bt = tt(np.zeros(shape_x)), tt(np.ones(shape_w)), tt(np.ones(shape_w[0]))
    F.linear(x, w, b).sum().backward()
    torch.nn.functional.linear(xt, wt, bt).sum().backward()
    for mine, theirs in ((x, xt), (w, wt), (b, bt)):
        np.testing.assert_array_equal(mine.grad.numpy(), theirs.grad.numpy())
