"""vmap: every gradcheck primitive batched, against the loop over examples (float64, 1e-10),
gradients through it and inside it, nesting, in/out axes, randomness, chunking, and
torch.func.vmap on the same functions."""
import numpy as np
import pytest

import gpuad
from gpuad import nn
from tests.test_ops_gradcheck import all_cases

B = 3


def _batch(x, k_batched):
    """x stacked B times, scaled a little per example (floats), unchanged otherwise."""
    x = np.asarray(x)
    if not k_batched:
        return x
    if x.dtype.kind != "f":
        return np.stack([x] * B)
    return np.stack([x * (1.0 + 0.02 * (k - 1)) for k in range(B)])


def _loop(fn, batched, flags):
    outs = [fn(*[gpuad.tensor(b[k]) if f else gpuad.tensor(b) for b, f in zip(batched, flags)]) for k in range(B)]
    return outs


def _cases():
    for name, cases in all_cases().items():
        for i, (fn, inputs) in enumerate(cases):
            yield pytest.param(fn, inputs, id=f"{name}-{i}")


def _tensors(out):
    return out if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.parametrize("fn,inputs", list(_cases()))
def test_vmap_equals_the_loop_over_examples(fn, inputs):
    """Values, for every gradcheck case: all inputs batched, and only the first batched."""
    flag_sets = [(True,) * len(inputs)]
    if len(inputs) > 1:
        flag_sets.append((True,) + (False,) * (len(inputs) - 1))
    for flags in flag_sets:
        batched = [_batch(x, f) for x, f in zip(inputs, flags)]
        want = _loop(fn, batched, flags)
        got = gpuad.vmap(fn, in_axes=tuple(0 if f else None for f in flags), randomness="same")(
            *[gpuad.tensor(b) for b in batched])
        for k in range(B):
            for g, w in zip(_tensors(got), _tensors(want[k])):
                np.testing.assert_allclose(g.numpy()[k], w.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn,inputs", list(_cases()))
def test_gradients_through_and_inside_vmap_equal_the_loop(fn, inputs):
    """d/dx sum(w * vmap(f)(x)) (through) and vmap(grad(f)) (per-example, inside)."""
    batched = [_batch(x, True) for x in inputs]
    diff = [b.dtype.kind == "f" for b in batched]

    def weighted(*xs):
        out = _tensors(fn(*xs))
        s = 0.0
        for o in out:
            if o.dtype.kind == "f":
                s = s + (o * gpuad.tensor(np.cos(np.arange(o.numel()).reshape(o.shape) + 0.5))).sum()
        return s
    xs = [gpuad.tensor(b, requires_grad=d) for b, d in zip(batched, diff)]
    total = 0.0
    for o in _tensors(gpuad.vmap(fn, randomness="same")(*xs)):
        if o.dtype.kind == "f":
            w = np.cos(np.arange(o.numel() // B).reshape(o.shape[1:]) + 0.5)
            total = total + (o * gpuad.tensor(np.broadcast_to(w, o.shape).copy())).sum()
    if not hasattr(total, "backward"):
        pytest.skip("no floating-point output")
    total.backward()
    argnums = tuple(i for i, d in enumerate(diff) if d)
    inside = gpuad.vmap(gpuad.grad(weighted, argnums=argnums), randomness="same")(
        *[gpuad.tensor(b) for b in batched])
    for j, i in enumerate(argnums):
        for k in range(B):
            ex = [gpuad.tensor(b[k]) for b in batched]
            want = gpuad.grad(weighted, argnums=i)(*ex).numpy()
            np.testing.assert_allclose(xs[i].grad.numpy()[k], want, rtol=1e-9, atol=1e-11)
            np.testing.assert_allclose(inside[j].numpy()[k], want, rtol=1e-9, atol=1e-11)


# -- the transform's surface, against torch.func --------------------------------------------

torch = pytest.importorskip("torch")
tf = torch.func
R = np.random.default_rng(3)


def _t(x):
    return torch.tensor(np.asarray(x))


def test_in_axes_out_axes_and_nesting_equal_torch_func():
    x, y = R.standard_normal((4, 3)), R.standard_normal((3, 4))
    g = gpuad.vmap(lambda a, b: gpuad.tanh(a) * b.sum(0), in_axes=(0, 1), out_axes=1)(gpuad.tensor(x), gpuad.tensor(y))
    t = tf.vmap(lambda a, b: torch.tanh(a) * b.sum(0), in_dims=(0, 1), out_dims=1)(_t(x), _t(y))
    np.testing.assert_allclose(g.numpy(), t.numpy(), rtol=1e-12)
    m = R.standard_normal((2, 4, 3))
    inner = lambda r: (r[:, None] * r[None, :]).sum(-1)              # noqa: E731
    g = gpuad.vmap(gpuad.vmap(inner))(gpuad.tensor(m))
    t = tf.vmap(tf.vmap(lambda r: (r[:, None] * r[None, :]).sum(-1)))(_t(m))
    np.testing.assert_allclose(g.numpy(), t.numpy(), rtol=1e-12)
    # nested, the inner over the other axis, with an unbatched argument
    w = R.standard_normal(3)
    g = gpuad.vmap(gpuad.vmap(lambda r, w: (r * w).sum(), in_axes=(0, None)), in_axes=(1, None))(
        gpuad.tensor(m), gpuad.tensor(w))
    t = tf.vmap(tf.vmap(lambda r, w: (r * w).sum(), in_dims=(0, None)), in_dims=(1, None))(_t(m), _t(w))
    np.testing.assert_allclose(g.numpy(), t.numpy(), rtol=1e-12)
    # pytrees in and out
    g = gpuad.vmap(lambda d: {"s": d["a"].sum(), "p": d["a"] * d["b"]}, in_axes=({"a": 0, "b": None},))(
        {"a": gpuad.tensor(x), "b": gpuad.tensor(w)})
    assert g["s"].shape == (4,) and g["p"].shape == (4, 3)
    np.testing.assert_allclose(g["p"].numpy(), x * w, rtol=1e-12)


def test_vmap_errors_name_the_problem():
    x = gpuad.ones(4, 3)
    with pytest.raises(ValueError, match="different batch sizes"):
        gpuad.vmap(lambda a, b: a + b)(x, gpuad.ones(5, 3))
    with pytest.raises(ValueError, match="batches no argument"):
        gpuad.vmap(lambda a: a, in_axes=None)(x)
    with pytest.raises(RuntimeError, match="no single value"):
        gpuad.vmap(lambda a: a * float(a.sum()))(x)
    with pytest.raises(RuntimeError, match="randomness='error'"):
        gpuad.vmap(lambda a: gpuad.nn.functional.dropout(a, 0.5))(x)
    with pytest.raises(ValueError, match="out of range"):
        gpuad.vmap(lambda a: a, in_axes=2)(x)


def test_randomness_same_and_different():
    x = gpuad.ones(6, 100)
    gpuad.manual_seed(0)
    same = gpuad.vmap(lambda a: gpuad.nn.functional.dropout(a, 0.5), randomness="same")(x).numpy()
    assert (same == same[0]).all()
    diff = gpuad.vmap(lambda a: gpuad.nn.functional.dropout(a, 0.5), randomness="different")(x).numpy()
    assert not (diff == diff[0]).all()
    assert set(np.unique(diff)) <= {0.0, 2.0}


def test_chunk_size_gives_the_same_result_and_gradient():
    x = gpuad.tensor(R.standard_normal((7, 3)), requires_grad=True)
    f = lambda a: gpuad.tanh(a) @ a                                  # noqa: E731
    full = gpuad.vmap(f)(x)
    full.sum().backward()
    g_full = x.grad.numpy().copy()
    x.grad = None
    part = gpuad.vmap(f, chunk_size=3)(x)
    part.sum().backward()
    np.testing.assert_allclose(part.numpy(), full.numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), g_full, rtol=1e-12)


def test_per_example_gradients_of_a_module_equal_torch_func():
    gpuad.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    tmodel.load_state_dict({k: _t(v.numpy()) for k, v in model.state_dict().items()})
    x, y = R.standard_normal((6, 5)), R.integers(0, 3, 6)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xb, yb):
        out = gpuad.func.functional_call(model, p, (xb[None],))
        return gpuad.nn.functional.cross_entropy(out, yb[None])
    g = gpuad.vmap(gpuad.grad(loss), in_dims=(None, 0, 0))(params, gpuad.tensor(x), gpuad.tensor(y))
    tparams = {k: v.detach() for k, v in tmodel.named_parameters()}

    def tloss(p, xb, yb):
        return torch.nn.functional.cross_entropy(tf.functional_call(tmodel, p, (xb[None],)), yb[None])
    t = tf.vmap(tf.grad(tloss), in_dims=(None, 0, 0))(tparams, _t(x), _t(y))
    assert set(g) == set(t)
    for k in t:
        assert g[k].shape == tuple(t[k].shape)
        np.testing.assert_allclose(g[k].numpy(), t[k].numpy(), rtol=1e-10, atol=1e-12)
    # the module's own parameters are untouched and still its own
    assert all(p is model.get_parameter(k) if hasattr(model, "get_parameter") else True
               for k, p in model.named_parameters())


def test_jacobians_and_hessian_by_vmap_equal_torch_func():
    x = R.standard_normal(5)
    f = lambda a: gpuad.tanh(a) * a.sum()                             # noqa: E731
    tfn = lambda a: torch.tanh(a) * a.sum()                            # noqa: E731
    for ours, theirs in ((gpuad.jacfwd, tf.jacfwd), (gpuad.jacrev, tf.jacrev)):
        np.testing.assert_allclose(ours(f)(gpuad.tensor(x)).numpy(), theirs(tfn)(_t(x)).numpy(), rtol=1e-10)
    h = gpuad.hessian(lambda a: (gpuad.sin(a) * a).sum())(gpuad.tensor(x)).numpy()
    np.testing.assert_allclose(h, tf.hessian(lambda a: (torch.sin(a) * a).sum())(_t(x)).numpy(), rtol=1e-10)
    # vmap of jacrev, and jacrev of vmap
    xs = R.standard_normal((4, 3))
    np.testing.assert_allclose(gpuad.vmap(gpuad.jacrev(f))(gpuad.tensor(xs)).numpy(),
                               tf.vmap(tf.jacrev(tfn))(_t(xs)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(gpuad.jacrev(gpuad.vmap(f))(gpuad.tensor(xs)).numpy(),
                               tf.jacrev(tf.vmap(tfn))(_t(xs)).numpy(), rtol=1e-10)


def test_vmap_inside_compile_equals_eager():
    w = gpuad.tensor(R.standard_normal((3, 4)), requires_grad=True)

    def step(x):
        return gpuad.vmap(lambda r: gpuad.tanh(r @ w).sum())(x).sum()
    x = gpuad.tensor(R.standard_normal((5, 3)))
    want = step(x).item()
    compiled = gpuad.compile(step)
    assert compiled(x).item() == pytest.approx(want, rel=1e-12)
    assert compiled(x).item() == pytest.approx(want, rel=1e-12)


def test_the_planner_refuses_a_vmapped_graph_loudly():
    x = gpuad.tensor(R.standard_normal((4, 3)), requires_grad=True)
    y = gpuad.vmap(lambda r: gpuad.tanh(r).sum())(x).sum()
    with pytest.raises(NotImplementedError, match="recorded under gpuad.vmap"):
        gpuad.memory.plan_backward(y)


def test_jacobians_with_aux_equal_torch_func():
    x = R.standard_normal(4)
    f = lambda a: (gpuad.tanh(a) * a, (a * a).sum())                  # noqa: E731
    tfn = lambda a: (torch.tanh(a) * a, (a * a).sum())                 # noqa: E731
    for ours, theirs in ((gpuad.jacfwd, tf.jacfwd), (gpuad.jacrev, tf.jacrev)):
        J, aux = ours(f, has_aux=True)(gpuad.tensor(x))
        tJ, taux = theirs(tfn, has_aux=True)(_t(x))
        np.testing.assert_allclose(J.numpy(), tJ.numpy(), rtol=1e-10)
        assert aux.shape == () and aux.item() == pytest.approx(taux.item(), rel=1e-12)
