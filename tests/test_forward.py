"""Forward mode and the functional transforms (#15): jvp against finite differences and
against vjp (the adjoint identity <u, J t> = <J^T u, t>) on every gradcheck case,
against torch.func where torch is installed, and pytrees through grad, vjp and jvp."""
import numpy as np
import pytest

import gpuad
from gpuad.compiler.capture import capture
from gpuad.xp import lookup
from tests.test_ops_gradcheck import all_cases

R = np.random.default_rng(11)


def _cases():
    for name, cases in all_cases().items():
        for i, (fn, inputs) in enumerate(cases):
            yield pytest.param(name, fn, inputs, id=f"{name}-{i}")


def _split(inputs):
    floats = [i for i, a in enumerate(inputs) if np.asarray(a).dtype.kind == "f"]
    return floats


def test_every_traced_primitive_has_a_forward_rule():
    """The primitives the tracer emits for every gradcheck case, forward and backward."""
    missing = set()
    for name, cases in all_cases().items():
        for fn, inputs in cases:
            xs = [gpuad.tensor(a, requires_grad=np.asarray(a).dtype.kind == "f") for a in inputs]

            def f(*xs):
                out = fn(*xs)
                outs = out if isinstance(out, tuple) else (out,)
                total = sum(o.sum() for o in outs if o.requires_grad)
                return [total] + list(gpuad.autograd.grad(total, [x for x in xs if x.requires_grad],
                                                          allow_unused=True))
            try:
                cap = capture(f, tuple(xs), {})
            except Exception:
                continue
            missing |= {e.prim for e in cap.graph.eqns if getattr(lookup(e.prim), "jvp", None) is None}
    assert not missing, f"primitives without a forward-mode rule: {sorted(missing)}"


@pytest.mark.parametrize("name,fn,inputs", list(_cases()))
def test_jvp_is_the_adjoint_of_vjp_and_matches_finite_differences(name, fn, inputs):
    floats = _split(inputs)
    if not floats:
        pytest.skip("no float input")
    args = [gpuad.tensor(a) for a in inputs]

    def f(*fl):
        full = list(args)
        for i, x in zip(floats, fl):
            full[i] = x
        out = fn(*full)
        return out[0] if isinstance(out, tuple) else out
    primals = tuple(args[i] for i in floats)
    try:
        y0 = f(*primals)
    except Exception:
        pytest.skip("not a call on these inputs")
    if y0.dtype.kind != "f":
        pytest.skip("integer output")
    tangents = tuple(gpuad.tensor(R.standard_normal(p.shape).astype(p.dtype)) for p in primals)
    y, t = gpuad.jvp(f, primals, tangents)
    np.testing.assert_allclose(y.numpy(), y0.numpy(), rtol=1e-12, atol=0)
    # adjoint identity against the engine's own reverse mode
    u = R.standard_normal(y.shape).astype(y.dtype)
    _, back = gpuad.vjp(f, *primals)
    gs = back(gpuad.tensor(u))
    lhs = float(np.sum(u * t.numpy()))
    rhs = sum(float(np.sum(g.numpy() * tt.numpy())) for g, tt in zip(gs, tangents))
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs)), (lhs, rhs)
    # central finite differences in float64
    eps = 1e-6
    plus = f(*[gpuad.tensor(p.numpy() + eps * tt.numpy()) for p, tt in zip(primals, tangents)]).numpy()
    minus = f(*[gpuad.tensor(p.numpy() - eps * tt.numpy()) for p, tt in zip(primals, tangents)]).numpy()
    np.testing.assert_allclose(t.numpy(), (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-6)


torch = pytest.importorskip("torch")
tfunc = torch.func


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    w1, w2 = rng.standard_normal((5, 4)), rng.standard_normal((3, 5))
    x = rng.standard_normal(4)

    def g(x, w1=w1, w2=w2):          # gpuad
        h = gpuad.tanh(gpuad.tensor(w1) @ x)
        return gpuad.softmax(gpuad.tensor(w2) @ h, dim=-1) * x.sum()

    def t(x):                        # torch
        h = torch.tanh(torch.tensor(w1) @ x)
        return torch.softmax(torch.tensor(w2) @ h, dim=-1) * x.sum()
    return g, t, x


def test_jvp_jacfwd_jacrev_hessian_match_torch_func():
    g, t, x = _pair()
    v = np.random.default_rng(1).standard_normal(4)
    y, ty = gpuad.jvp(g, (gpuad.tensor(x),), (gpuad.tensor(v),))
    y2, ty2 = tfunc.jvp(t, (torch.tensor(x),), (torch.tensor(v),))
    np.testing.assert_allclose(y.numpy(), y2.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ty.numpy(), ty2.numpy(), rtol=1e-10, atol=1e-13)
    for mine, theirs in ((gpuad.jacfwd, tfunc.jacfwd), (gpuad.jacrev, tfunc.jacrev)):
        np.testing.assert_allclose(mine(g)(gpuad.tensor(x)).numpy(), theirs(t)(torch.tensor(x)).numpy(),
                                   rtol=1e-10, atol=1e-13)
    scalar_g = lambda x: g(x).sum() * x[0]                  # noqa: E731
    scalar_t = lambda x: t(x).sum() * x[0]                  # noqa: E731
    np.testing.assert_allclose(gpuad.hessian(scalar_g)(gpuad.tensor(x)).numpy(),
                               tfunc.hessian(scalar_t)(torch.tensor(x)).numpy(), rtol=1e-10, atol=1e-12)


def test_hessian_of_a_hundred_parameter_function_equals_torch_func():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((100, 100)) / 10

    def g(p):
        return (gpuad.tanh(gpuad.tensor(a) @ p) ** 2).sum() + (p ** 4).sum() / 4

    def t(p):
        return (torch.tanh(torch.tensor(a) @ p) ** 2).sum() + (p ** 4).sum() / 4
    p = rng.standard_normal(100)
    np.testing.assert_allclose(gpuad.hessian(g)(gpuad.tensor(p)).numpy(), tfunc.hessian(t)(torch.tensor(p)).numpy(),
                               rtol=0, atol=1e-10)


def test_the_lectures_example_through_every_transform():
    # f(x1, x2) = (x1 x2 + sin x1) (x2 + exp x1): the lecture's small graph
    def g(x):
        return (x[0] * x[1] + gpuad.sin(x[0])) * (x[1] + gpuad.exp(x[0]))

    def t(x):
        return (x[0] * x[1] + torch.sin(x[0])) * (x[1] + torch.exp(x[0]))
    x = np.array([0.7, -1.3])
    np.testing.assert_allclose(gpuad.jacfwd(g)(gpuad.tensor(x)).numpy(), tfunc.jacfwd(t)(torch.tensor(x)).numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(gpuad.jacrev(g)(gpuad.tensor(x)).numpy(), tfunc.jacrev(t)(torch.tensor(x)).numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(gpuad.hessian(g)(gpuad.tensor(x)).numpy(), tfunc.hessian(t)(torch.tensor(x)).numpy(),
                               rtol=1e-12)


def test_jvp_of_grad_matches_finite_differences_of_grad():
    g, _, x = _pair(4)
    f = lambda x: (g(x) ** 2).sum()                          # noqa: E731
    v = np.random.default_rng(5).standard_normal(4)
    _, hv = gpuad.jvp(gpuad.grad(f), (gpuad.tensor(x),), (gpuad.tensor(v),))
    eps = 1e-6
    fd = (gpuad.grad(f)(gpuad.tensor(x + eps * v)).numpy() - gpuad.grad(f)(gpuad.tensor(x - eps * v)).numpy()) / (2 * eps)
    np.testing.assert_allclose(hv.numpy(), fd, rtol=1e-6, atol=1e-8)


# -- pytrees -----------------------------------------------------------------------------

def test_grad_value_and_grad_and_vjp_take_and_give_pytrees():
    params = {"w": gpuad.tensor(R.standard_normal((3, 2))), "b": [gpuad.tensor(R.standard_normal(2))]}
    x = gpuad.tensor(R.standard_normal((4, 3)))

    def loss(p, x):
        return ((x @ p["w"] + p["b"][0]).tanh() ** 2).sum()
    g = gpuad.grad(loss)(params, x)
    assert set(g) == {"w", "b"} and isinstance(g["b"], list) and g["w"].shape == (3, 2)
    tp = {k: torch.tensor(v.numpy() if not isinstance(v, list) else v[0].numpy(), requires_grad=True)
          for k, v in params.items()}
    ((torch.tensor(x.numpy()) @ tp["w"] + tp["b"]).tanh() ** 2).sum().backward()
    np.testing.assert_allclose(g["w"].numpy(), tp["w"].grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(g["b"][0].numpy(), tp["b"].grad.numpy(), rtol=1e-12)
    v, g2 = gpuad.value_and_grad(loss)(params, x)
    np.testing.assert_array_equal(g2["w"].numpy(), g["w"].numpy())
    out, back = gpuad.vjp(lambda p: {"y": p["w"].sum() * p["b"][0]}, params)
    (gp,) = back({"y": gpuad.ones(2, dtype="float64")})
    np.testing.assert_allclose(gp["w"].numpy(), np.full((3, 2), params["b"][0].numpy().sum()), rtol=1e-12)


def test_jvp_and_jacobians_on_pytrees():
    p = {"a": gpuad.tensor([1.0, 2.0], dtype="float64"), "b": gpuad.tensor(3.0, dtype="float64")}
    f = lambda p: {"s": p["a"] * p["b"], "t": p["b"] ** 2}          # noqa: E731
    out, tan = gpuad.jvp(f, (p,), ({"a": gpuad.tensor([1.0, 0.0], dtype="float64"),
                                    "b": gpuad.tensor(1.0, dtype="float64")},))
    assert tan["s"].tolist() == [4.0, 2.0] and tan["t"].item() == 6.0
    jf, jr = gpuad.jacfwd(f)(p), gpuad.jacrev(f)(p)
    for k in ("s", "t"):
        for j in ("a", "b"):
            np.testing.assert_allclose(jf[k][j].numpy(), jr[k][j].numpy(), rtol=1e-12)
    assert jf["s"]["a"].shape == (2, 2) and jf["t"]["b"].shape == ()


def test_jvp_refuses_mismatched_tangents():
    with pytest.raises(ValueError, match="structure"):
        gpuad.jvp(lambda x, y: x * y, (gpuad.ones(2), gpuad.ones(2)), (gpuad.ones(2),))
    with pytest.raises(ValueError, match="shape"):
        gpuad.jvp(lambda x: x * 2, (gpuad.ones(2),), (gpuad.ones(3),))
    with pytest.raises(TypeError, match="tuples"):
        gpuad.jvp(lambda x: x, gpuad.ones(2), gpuad.ones(2))


# -- the Jacobian of a chain, by the matrix-chain program ------------------------------

def _chain(widths, seed=0):
    gpuad.manual_seed(seed)
    return gpuad.nn.Sequential(*[gpuad.nn.Sequential(gpuad.nn.Linear(a, b, dtype="float64"), gpuad.nn.Tanh())
                                 for a, b in zip(widths, widths[1:])])


@pytest.mark.parametrize("widths,kind", [([40, 20, 10, 3], "reverse"), ([3, 10, 20, 40], "forward"),
                                         ([30, 12, 2, 12, 30], "split")])
def test_jacobian_auto_chooses_the_matrix_chain_order_and_all_modes_agree(widths, kind):
    net = _chain(widths)
    x = gpuad.tensor(R.standard_normal(widths[0]))
    J, (plan, cost) = gpuad.jacobian(net, x, return_plan=True)
    assert plan[0] == kind
    Jf, (_, cf) = gpuad.jacobian(net, x, mode="forward", return_plan=True)
    Jr, (_, cr) = gpuad.jacobian(net, x, mode="reverse", return_plan=True)
    assert cost <= min(cf, cr)
    np.testing.assert_allclose(J.numpy(), Jf.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(J.numpy(), Jr.numpy(), rtol=1e-10, atol=1e-13)
    assert J.shape == (widths[-1], widths[0])


def test_chain_plan_is_the_matrix_chain_optimum():
    from gpuad.func.chain import chain_plan
    # hourglass: reverse into the bottleneck, forward out of it, one outer product
    cost, plan = chain_plan([512, 8, 512], [2 * 512 * 8, 2 * 8 * 512])
    assert plan == ("split", 1, ("reverse", 0, 1), ("forward", 1, 2))
    assert cost == 8 * 2 * 512 * 8 + 8 * 2 * 8 * 512 + 512 * 8 * 512
    # one layer: the cheaper direct mode
    assert chain_plan([5, 3], [30])[1][0] == "reverse" and chain_plan([3, 5], [30])[1][0] == "forward"
    with pytest.raises(ValueError, match="mode"):
        gpuad.jacobian(gpuad.sin, gpuad.ones(2), mode="sideways")


def test_grad_of_jvp_matches_finite_differences():
    """Reverse over forward: with primals that require grad, jvp forms J t by two
    reverse passes recorded with create_graph, so grad can differentiate it again."""
    g, _, x = _pair(6)
    v = gpuad.tensor(np.random.default_rng(7).standard_normal(4))
    h = lambda x: (gpuad.jvp(g, (x,), (v,))[1] ** 2).sum()              # noqa: E731
    xg = gpuad.tensor(x, requires_grad=True)
    got = gpuad.grad(h)(xg).numpy()
    with gpuad.no_grad():
        hv = lambda x: float((gpuad.jvp(g, (gpuad.tensor(x),), (v,))[1] ** 2).sum())   # noqa: E731
    eps = 1e-6
    fd = np.array([(hv(x + eps * e) - hv(x - eps * e)) / (2 * eps) for e in np.eye(4)])
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)
    # and the value matches forward mode's
    t_fwd = gpuad.jvp(g, (gpuad.tensor(x),), (v,))[1].numpy()
    t_rev = gpuad.jvp(g, (xg,), (v,))[1].detach().numpy()
    np.testing.assert_allclose(t_rev, t_fwd, rtol=1e-12, atol=1e-14)


def test_jacfwd_refuses_primals_that_require_grad():
    x = gpuad.tensor([0.5, 1.0], dtype="float64", requires_grad=True)
    with pytest.raises(NotImplementedError, match="grad of jacfwd"):
        gpuad.jacfwd(gpuad.sin)(x)
    assert gpuad.jacfwd(gpuad.sin)(x.detach()).shape == (2, 2)


# -- the Jacobian of a plain function, by the cuts of its trace ------------------------------

def _plain(widths, seed=1, skip=False):
    rng = np.random.default_rng(seed)
    ws = [(gpuad.tensor(rng.standard_normal((b, a)) / np.sqrt(a)), gpuad.tensor(rng.standard_normal(b) * 0.1))
          for a, b in zip(widths, widths[1:])]

    def f(v):
        x0 = v
        for w, b in ws:
            v = gpuad.tanh(w @ v + b)
        return v + x0.sum() * 0.5 if skip else v        # skip: a path around every cut
    return f


@pytest.mark.parametrize("widths,kind,narrow", [([30, 12, 2, 12, 30], "split", 2), ([40, 20, 10, 3], "reverse", 3),
                                                ([3, 10, 20, 40], "forward", 3)])
def test_jacobian_auto_finds_the_cuts_of_a_plain_function(widths, kind, narrow):
    f = _plain(widths)
    x = gpuad.tensor(R.standard_normal(widths[0]))
    J, (plan, cost) = gpuad.jacobian(f, x, return_plan=True)
    assert plan[0] == kind
    assert [w for _, w in plan.cuts] == widths           # the tanh after each layer (runs of one width merged)
    assert plan.cuts[0] == ("input", widths[0]) and min(w for _, w in plan.cuts) == narrow
    Jr = gpuad.jacobian(f, x, mode="reverse")
    np.testing.assert_allclose(J.numpy(), Jr.numpy(), rtol=1e-10, atol=1e-13)
    tJ = torch.autograd.functional.jacobian(
        lambda v: _torch_plain(widths)(v), torch.tensor(x.numpy()))
    np.testing.assert_allclose(J.numpy(), tJ.numpy(), rtol=1e-10, atol=1e-13)


def _torch_plain(widths, seed=1):
    rng = np.random.default_rng(seed)
    ws = [(torch.tensor(rng.standard_normal((b, a)) / np.sqrt(a)), torch.tensor(rng.standard_normal(b) * 0.1))
          for a, b in zip(widths, widths[1:])]

    def f(v):
        for w, b in ws:
            v = torch.tanh(w @ v + b)
        return v
    return f


def test_jacobian_auto_without_a_cut_takes_the_cheaper_fixed_mode():
    f = _plain([30, 12, 2, 12, 30], skip=True)           # x0 reaches the output around the bottleneck
    x = gpuad.tensor(R.standard_normal(30))
    J, (plan, cost) = gpuad.jacobian(f, x, return_plan=True)
    assert plan[0] in ("forward", "reverse") and not hasattr(plan, "cuts")
    np.testing.assert_allclose(J.numpy(), gpuad.jacobian(f, x, mode="forward").numpy(), rtol=1e-10, atol=1e-13)
