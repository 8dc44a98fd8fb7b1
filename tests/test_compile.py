"""gpuad.compile: compiled steps against eager ones (bitwise where no fusion
reorders arithmetic, and fusion here never does: it runs the same float ops
in the same order, chunk by chunk), the guards, the errors, each pass alone,
and the buffer plan against what a replay allocates."""
import tracemalloc

import warnings

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim
from gpuad.compiler import CompileWarning, TraceError
from gpuad.compiler.compiled import RETRACE_WARN
from gpuad.compiler.ir import Graph
from gpuad.compiler.passes import buffers, cse, dce, fold, fuse
from tests.test_ops_gradcheck import all_cases

R = np.random.default_rng(3)


def train_step(m, opt, loss=F.cross_entropy):
    """The PyTorch-style step these tests compile: zero_grad, the loss of m(x) against y,
    backward, step. For cross-entropy, logits are taken as rows ((B, T, V) as (B T, V))."""
    def step(x, y):
        opt.zero_grad()
        out = m(x)
        value = loss(out.reshape(-1, out.shape[-1]), y.reshape(-1)) if loss is F.cross_entropy else loss(out, y)
        value.backward()
        opt.step()
        return value
    return step


def _mlp_run(opt_cls, compiled, steps=3, dropout=0.0, **kw):
    gpuad.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 4))
    opt = opt_cls(m.parameters(), **kw)
    x = gpuad.tensor(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))
    y = gpuad.tensor(np.array([0, 3, 1, 2, 1]))
    step = train_step(m, opt)
    f = gpuad.compile(step) if compiled else step
    gpuad.manual_seed(1)
    losses = [f(x, y).item() for _ in range(steps)]
    return losses, [p.numpy().copy() for p in m.parameters()], [p.grad.numpy().copy() for p in m.parameters()]


@pytest.mark.parametrize("opt_cls,kw", [(optim.SGD, dict(lr=0.1)), (optim.SGD, dict(lr=0.1, momentum=0.9)),
                                        (optim.Adam, dict(lr=0.01)), (optim.AdamW, dict(lr=0.01, amsgrad=True))])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_training_step_equals_eager_bitwise(opt_cls, kw, dropout):
    eager = _mlp_run(opt_cls, False, dropout=dropout, **kw)
    comp = _mlp_run(opt_cls, True, dropout=dropout, **kw)
    assert eager[0] == comp[0]
    for a, b in zip(eager[1] + eager[2], comp[1] + comp[2]):
        np.testing.assert_array_equal(a, b)


def test_value_and_grad_function_compiles():
    loss = lambda w, x: ((x @ w).tanh() ** 2).sum()   # noqa: E731
    f = gpuad.compile(gpuad.value_and_grad(loss))
    w = gpuad.tensor(R.standard_normal((8, 3)), requires_grad=True)
    x = gpuad.tensor(R.standard_normal((4, 8)))
    for _ in range(2):
        v, g = f(w, x)
        v2, g2 = gpuad.value_and_grad(loss)(w, x)
        assert v.item() == v2.item()
        np.testing.assert_array_equal(g.numpy(), g2.numpy())


def _grads_of(fn, n):
    def f(*xs):
        out = fn(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        total = sum((o * (k + 1.5)).sum() for k, o in enumerate(outs) if o.requires_grad)
        return [total] + list(gpuad.autograd.grad(total, xs[:n], allow_unused=True))
    return f


def _cases():
    for name, cases in all_cases().items():
        for i, (fn, inputs) in enumerate(cases):
            yield pytest.param(fn, inputs, id=f"{name}-{i}")


@pytest.mark.parametrize("fn,inputs", list(_cases()))
def test_every_gradcheck_case_compiled_equals_eager(fn, inputs):
    xs = [gpuad.tensor(a, requires_grad=True) if np.asarray(a).dtype.kind == "f" else gpuad.tensor(a)
          for a in inputs]
    n = sum(1 for x in xs if x.requires_grad)
    xs = [x for x in xs if x.requires_grad] + [x for x in xs if not x.requires_grad]
    order = [i for i, a in enumerate(inputs) if np.asarray(a).dtype.kind == "f"] + \
            [i for i, a in enumerate(inputs) if np.asarray(a).dtype.kind != "f"]

    def call(*ys):
        back = [None] * len(ys)
        for pos, y in zip(order, ys):
            back[pos] = y
        return fn(*back)
    f = _grads_of(call, n)
    try:
        want = f(*xs)
    except Exception:                      # the eager case itself needs something else
        pytest.skip("not a differentiable call on these inputs")
    try:
        got = gpuad.compile(f)(*xs)
    except TraceError as e:
        pytest.fail(f"trace failed: {e}")
    for a, b in zip(got, want):
        if b is None:
            assert a is None
            continue
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(7,), (41, 1000), (3, 9001), (40000,), (4, 6, 3000), (5, 3, 2, 4000)])
def test_fused_chunks_equal_eager_at_every_shape(shape):
    """Shapes that take each of the fused kernel's modes: one pass, rows, flat."""
    x = gpuad.tensor(R.standard_normal(shape).astype(np.float32), requires_grad=True)
    b = gpuad.tensor(R.standard_normal(shape[-1:]).astype(np.float32), requires_grad=True)

    def step(x, b):
        x.grad = b.grad = None
        y = (F.gelu(x * 1.5 + b).tanh() + x).sum()
        y.backward()
        return y
    want = step(x, b).item(), x.grad.numpy().copy(), b.grad.numpy().copy()
    f = gpuad.compile(step)
    for _ in range(2):
        got = f(x, b).item(), x.grad.numpy(), b.grad.numpy()
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[2], want[2])
    assert any(e.prim == "fused" for e in f.compiled(x, b).graph.eqns)


def test_random_programs_compiled_equal_eager_to_a_few_ulp():
    from tests.test_fuzz import program, _ops
    for seed in range(40):
        steps, leaves, grey, weights, _ = program(seed, 10)
        ops = _ops(gpuad, F)

        def prog(*xs):
            values = list(xs) + [gpuad.tensor(grey)]
            for name, i, j, k in steps:
                values.append(ops[name][1](values[i % len(values)], values[j % len(values)], k))
            loss = sum(w * v.sum() for w, v in zip(weights, values[:len(weights)]))
            return [loss] + list(gpuad.autograd.grad(loss, xs, allow_unused=True))
        xs = [gpuad.tensor(v, requires_grad=True) for v in leaves]
        want, got = prog(*xs), gpuad.compile(prog)(*xs)
        for a, b in zip(got, want):
            if b is None:
                assert a is None
            else:
                # a few ulp, as the issue allows per fused op: a row reduction fused into its
                # group sums a C-ordered chunk pairwise, where eager may sum a transposed
                # intermediate along a strided axis, in order (seed 28: 1 ulp)
                a, b = a.numpy(), b.numpy()
                assert np.array_equal(np.isnan(a), np.isnan(b)), f"seed {seed}: {steps}"
                ok = ~np.isnan(b)
                np.testing.assert_array_max_ulp(a[ok], b[ok], maxulp=4)


# -- guards and errors ------------------------------------------------------------

def test_shape_change_retraces_and_repeated_retracing_warns():
    w = gpuad.tensor([1.0, 2.0], requires_grad=True)
    f = gpuad.compile(lambda x: (w * x).sum(-1))
    assert f(gpuad.ones(2)).item() == 3.0
    assert f(gpuad.ones(3, 2)).tolist() == [3.0, 3.0, 3.0]
    assert f.traces == 1
    with pytest.warns(CompileWarning, match=r"argument 0: \('T', \(4, 2\).* -> \('T', \(5, 2\)"):
        for n in range(1, RETRACE_WARN + 1):
            f(gpuad.ones(n + 3, 2))
    assert "4. argument 0" in f.explain() and f.explain().startswith("<lambda>: traced 4 times")


def test_training_mode_and_optimizer_settings_are_in_the_key():
    """Numeric settings are read at each replay (a new lr needs no retrace); whether a
    setting is zero (SGD's `if momentum:`) and the training mode are in the key."""
    m = nn.Linear(3, 2)
    opt = optim.SGD(m.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        m(x).sum().backward()
        opt.step()
    f = gpuad.compile(step)
    x = gpuad.ones(4, 3)
    f(x)
    f(x)
    opt.param_groups[0]["lr"] = 0.2
    before = m.weight.numpy().copy()
    f(x)
    np.testing.assert_allclose(m.weight.numpy(), before - 0.2 * 4, rtol=1e-6)
    assert f.traces == 0              # one trace (the first call, which made the state, ran eagerly)
    opt.param_groups[0]["momentum"] = 0.9          # zero to nonzero: another branch of the update,
    f(x)                                           # which makes a momentum buffer: its state differs
    f(x)                                           # from the next call's
    opt.param_groups[0]["momentum"] = 0.8
    f(x)
    m.eval()
    f(x)
    assert f.traces == 3 and "ran eagerly" in f.explain()


def test_item_inside_a_step_names_the_line():
    def step(x):
        if (x.sum() > 0).item():
            return x * 2
        return x
    with pytest.raises(TraceError, match=r"test_compile.py:\d+: if \(x.sum\(\) > 0\).item\(\)"):
        gpuad.compile(step)(gpuad.ones(3))
    with pytest.raises(TraceError, match="needs the value"):
        gpuad.compile(lambda x: x * 2 if x.sum() else x)(gpuad.ones(3))
    with pytest.raises(TraceError, match="numpy"):
        gpuad.compile(lambda x: x.numpy())(gpuad.ones(3))


def test_fallback_eager_traces_each_path_a_value_branch_takes():
    """(tests/test_compile_branches.py holds the rest: loops, sizes, data uses, devices.)"""
    def step(x):
        return x * 2 if x.sum() > 0 else x * 3
    f = gpuad.compile(step, fallback="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(gpuad.ones(2)).tolist() == [2.0, 2.0]
        assert f(-gpuad.ones(2)).tolist() == [-3.0, -3.0]
        assert f(gpuad.ones(2) * 4).tolist() == [8.0, 8.0]         # the first path, replayed
    assert f.traces == 1 and "another path: bool() of a tensor" in f.explain()
    with pytest.raises(TraceError, match="bool.*fallback='eager'"):
        gpuad.compile(step)(gpuad.ones(2))
    with pytest.raises(ValueError, match="fallback"):
        gpuad.compile(step, fallback="maybe")


def test_a_value_the_trace_assumed_is_checked_at_replay():
    """A replay that meets what its trace assumed otherwise runs that call eagerly, with
    one warning, from where the call started (its generator draws too)."""
    m = nn.Linear(3, 4)
    f = gpuad.compile(lambda x, y: F.cross_entropy(m(x), y))
    x = gpuad.ones(2, 3)
    f(x, gpuad.tensor([1, 2]))
    y = gpuad.tensor([1, -100])
    with pytest.warns(CompileWarning, match="ignore_index.*ran eagerly"):
        got = f(x, y)
    assert got.item() == F.cross_entropy(m(x), y).item()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # warned once
        f(x, y)


def test_a_guarded_replay_that_falls_back_draws_what_eager_draws():
    x = gpuad.tensor(np.linspace(-1, 1, 8).reshape(2, 4), requires_grad=True)

    def step(x):
        d = F.dropout(x, 0.5)
        return (gpuad.cumprod(d, 1) * x).sum(), gpuad.autograd.grad((gpuad.cumprod(x, 1) * d).sum(), x)[0]
    f = gpuad.compile(step)
    f(x)                                          # traced on a cumprod input without zeros
    z = gpuad.tensor(np.array([[0.0, 1, 2, 3], [1, 2, 3, 4]]), requires_grad=True)
    gpuad.manual_seed(7)
    want = step(z)
    gpuad.manual_seed(7)
    with pytest.warns(CompileWarning, match="zero"):
        got = f(z)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_tracing_leaves_the_state_untouched_when_it_fails():
    m = nn.Linear(3, 2)
    opt = optim.Adam(m.parameters())
    kind = type(m.weight.data)

    def step(x):
        opt.zero_grad()
        loss = m(x).sum()
        loss.backward()
        opt.step()
        if loss > 0:                          # a branch on a value: no trace can follow it
            loss = loss * 2
        return loss
    f = gpuad.compile(step)
    f(gpuad.ones(1, 3))                       # the first call runs eagerly: it makes Adam's state
    before = m.weight.numpy().copy()
    state = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in opt.state[m.weight].items()}
    grad = m.weight.grad
    with pytest.raises(TraceError, match="needs the value"):
        f(gpuad.ones(1, 3))
    assert type(m.weight.data) is kind and m.weight.grad is grad
    np.testing.assert_array_equal(m.weight.numpy(), before)
    for k, v in opt.state[m.weight].items():
        np.testing.assert_array_equal(gpuad.Tensor._from(v).numpy(), gpuad.Tensor._from(state[k]).numpy())


def test_graph_prints_one_line_per_op_with_the_planned_peak():
    f = gpuad.compile(lambda x: (x * 2.0).exp().sum())
    text = f.graph(gpuad.ones(3))
    assert text.splitlines()[0] == "{ lambda x0:f32[3] ."
    assert "fused x0" in text and "= sum" in text and "# planned peak" in text


# -- passes, each alone -------------------------------------------------------------

def _g():
    g = Graph()
    return g, g.input((1000,), np.float32, "x")


def test_dce_keeps_draws_and_what_outputs_need():
    g, x = _g()
    g.add_eqn("random_draw", ("random", (2,), np.dtype(np.float64), None), {}, (2,), np.float64)
    dead = g.add_eqn("exp", (x,), {}, x.shape, x.dtype)
    g.add_eqn("sin", (dead,), {}, x.shape, x.dtype)
    g.outputs = [g.add_eqn("cos", (x,), {}, x.shape, x.dtype)]
    assert [e.prim for e in dce.run(g).eqns] == ["random_draw", "cos"]


def test_cse_merges_equal_calls_but_not_draws_or_different_params():
    g, x = _g()
    a = g.add_eqn("sum", (x,), {"axis": 0}, (), np.float32)
    b = g.add_eqn("sum", (x,), {"axis": 0}, (), np.float32)
    c = g.add_eqn("sum", (x,), {"axis": None}, (), np.float32)
    d1 = g.add_eqn("random_draw", ("random", (2,), np.dtype(np.float64), None), {}, (2,), np.float64)
    d2 = g.add_eqn("random_draw", ("random", (2,), np.dtype(np.float64), None), {}, (2,), np.float64)
    g.outputs = [a, b, c, d1, d2]
    out = cse.run(g)
    assert len(out.eqns) == 4 and out.outputs[1] is a and out.outputs[2] is c


def test_fold_evaluates_constants_and_drops_identities_but_keeps_dtype_changes():
    g, x = _g()
    k = g.add_eqn("sqrt", (4.0,), {}, (), np.float64)
    y = g.add_eqn("multiply", (x, 1.0), {}, x.shape, x.dtype)
    z = g.add_eqn("add", (y, 0), {}, x.shape, x.dtype)
    w = g.add_eqn("multiply", (z, 1.0), {}, x.shape, np.float64)     # 1.0 here changes the dtype
    g.outputs = [g.add_eqn("add", (w, k), {}, x.shape, np.float64)]
    out = fold.run(g)
    assert [e.prim for e in out.eqns] == ["multiply", "add"]
    assert out.eqns[0].args[0] is x and out.eqns[1].args[1].value == 2.0


def test_fuse_respects_fan_out_and_closes_a_group_where_it_is_read():
    g, x = _g()
    a = g.add_eqn("exp", (x,), {}, x.shape, x.dtype)
    b = g.add_eqn("sin", (a,), {}, x.shape, x.dtype)
    s = g.add_eqn("sum", (a,), {}, (), x.dtype)                  # a read outside: an output of the group
    c = g.add_eqn("multiply", (b, s), {}, x.shape, x.dtype)      # after the sum: a new group
    g.outputs = [g.add_eqn("tanh", (c,), {}, x.shape, x.dtype)]
    out = fuse.run(g)
    assert [e.prim for e in out.eqns] == ["fused", "sum", "fused"]
    assert [o.id for o in out.eqns[0].outs] == [a.id, b.id]


def test_buffer_plan_never_overlaps_two_live_values():
    gpuad.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))
    opt = optim.Adam(m.parameters())
    x, y = gpuad.tensor(R.standard_normal((16, 32)).astype(np.float32)), gpuad.tensor(R.integers(0, 10, 16))
    f = gpuad.compile(train_step(m, opt))
    f(x, y)
    entry = f.compiled(x, y)
    plan, graph = entry.plan, entry.graph
    first, last, _ = buffers.lifetimes(graph)
    vs = list(plan.planned.values())
    assert len(vs) > 10 and plan.inplace > 0
    for i, a in enumerate(vs):
        for b in vs[i + 1:]:
            if a.dtype != b.dtype or plan.offsets[a.id] == plan.offsets[b.id] and last[a.id] == first[b.id]:
                continue
            apart = (plan.offsets[a.id] + a.nbytes <= plan.offsets[b.id] or
                     plan.offsets[b.id] + b.nbytes <= plan.offsets[a.id])
            disjoint = last[a.id] <= first[b.id] or last[b.id] <= first[a.id]
            assert apart or disjoint, (a, b)


@pytest.mark.cpu_only("a GPU replay writes nothing into its inputs before its flags are read "
                      "when it has checks; here: where the numpy executor puts an optimizer's update")
def test_an_optimizer_update_lands_in_the_parameter_and_state_arrays():
    """Adam's fused update has three outputs per parameter (the parameter, exp_avg,
    exp_avg_sq): each is written into its own array, no copy at the end, and the arrays
    are the ones eager keeps (same objects, call after call)."""
    gpuad.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    opt = optim.Adam(m.parameters(), lr=1e-2)
    x, y = gpuad.tensor(R.standard_normal((6, 8)).astype(np.float32)), gpuad.tensor(R.integers(0, 4, 6))

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        return loss
    f = gpuad.compile(step)
    f(x, y)
    f(x, y)
    plan = f.compiled(x, y).plan
    params = list(m.parameters())
    homes = {v.name[0] for v in plan.donated.values()}
    assert len(plan.donated) >= 3 * len(params) and homes == {"p", "s"}, plan.donated
    arrays = [id(p.data) for p in params] + [id(a) for p in params for a in opt.state[p].values()
                                            if hasattr(a, "shape")]
    f(x, y)
    assert arrays == [id(p.data) for p in params] + [id(a) for p in params for a in opt.state[p].values()
                                                     if hasattr(a, "shape")]


def test_a_group_output_takes_an_input_array_only_after_the_inputs_last_read():
    g, x = _g()
    y = g.input(x.shape, x.dtype, "y")
    a = g.add_eqn("multiply", (x, 2.0), {}, x.shape, x.dtype)       # an output, made before x's last read
    b = g.add_eqn("add", (a, x), {}, x.shape, x.dtype)
    c = g.add_eqn("multiply", (b, y), {}, x.shape, x.dtype)
    g.outputs = [a, c]
    k = fuse.run(g).eqns[0].params["kernel"].value
    assert not k.may_alias(a, x)           # its chunk would overwrite x before `add` reads it
    assert not k.may_alias(a, y)           # ... and y before the last multiply does
    assert k.may_alias(c, x) and k.may_alias(c, y)


def test_an_in_place_update_whose_group_also_hands_out_an_earlier_value():
    """w += 2w, with 2w also summed outside the group: the group's first output must not
    be written into w's array (w is read again after it), the final value must."""
    w = gpuad.tensor(R.standard_normal(3000))

    def step():
        with gpuad.no_grad():
            a = w * 2.0
            w.add_(a)
            return a.sum()
    want_w, want = w.numpy() * 3.0, (w.numpy() * 2.0).sum()
    f = gpuad.compile(step)
    got = f()
    np.testing.assert_allclose(got.item(), want, rtol=1e-12)
    np.testing.assert_array_equal(w.numpy(), want_w)
    want_w, want = w.numpy() * 3.0, (w.numpy() * 2.0).sum()
    np.testing.assert_allclose(f().item(), want, rtol=1e-12)                        # a replay
    np.testing.assert_array_equal(w.numpy(), want_w)


def test_attention_dropout_mask_into_a_given_array_is_the_same_mask():
    from gpuad.backends import numpy_ns
    want = numpy_ns.dropout_keep(7, 3, (4, 5), 0.3)
    out = np.full((4, 5), np.nan, np.float32)
    got = numpy_ns.dropout_keep(7, 3, (4, 5), 0.3, out=out)
    assert got is out and want.dtype == got.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.cpu_only("tracemalloc measures the host replay's allocations")
def test_planned_peak_bounds_what_a_replay_allocates():
    x = gpuad.tensor(R.standard_normal((256, 512)).astype(np.float32), requires_grad=True)
    w = gpuad.tensor(R.standard_normal((512, 512)).astype(np.float32), requires_grad=True)

    def step(x, w):
        x.grad = w.grad = None
        loss = F.gelu(x @ w).tanh().sum()
        loss.backward()
        return loss
    from gpuad.compiler.codegen.numba_groups import TIER_AFTER
    f = gpuad.compile(step)
    for _ in range(TIER_AFTER + 2):         # steady state: the pool holds last call's arena, and
        f(x, w)                             # the generated CPU kernels are compiled
    plan = f.compiled(x, w).plan
    tracemalloc.start()
    f(x, w)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The arena (from the host pool's cache: last call's, freed when this call cleared the
    # old gradients) and the scratch exist before the replay allocates anything; what it
    # allocates is the dynamic part (ops without out=), which the plan counts to the byte.
    # tracemalloc also sees Python's own objects (array headers, views, tuples): a few KB.
    # The kernels' temporaries (counted in the dynamic peak) come from the pool's cache.
    assert plan.per_call and plan.dynamic_peak > 0
    assert plan.dynamic_peak - plan.kernel_temp_bytes <= peak <= plan.dynamic_peak + 32 * 1024


@pytest.mark.cpu_only("a per-call arena is the CPU replay's (a GPU replay keeps one, for its CUDA graph)")
def test_handed_out_gradients_share_a_per_call_arena_that_the_next_call_reuses():
    step, m = _deep_mlp(layers=2, width=128, batch=256)
    f = gpuad.compile(step)
    f()
    f()
    w = next(iter(m.parameters()))
    address = lambda: w.grad.numpy().__array_interface__["data"][0]     # noqa: E731 (no reference kept)
    assert f.compiled().plan.per_call and w.grad.numpy().base is not None   # a view of the call's arena
    before = address()
    f()
    assert address() == before                                              # last call's arena, reused
    kept = w.grad.numpy()
    snapshot = kept.copy()
    f()                                                                      # the caller keeps last step's
    assert not np.shares_memory(w.grad.numpy(), kept)                       # gradient: a new arena
    np.testing.assert_array_equal(kept, snapshot)                            # and the old one is intact


def test_gpt_step_compiled_equals_eager():
    ids = np.random.default_rng(2).integers(0, 11, (2, 9))
    x, y = gpuad.tensor(ids[:, :-1]), gpuad.tensor(ids[:, 1:])
    runs = []
    for compiled in (False, True):
        gpuad.manual_seed(4)
        m = nn.GPT(11, 8, d_model=16, n_layers=2, n_heads=2)     # (attention dropout: not traced yet, raises)
        opt = optim.AdamW(m.parameters(), lr=1e-2)
        step = train_step(m, opt)
        f = gpuad.compile(lambda: step(x, y)) if compiled else (lambda: step(x, y))
        gpuad.manual_seed(9)
        runs.append(([f().item() for _ in range(3)], [p.numpy().copy() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


def _deep_mlp(layers=10, width=64, batch=1024):
    gpuad.manual_seed(0)
    mods = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.Tanh()]
    m = nn.Sequential(*mods, nn.Linear(width, 3))
    opt = optim.SGD(m.parameters(), lr=0.05)
    x = gpuad.tensor(np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32))
    y = gpuad.tensor(np.random.default_rng(1).integers(0, 3, batch))
    step = train_step(m, opt)
    return (lambda: step(x, y)), m


def test_a_budget_of_sixty_percent_of_the_peak_fits_by_recomputing_and_changes_no_result():
    step, m = _deep_mlp()
    full = gpuad.compile(step)
    full()
    peak = full.compiled().plan.peak_bytes
    step2, m2 = _deep_mlp()
    budget = int(peak * 0.6)
    half = gpuad.compile(step2, budget_bytes=budget)
    half()
    entry = half.compiled()
    assert entry.plan.peak_bytes <= budget
    assert len(entry.graph.eqns) > len(full.compiled().graph.eqns)      # it recomputes
    for _ in range(2):
        assert full().item() == half().item()
    for a, b in zip(m.parameters(), m2.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_an_infeasible_budget_names_the_least_one_that_fits():
    from gpuad.compiler.passes.remat import BudgetError
    step, _ = _deep_mlp()
    f = gpuad.compile(step, budget_bytes=1000)
    f()                                     # (the first call runs eagerly: it makes the optimizer's state)
    with pytest.raises(BudgetError, match=r"minimum feasible budget for this step is [\d,]+ B"):
        f()


def test_one_element_float64_groups_run_on_python_floats_and_fall_back_on_domain_errors():
    from bench.overhead import _chain
    x = gpuad.tensor([0.3], dtype="float64", requires_grad=True)

    def step(x):
        x.grad = None
        y = _chain(x, 200).sum()
        y.backward()
        return y
    want = step(x).item(), x.grad.item()
    f = gpuad.compile(step)
    got = f(x).item(), x.grad.item()
    np.testing.assert_allclose(got, want, rtol=1e-13)
    kernels = [e.params["kernel"].value for e in f.compiled(x).graph.eqns if e.prim == "fused"]
    assert kernels and all("falls back to" in k.source for k in kernels)
    g = gpuad.compile(lambda x: (x * 2).log().sin())
    with np.errstate(invalid="ignore"):
        assert np.isnan(g(gpuad.tensor([-1.0], dtype="float64")).item())     # math.log(-2) raises: numpy path
    assert g(gpuad.tensor([0.5], dtype="float64")).item() == 0.0


@pytest.mark.parametrize("make,loss", [
    (lambda: nn.ResNet(8, 16, 3, 3), "ce"),
    (lambda: nn.MLP([8, 16, 16, 16, 3], checkpoint="sqrt"), "ce"),
    (lambda: nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)), "mse"),
], ids=["resnet", "mlp-checkpoint-sqrt", "layernorm"])
def test_layers_compile_to_eager_bitwise(make, loss):
    rng = np.random.default_rng(0)
    x = gpuad.tensor(rng.standard_normal((6, 8)).astype(np.float32))
    y = gpuad.tensor(rng.integers(0, 3, 6)) if loss == "ce" else gpuad.tensor(rng.standard_normal((6, 8)).astype(np.float32))
    runs = []
    for compiled in (False, True):
        gpuad.manual_seed(0)
        m = make()
        opt = optim.Adam(m.parameters(), lr=1e-2)
        step = train_step(m, opt, F.cross_entropy if loss == "ce" else F.mse_loss)
        f = gpuad.compile(step) if compiled else step
        runs.append(([f(x, y).item() for _ in range(3)], [p.numpy().copy() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_dtype_requires_grad_and_a_replaced_parameter_retrace():
    lin = nn.Linear(3, 2)
    f = gpuad.compile(lambda x: lin(x).sum())
    f(gpuad.ones(2, 3))
    f(gpuad.ones(2, 3, dtype="float64").float())
    assert f.traces == 0                                       # same shape and dtype: a replay
    f(gpuad.ones(2, 3, requires_grad=True))
    assert f.traces == 1
    lin.weight = nn.Parameter(lin.weight.detach() * 2)        # a new parameter object
    new = f(gpuad.ones(2, 3)).item()
    assert f.traces == 2
    assert new == lin(gpuad.ones(2, 3)).sum().item()
    with pytest.raises(TypeError):
        f(gpuad.ones(2, 3, dtype="float64"))                  # a dtype change retraces, and the
                                                              # model's float32 weights refuse it as eager does


def test_memory_accounting_reports_a_replay():
    lin = nn.Linear(64, 64)
    x = gpuad.tensor(np.ones((32, 64), np.float32))

    def step(x):
        lin.weight.grad = lin.bias.grad = None
        loss = lin(x).tanh().sum()
        loss.backward()
        return loss
    f = gpuad.compile(step)
    f(x)
    plan = f.compiled(x).plan
    with gpuad.memory.track() as m:
        f(x)
    s = m.stats()
    read, written = f.compiled(x).traffic()
    assert s["bytes_read"] == read and s["bytes_written"] == written and read > 0
    assert s["peak_bytes"] >= plan.peak_bytes - plan.dynamic_peak + lin.weight.nbytes + lin.bias.nbytes


@pytest.mark.parametrize("shape", [(4, 8), (37, 1000), (3, 5, 9001)])
def test_row_reductions_close_fused_groups_bitwise(shape):
    x = gpuad.tensor(np.random.default_rng(5).standard_normal(shape).astype(np.float32), requires_grad=True)

    def step(x):
        x.grad = None
        y = (F.softmax(x * 1.5, dim=-1) * x).sum(-1).tanh().sum() + F.log_softmax(x, -1).mean()
        y.backward()
        return y
    want = step(x).item(), x.grad.numpy().copy()
    f = gpuad.compile(step)
    got = f(x).item(), x.grad.numpy()
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    names = [e.params["kernel"].name for e in f.compiled(x).graph.eqns if e.prim == "fused"]
    assert "{subtract,exp,sum}" in names and "{multiply,max}" in names


def test_fuse_ends_a_group_with_a_last_axis_reduction_only():
    g = Graph()
    x = g.input((8, 4), np.float32, "x")
    a = g.add_eqn("exp", (x,), {}, x.shape, x.dtype)
    rows = g.add_eqn("sum", (a,), {"axis": -1, "keepdims": True}, (8, 1), x.dtype)
    b = g.add_eqn("sin", (x,), {}, x.shape, x.dtype)
    cols = g.add_eqn("sum", (b,), {"axis": 0}, (4,), x.dtype)          # over the first axis: not fused
    g.outputs = [rows, cols]
    out = fuse.run(g)
    assert [e.prim for e in out.eqns] == ["fused", "sin", "sum"]
    assert out.eqns[0].outs == [rows]


def test_reachable_state_the_step_never_reads_is_not_fetched():
    used, unused = nn.Linear(3, 2), nn.Linear(3, 2)
    models = {"used": used, "unused": unused}
    f = gpuad.compile(lambda x: models["used"](x).sum())
    f(gpuad.ones(1, 3))
    entry = f.compiled(gpuad.ones(1, 3))
    # traced: x, both models' weights and biases (and a gradient input for each parameter,
    # to learn whether the step reads gradients); fetched: x, and used's weight and bias
    assert len(entry.cap.reads) == 9 and len(entry.reads) == 3
    assert f(gpuad.ones(1, 3)).item() == used(gpuad.ones(1, 3)).sum().item()


class _FakeGraphs:
    """A CPU stand-in for CupyGraphs: a 'graph' reruns the function and writes its
    results into the buffers captured the first time, as a CUDA graph rewrites its
    own buffers on each launch."""

    def __init__(self, fail=False):
        self.fail, self.launches = fail, 0

    def capture(self, fn, inputs):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        outs = fn([a.copy() for a in inputs])      # capturing records work, it does not do it
        return (fn, inputs, outs), outs

    def launch(self, graph):
        fn, inputs, outs = graph
        self.launches += 1
        for i, (o, n) in enumerate(zip(outs, fn(inputs))):
            if isinstance(o, np.ndarray) and o.ndim and o is not n:
                np.copyto(o, n)
            else:
                outs[i] = n             # numpy hands back 0-d results as scalars: no buffer to rewrite

    def copy(self, dst, src):
        np.copyto(dst, src)

    def clone(self, a):
        return a.copy()


def _graph_step(backend):
    from gpuad.compiler import pipeline
    from gpuad.compiler.graphs import GraphReplay
    step, m = _deep_mlp(layers=3, width=16, batch=32)
    f = gpuad.compile(step)
    f()
    entry = f.compiled()
    entry.fn = GraphReplay(entry.fn, pipeline._is_arg(entry.reads), pipeline._escapes(entry.cap, entry.out_ids),
                           backend)
    return f, m, entry


@pytest.mark.cpu_only("drives GraphReplay with its own host backend")
def test_graph_replay_captures_once_and_hands_out_copies():
    backend = _FakeGraphs()
    f, m, entry = _graph_step(backend)
    step, m_ref = _deep_mlp(layers=3, width=16, batch=32)
    step()
    losses = [f() for _ in range(4)]
    want = [step().item() for _ in range(4)]
    assert len({id(l.data) for l in losses}) == 4
    assert [l.item() for l in losses] == want                      # each loss its own array, not the graph's
    assert entry.fn.captures == 1 and backend.launches == 3
    for a, b in zip(m.parameters(), m_ref.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.cpu_only("drives GraphReplay with its own host backend")
def test_graph_replay_recaptures_when_state_is_replaced_and_falls_back_when_capture_fails():
    backend = _FakeGraphs()
    f, m, entry = _graph_step(backend)
    f()
    f()
    w = next(iter(m.parameters()))
    w.data = w.data.copy()                   # the same tensor, a new array: the graph's pointer is stale
    f()
    assert entry.fn.captures == 2
    f2, _, entry2 = _graph_step(_FakeGraphs(fail=True))
    f2()
    with pytest.warns(RuntimeWarning, match="CUDA graph failed"):
        f2()
    f2()
    assert entry2.fn.failed and entry2.fn.captures == 0
