"""Everyday training steps under gpuad.compile: one trace, eager's numbers bitwise.

Each step uses what a PyTorch user's loop does: dropout (SDPA's too), an optimizer
with a learning-rate schedule stepped between calls, gradient clipping, a metric
built from argmax/topk, and numbers returned with .item(). The compiled run must
trace once (its first call, which makes the optimizer's state, runs eagerly), give
eager's losses and metrics bitwise from the same seed, and leave the same
parameters.
"""
import contextlib
import math

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim
from gpuad.compiler import TraceError
from tests.device_plugin import DEVICE


def _ids(rng, b, t, v):
    ids = rng.integers(0, v, (b, t + 1))
    return gpuad.tensor(ids[:, :-1]), gpuad.tensor(ids[:, 1:])


def gpt_adamw_lambda_clip():
    V, T = 32, 16
    x, y = _ids(np.random.default_rng(1), 4, T, V)
    m = nn.GPT(V, T, 32, 2, 4, dropout=0.1)
    opt = optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
    sched = optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3) * 0.5 * (1 + math.cos(s / 10)))

    def step():
        opt.zero_grad()
        logits = m(x).reshape(-1, V)
        loss = F.cross_entropy(logits, y.reshape(-1))
        loss.backward()
        norm = nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        opt.step()
        acc = (logits.argmax(-1) == y.reshape(-1)).float().mean()
        return loss, acc.item(), norm
    return step, sched, m


def mlp_sgd_nesterov_step_clip_value():
    rng = np.random.default_rng(2)
    x = gpuad.tensor(rng.standard_normal((32, 8)).astype(np.float32))
    y = gpuad.tensor(rng.integers(0, 5, 32))
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 5))
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def step():
        opt.zero_grad()
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        nn.utils.clip_grad_value_(m.parameters(), 0.1)
        opt.step()
        top2 = gpuad.topk(logits, 2, dim=-1).indices
        hit = (top2 == y.reshape(-1, 1)).any(-1).float().mean()
        return loss.item(), hit
    return step, sched, m


def embed_norm_adam_cosine_smoothing():
    V, D = 20, 16
    x, y = _ids(np.random.default_rng(3), 6, 8, V)
    emb, norm, head = nn.Embedding(V, D), nn.LayerNorm(D), nn.Linear(D, V)
    ps = list(emb.parameters()) + list(norm.parameters()) + list(head.parameters())
    opt = optim.Adam(ps, lr=3e-3, betas=(0.8, 0.95))
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)

    def step():
        opt.zero_grad()
        h = F.dropout(norm(emb(x)), 0.1)
        logits = head(h).reshape(-1, V)
        loss = F.cross_entropy(logits, y.reshape(-1), label_smoothing=0.1)
        loss.backward()
        opt.step()
        pred = gpuad.sort(logits, dim=-1, descending=True).indices[:, 0]
        return loss, (pred == y.reshape(-1)).sum().item()
    return step, sched, ps


STEPS = [gpt_adamw_lambda_clip, mlp_sgd_nesterov_step_clip_value, embed_norm_adam_cosine_smoothing]


def _numbers(out):
    return [o.numpy() if hasattr(o, "numpy") else o for o in out]


def _run(make, compiled, n=6):
    gpuad.manual_seed(11)
    step, sched, model = make()
    f = gpuad.compile(step) if compiled else step
    outs = []
    for _ in range(n):
        outs.append(_numbers(f()))
        sched.step()
    params = [p.numpy() for p in (model.parameters() if hasattr(model, "parameters") else model)]
    return outs, params, f, gpuad.randn(3).tolist()        # and where the generator stands


@pytest.mark.parametrize("make", STEPS, ids=[s.__name__ for s in STEPS])
def test_an_everyday_step_traces_once_and_equals_eager_bitwise(make):
    want, want_params, _, want_next = _run(make, False)
    got, got_params, f, got_next = _run(make, True)
    assert f.traces == 0 and f.warmed_up and len(f.history) == 1, f.explain()
    _captured_whole(f)
    for a, b in zip(want, got):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
            assert type(u) is type(v)                 # .item() numbers come back as numbers
    for u, v in zip(want_params, got_params):
        np.testing.assert_array_equal(u, v)
    assert got_next == want_next
    # where groups are Triton kernels (a device), every linear layer's bias and activation
    # run in the matmul's kernel (passes/epilogue.py); the numpy executor keeps them apart
    epilogues = f.graph().count("kernel=matmul{")
    assert epilogues >= 1 if DEVICE == "cuda-standin" else epilogues == 0


OPS = {
    "argmax": lambda x, w: (x * w).argmax(-1),
    "argmin": lambda x, w: gpuad.argmin(x * w, dim=1),
    "max(dim)": lambda x, w: (x * w).max(dim=1),
    "min(dim)": lambda x, w: (x * w).min(1).values.sum(),
    "topk": lambda x, w: gpuad.topk(x * w, 3, dim=-1),
    "sort": lambda x, w: gpuad.sort(x * w, dim=-1, descending=True),
    "argsort": lambda x, w: gpuad.argsort(x * w, dim=-1),
    "multinomial": lambda x, w: gpuad.multinomial((x * w).softmax(-1), 2),
    "multinomial, replacement": lambda x, w: gpuad.multinomial((x * w).softmax(-1), 4, replacement=True),
    "randint": lambda x, w: gpuad.randint(0, 5, (3,)) + (x * w).argmax(),
    "randn, rand": lambda x, w: gpuad.randn(3) + gpuad.rand(3) + w.sum(),
    "one_hot": lambda x, w: F.one_hot((x * w).argmax(-1), 6),
    "dropout": lambda x, w: F.dropout(x * w, 0.5),
    "sdpa dropout": lambda x, w: F.scaled_dot_product_attention(
        x.reshape(1, 4, 6), w.reshape(1, 4, 6), x.reshape(1, 4, 6), dropout_p=0.3),
    "item": lambda x, w: ((x * w).sum().item(), (x * w).max().item() * 2 - 1),
    "clip_grad_norm_": None,
}


def _clip_step(x, w):
    w.grad = None
    (x * w).sum().backward()
    return nn.utils.clip_grad_norm_([w], 0.1), w.grad


OPS["clip_grad_norm_"] = _clip_step


@pytest.mark.parametrize("name", list(OPS))
def test_these_trace_and_replay_as_eager(name):
    fn = OPS[name]
    rng = np.random.default_rng(0)
    x = gpuad.tensor(rng.standard_normal((4, 6)).astype(np.float32))
    w = gpuad.tensor(rng.standard_normal((4, 6)).astype(np.float32), requires_grad=True)
    f = gpuad.compile(fn)
    for _ in range(3):
        gpuad.manual_seed(5)
        want = fn(x, w)
        want_next = gpuad.rand(2).tolist()
        gpuad.manual_seed(5)
        got = f(x, w)
        assert gpuad.rand(2).tolist() == want_next            # draws consumed in eager's order
        for u, v in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            np.testing.assert_array_equal(_numbers([u])[0], _numbers([v])[0])
    assert f.traces == 0
    _captured_whole(f)


def _captured_whole(f):
    """On a device, the replay ran as one CUDA graph: no host read inside it (a draw's
    value, a dropout seed) made the capture fail."""
    for entries in list(f.cache.values()) + list(f.any_grads.values()):
        for e in entries:
            assert not getattr(e.fn, "failed", False), "the CUDA-graph capture failed"


@pytest.mark.cpu_only("a host 0-d array as the lr of device parameters: eager's update refuses the numpy "
                     "operand there, as CuPy does")
def test_a_scheduler_and_a_setting_change_need_no_retrace():
    w = gpuad.tensor([1.0, -2.0], requires_grad=True)
    lr = np.array(0.5)                                          # a 0-d array setting: read in place
    opt = optim.SGD([w], lr=lr)

    def step():
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()
    f = gpuad.compile(step)
    f()
    before = w.numpy().copy()
    lr[...] = 0.25
    f()
    np.testing.assert_allclose(w.numpy(), before - 0.25 * 2 * before, rtol=1e-6)
    assert f.traces == 0
    opt.param_groups[0]["lr"] = 0.1                             # now a float: a new kind of setting
    before = w.numpy().copy()
    f()
    np.testing.assert_allclose(w.numpy(), before - 0.1 * 2 * before, rtol=1e-6)
    opt.param_groups[0]["lr"] = 0.05                            # another value: the same trace
    before = w.numpy().copy()
    f()
    np.testing.assert_allclose(w.numpy(), before - 0.05 * 2 * before, rtol=1e-6)
    assert f.traces == 1 and "setting 'lr'" in f.explain()


def test_a_step_that_changes_a_setting_is_refused():
    w = gpuad.tensor([1.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.5, momentum=0.9)
    sched = optim.lr_scheduler.StepLR(opt, 1)

    def step():
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()
        sched.step()                                            # inside: its Python counter can't replay
    f = gpuad.compile(step)
    f()
    with pytest.raises(TraceError, match="scheduler"):
        f()


def test_clip_grad_norm_error_if_nonfinite_raises_as_eager():
    w = gpuad.tensor([1.0, 2.0], requires_grad=True)
    scale = gpuad.tensor([1.0, 1.0])

    def step(s):
        w.grad = None
        (w * s).sum().backward()
        return nn.utils.clip_grad_norm_([w], 1.0, error_if_nonfinite=True)
    f = gpuad.compile(step)
    f(scale)
    f(scale)
    with pytest.raises(RuntimeError, match="not finite"), pytest.warns(gpuad.compiler.CompileWarning):
        f(gpuad.tensor([np.inf, 1.0]))
    assert w.grad.numpy()[0] == np.inf                          # raised before clipping, as eager


def test_item_values_refuse_branches_and_formatting():
    f = gpuad.compile(lambda x: 1 if x.sum().item() > 0 else 0)
    with pytest.raises(TraceError, match="needs the value"):
        f(gpuad.ones(3))
    g = gpuad.compile(lambda x: f"{x.sum().item():.2f}")
    with pytest.raises(TraceError, match="formatting"):
        g(gpuad.ones(3))


@pytest.mark.cpu_only("the retrace warning's text, once")
def test_explain_names_what_changed():
    f = gpuad.compile(lambda x: x * 2)
    f(gpuad.ones(2))
    f(gpuad.ones(3))
    with pytest.warns(gpuad.compiler.CompileWarning, match=r"argument 0: .*\(3,\).* -> .*\(4,\)"):
        f(gpuad.ones(4))
    text = f.explain()
    assert text.splitlines()[0] == "<lambda>: traced 3 times" and "2. argument 0" in text


def test_a_disabled_function_runs_eagerly_on_the_values_at_each_call():
    """gpuad.compiler.disable: the part of a step that cannot trace (formatting .item()s
    to log them) runs at each call, on that call's values, in the step's order."""
    log = []
    w = gpuad.tensor([1.0, 2.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.1)

    @gpuad.compiler.disable
    def report(loss, grad, step=None):
        log.append(f"{step}: loss {loss.item():.4f} grad {grad.numpy().tolist()}")

    def step():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        report(loss, w.grad, step="s")
        opt.step()
        return loss
    f = gpuad.compile(step)
    want = []
    w2 = gpuad.tensor([1.0, 2.0], requires_grad=True)
    for _ in range(4):
        f()
        loss = (w2 * w2).sum()
        want.append(f"s: loss {loss.item():.4f} grad {(2 * w2).numpy().tolist()}")
        with gpuad.no_grad():
            w2 -= 0.1 * (2 * w2)
    assert log == want and f.traces == 0
    np.testing.assert_array_equal(w.numpy(), w2.numpy())


@pytest.mark.parametrize("keep", ["append", "attribute"])
def test_a_value_kept_outside_the_step_is_refused_and_eager_fallback_matches(keep):
    """`history.append(loss.item())` or `self.last = out` inside a compiled step would
    store only the trace's value (a replay runs no Python): refused, naming what to do;
    with fallback="eager" the calls run eagerly and the list holds eager's numbers."""
    def make():
        m = nn.Linear(4, 3)
        opt = optim.SGD(m.parameters(), lr=0.1)
        held = {"history": [], "last": None}

        def step(x):
            opt.zero_grad()
            out = m(x)
            loss = out.square().mean()
            loss.backward()
            opt.step()
            if keep == "append":
                held["history"].append(loss.item())
            else:
                held["last"] = out.detach()
            return loss
        return step, held
    xs = [gpuad.full((2, 4), float(i)) for i in range(4)]
    step, _ = make()
    f = gpuad.compile(step)
    f(xs[0])                              # (the first call of a training step runs eagerly)
    with pytest.raises(TraceError, match="kept a .* outside it.*Return it.*gpuad.compiler.disable"):
        f(xs[1])
    runs = []
    for compiled in (False, True):
        gpuad.manual_seed(0)
        step, held = make()
        f = gpuad.compile(step, fallback="eager") if compiled else step
        with pytest.warns() if compiled else contextlib.nullcontext():
            losses = [f(x).item() for x in xs]
        runs.append((losses, held["history"], None if held["last"] is None else held["last"].numpy()))
    assert runs[0][:2] == runs[1][:2]
    if keep == "attribute":
        np.testing.assert_array_equal(runs[0][2], runs[1][2])
