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
    p = t64([1.3])                                # dimensioned: the result is float64 (torch's rule)
    y = gpuad.tensor(base) ** p
    assert y.dtype == np.float64
    y.sum().backward()
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


# --- 8. mutation: in-place ops are checked, recorded, or plain writes under no_grad ------

def test_modifying_a_saved_tensor_in_place_raises_at_backward():
    w = t64([1.0, 2.0, 3.0])
    x = gpuad.tensor([2.0, 3.0, 4.0], dtype="float64")
    y = w * x                                   # saves x for w's gradient
    x.mul_(50)
    with pytest.raises(RuntimeError, match=r"multiply \(node #\d+\) saved its input 'y'.*mul_ modified it"):
        y.sum().backward()


def test_modifying_a_saved_output_in_place_raises():
    x = t64([0.5, 1.0])
    y = x.tanh()                                # saves its output
    y.add_(1.0)
    with pytest.raises(RuntimeError, match=r"tanh .* saved its output"):
        y.sum().backward()
    xt = tt([0.5, 1.0])
    yt = xt.tanh()
    yt.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        yt.sum().backward()


def test_modifying_before_the_op_or_an_unsaved_tensor_is_fine():
    x = gpuad.tensor([2.0, 3.0], dtype="float64")
    x.mul_(2.0)                                 # before: nothing saved it yet
    w = t64([1.0, 1.0])
    y = w * x
    z = w + x                                   # add saves nothing
    x.add_(100.0)
    w2 = t64([1.0, 1.0])
    (w2 + x).sum().backward()
    z.sum().backward()
    assert w.grad.tolist() == [1.0, 1.0] and w2.grad.tolist() == [1.0, 1.0]
    del y


def test_setitem_into_a_no_grad_buffer_records_the_graph():
    w, wt = t64([1.0, 2.0]), tt([1.0, 2.0])
    buf, buft = gpuad.zeros(3, dtype="float64"), torch.zeros(3, dtype=torch.float64)
    buf[1:] = w * 3
    buft[1:] = wt * 3
    (buf * 4 / 3).sum().backward()
    (buft * 4 / 3).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), wt.grad.numpy())
    assert w.grad.tolist() == [4.0, 4.0]


@pytest.mark.parametrize("index", [1, slice(0, 2), (Ellipsis, [0, 2]), (Ellipsis, 1)])
def test_setitem_gradients_flow_to_both_sides(index):
    vals = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    for lib, make in ((gpuad, t64), (torch, tt)):
        x, v = make(vals), make(7.5)
        y = x * 1.0
        y[index] = v * 2
        (y * make(vals, grad=False)).sum().backward()
        if lib is gpuad:
            mine = (x.grad.numpy(), v.grad.numpy())
    np.testing.assert_allclose(mine[0], x.grad.numpy())
    np.testing.assert_allclose(mine[1], v.grad.numpy())


def test_no_grad_update_changes_the_parameter_itself():
    p = t64([1.0, 2.0])
    data = p.data
    (p * p).sum().backward()
    with gpuad.no_grad():
        p -= 0.1 * p.grad
        p *= 2.0
        p.add_(1.0).clamp_(max=3.0)
    assert p.data is data and p.requires_grad and p.is_leaf
    np.testing.assert_allclose(p.numpy(), [2.6, 3.0])


def test_in_place_on_a_leaf_that_requires_grad_is_refused():
    p = t64([1.0])
    for do in (lambda: p.add_(1), lambda: p.__iadd__(1), lambda: p.zero_(), lambda: p.__setitem__(0, 2.0)):
        with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
            do()


@pytest.mark.parametrize("name", ["add_", "sub_", "mul_", "div_", "clamp_", "fill_", "zero_", "copy_"])
def test_recorded_in_place_ops_match_torch(name):
    args = {"add_": (0.5,), "sub_": (0.5,), "mul_": (3.0,), "div_": (4.0,), "clamp_": (-0.2, 0.3),
            "fill_": (2.0,), "zero_": (), "copy_": None}
    out = []
    for lib, make in ((gpuad, t64), (torch, tt)):
        x, other = make([-1.0, 0.1, 2.0]), make([0.5, -0.5, 1.5])
        y = x * other
        a = (other,) if args[name] is None else args[name]
        getattr(y, name)(*a)
        (y * y).sum().backward()
        out.append((y.detach().numpy().copy(), x.grad.numpy().copy(),
                    None if other.grad is None else other.grad.numpy().copy()))
    for mine, theirs in zip(*out):
        if theirs is None:
            assert mine is None or not mine.any()
        else:
            np.testing.assert_allclose(mine, theirs, rtol=1e-14)


def test_in_place_op_that_saved_the_old_value_keeps_it():
    a, at = t64([1.0, 2.0]), tt([1.0, 2.0])
    b, bt = t64([3.0, 4.0]), tt([3.0, 4.0])
    y, yt = a * 1.0, at * 1.0
    y.mul_(b)
    yt.mul_(bt)                                   # b's gradient needs y's old values
    y.sum().backward(), yt.sum().backward()
    np.testing.assert_array_equal(b.grad.numpy(), bt.grad.numpy())
    np.testing.assert_array_equal(a.grad.numpy(), at.grad.numpy())


# --- 9. deepcopy and pickle --------------------------------------------------------------

def test_deepcopy_of_a_module_owns_its_parameters():
    import copy
    net = gpuad.nn.Linear(3, 2)
    twin = copy.deepcopy(net)
    assert twin.weight is not net.weight and twin.weight.requires_grad
    twin(gpuad.ones(4, 3)).sum().backward()
    assert net.weight.grad is None and twin.weight.grad is not None
    np.testing.assert_array_equal(twin.weight.numpy(), net.weight.numpy())


def test_deepcopy_copies_grad_and_refuses_non_leaves():
    import copy
    x = t64([1.0, 2.0])
    (x * x).sum().backward()
    c = copy.deepcopy(x)
    assert c.grad.tolist() == [2.0, 4.0] and c.grad is not x.grad and c.requires_grad
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(x * 2)


@pytest.mark.parametrize("make", [lambda: t64([1.0, 2.0]), lambda: t64([1.0, 2.0]) * 3,
                                  lambda: gpuad.nn.Parameter(gpuad.ones(2)), lambda: gpuad.tensor([1, 2])])
def test_pickle_round_trips_tensors(make):
    import pickle
    t = make()
    u = pickle.loads(pickle.dumps(t))
    assert type(u) is type(t) and u.requires_grad == t.requires_grad and u.is_leaf
    assert u.dtype == t.dtype and u.tolist() == t.tolist()


def test_pickle_round_trips_a_module():
    import pickle
    net = gpuad.nn.MLP([3, 4, 2], activation="tanh")
    twin = pickle.loads(pickle.dumps(net))
    x = gpuad.ones(5, 3)
    np.testing.assert_array_equal(twin(x).numpy(), net(x).numpy())
    twin(x).sum().backward()
    assert all(p.grad is None for p in net.parameters())


# --- dtype promotion as torch ------------------------------------------------------------

_PROMO = {
    "f32": (np.float32, 1), "f64": (np.float64, 1), "i64": (np.int64, 1), "i32": (np.int32, 1),
    "b": (np.bool_, 1), "f16": (np.float16, 1), "z64": (np.float64, 0), "z32": (np.float32, 0), "zi": (np.int64, 0)}


def _pair(name):
    dt, dim = _PROMO[name]
    v = np.ones(2, dt) * (1 if dt == np.bool_ else 3) if dim else np.array(3, dt)
    return gpuad.tensor(v), torch.from_numpy(np.array(v))


@pytest.mark.parametrize("a", list(_PROMO))
@pytest.mark.parametrize("b", list(_PROMO))
@pytest.mark.parametrize("op", ["add", "mul", "truediv", "maximum", "lt"])
def test_binary_dtype_promotion_matches_torch(op, a, b):
    (ga, ta), (gb, tb) = _pair(a), _pair(b)
    fn = {"add": lambda m, x, y: x + y, "mul": lambda m, x, y: x * y, "truediv": lambda m, x, y: x / y,
          "maximum": lambda m, x, y: m.maximum(x, y), "lt": lambda m, x, y: x < y}[op]
    if op == "add" and a == b == "b":
        pytest.skip("bool + bool is a logical or in torch")
    try:
        want = fn(torch, ta, tb)
    except RuntimeError:
        pytest.skip("torch refuses this pair")
    got = fn(gpuad, ga, gb)
    assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    np.testing.assert_allclose(got.numpy().astype(np.float64), want.numpy().astype(np.float64))


@pytest.mark.parametrize("const", [2, 2.5, np.float64(2.5), np.float32(2.5), np.int64(3)])
@pytest.mark.parametrize("dt", [np.float32, np.float16, np.int64, np.int32])
def test_python_and_numpy_scalars_are_weak(const, dt):
    g, t = gpuad.tensor(np.ones(2, dt)), torch.ones(2, dtype=getattr(torch, np.dtype(dt).name))
    for fn in (lambda x: x * const, lambda x: const + x, lambda x: x - const):
        assert str(fn(g).dtype) == str(fn(t).dtype).replace("torch.", "")


@pytest.mark.parametrize("name", ["exp", "sqrt", "sin", "tanh", "sigmoid", "log1p", "abs", "negative", "relu"])
def test_unary_ops_on_integers_give_torch_dtypes(name):
    g = getattr(gpuad, name)(gpuad.tensor([1, 2]))
    t = getattr(torch, name)(torch.tensor([1, 2]))
    assert str(g.dtype) == str(t.dtype).replace("torch.", "")


def test_mixing_float32_and_float64_in_matmul_or_linear_is_an_error():
    a, b = gpuad.ones(2, 3), gpuad.ones(3, 2, dtype="float64")
    with pytest.raises(TypeError, match="float32 and float64"):
        a @ b
    with pytest.raises(TypeError, match="float32, float64"):
        F.linear(a, gpuad.ones(4, 3, dtype="float64"))
    with pytest.raises(RuntimeError):
        torch.ones(2, 3) @ torch.ones(3, 2, dtype=torch.float64)


def test_float32_computation_stays_float32_with_float_constants():
    x = gpuad.ones(3, requires_grad=True)
    y = (x * np.float64(2.0) + gpuad.tensor(1.0, dtype="float64")) / 3
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_where_promotes_as_torch():
    c = np.array([True, False])
    g = gpuad.where(gpuad.tensor(c), gpuad.tensor([1, 2]), gpuad.ones(2))
    t = torch.where(torch.tensor(c), torch.tensor([1, 2]), torch.ones(2))
    assert str(g.dtype) == str(t.dtype).replace("torch.", "") == "float32"


# --- interop ------------------------------------------------------------------------------

@pytest.mark.cpu_only("numpy and torch CPU tensors share host memory")
def test_dlpack_and_numpy_share_memory_both_ways():
    t = gpuad.tensor([1.0, 2.0, 3.0])
    for other in (torch.from_dlpack(t), torch.as_tensor(t), np.from_dlpack(t), np.asarray(t)):
        assert np.shares_memory(np.asarray(other), t.data)
    assert torch.tensor(t).tolist() == [1.0, 2.0, 3.0]
    src = torch.arange(4, dtype=torch.float64)
    g = gpuad.from_dlpack(src)
    src[0] = 10.0
    assert g.tolist() == [10.0, 1.0, 2.0, 3.0]
    a = np.ones(3)
    assert np.shares_memory(gpuad.from_dlpack(a).data, a)


def test_random_api_as_torch():
    gpuad.manual_seed(1)
    a = gpuad.randint(5, (2, 3))
    b = gpuad.randint(2, 4, size=(100,))
    assert a.shape == (2, 3) and int(a.numpy().max()) < 5 and set(b.tolist()) <= {2, 3}
    g1, g2 = gpuad.Generator(7), gpuad.Generator(7)
    assert gpuad.randn(4, generator=g1).tolist() == gpuad.randn(4, generator=g2).tolist()
    p = gpuad.tensor([[0.0, 0.3, 0.7], [0.5, 0.0, 0.5]])
    s = gpuad.multinomial(p, 2)
    assert s.shape == (2, 2) and sorted(s[0].tolist()) == [1, 2] and sorted(s[1].tolist()) == [0, 2]
    counts = np.bincount(gpuad.multinomial(gpuad.tensor([0.2, 0.8]), 4000, replacement=True).numpy(), minlength=2)
    assert 0.75 < counts[1] / 4000 < 0.85
    with pytest.raises(ValueError, match="without replacement"):
        gpuad.multinomial(gpuad.tensor([0.0, 1.0]), 2)


# --- bfloat16 on the CPU -----------------------------------------------------------------

def _bf(a):
    return np.asarray(a, dtype=np.float32)


@pytest.mark.cpu_only("bfloat16 is ml_dtypes' host dtype; CuPy has none")
def test_bfloat16_tensors_and_promotion_as_torch():
    x = gpuad.tensor([1.0, 2.5], dtype="bfloat16")
    assert x.dtype == gpuad.bfloat16 and gpuad.ones(2).bfloat16().dtype == gpuad.bfloat16
    assert gpuad.ones(2).to("bfloat16").dtype == gpuad.bfloat16
    for other, want in ((2.5, "bfloat16"), (gpuad.ones(2, dtype="float16"), "float32"),
                        (gpuad.ones(2), "float32"), (gpuad.ones(2, dtype="float64"), "float64"),
                        (gpuad.tensor([1, 2]), "bfloat16")):
        assert str((x * other).dtype) == want
    assert str((torch.ones(2, dtype=torch.bfloat16) * torch.ones(2, dtype=torch.float16)).dtype) == "torch.float32"


def test_casts_out_of_bfloat16_give_the_dtype_asked_for_as_torch():
    # an explicit dtype wins over "bfloat16 in, bfloat16 out" (it once rounded .float() back)
    x = gpuad.tensor([1.0, 2.5], dtype="bfloat16", requires_grad=True)
    t = torch.tensor([1.0, 2.5], dtype=torch.bfloat16, requires_grad=True)
    for mine, theirs in ((x.float(), t.float()), (x.double(), t.double()), (x.to("float16"), t.to(torch.float16))):
        assert str(mine.dtype) == str(theirs.dtype).replace("torch.", "")
    (x.double() * 3).sum().backward()
    (t.double() * 3).sum().backward()
    assert x.grad.dtype == gpuad.bfloat16 and t.grad.dtype == torch.bfloat16
    np.testing.assert_array_equal(_bf(x.grad.numpy()), t.grad.float().numpy())


def test_bfloat16_reductions_and_matmul_accumulate_in_float32():
    a = gpuad.full((100000,), 0.01, dtype="bfloat16")
    t = torch.full((100000,), 0.01, dtype=torch.bfloat16)
    assert a.sum().dtype == gpuad.bfloat16 and a.sum().item() == t.sum().item()
    rng = np.random.default_rng(0)
    p, q = rng.standard_normal((16, 256)), rng.standard_normal((256, 8))
    mine = (gpuad.tensor(p).bfloat16() @ gpuad.tensor(q).bfloat16()).float().numpy()
    theirs = (torch.tensor(p).bfloat16() @ torch.tensor(q).bfloat16()).float().numpy()
    np.testing.assert_allclose(mine, theirs, rtol=1e-2, atol=1e-2)


def test_bfloat16_training_step_matches_torch():
    rng = np.random.default_rng(1)
    xv, wv, bv = rng.standard_normal((32, 8)), rng.standard_normal((4, 8)) * 0.3, rng.standard_normal(4) * 0.1
    out = []
    for lib, Fm in ((gpuad, F), (torch, torch.nn.functional)):
        x = lib.tensor(xv).bfloat16()
        w = lib.tensor(wv).bfloat16().detach().requires_grad_(True)
        b = lib.tensor(bv).bfloat16().detach().requires_grad_(True)
        y = Fm.linear(x, w, b).tanh()
        loss = (y.float() ** 2).mean()
        loss.backward()
        assert w.grad.dtype == (gpuad.bfloat16 if lib is gpuad else torch.bfloat16)
        out.append((loss.item(), w.grad.float().numpy(), b.grad.float().numpy()))
    (l1, w1, b1), (l2, w2, b2) = out
    assert l1 == pytest.approx(l2, rel=2e-2)
    np.testing.assert_allclose(w1, w2, rtol=5e-2, atol=1e-2)
    np.testing.assert_allclose(b1, b2, rtol=5e-2, atol=1e-2)
