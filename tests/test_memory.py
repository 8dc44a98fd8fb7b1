"""The memory planner and accounting: exact bytes, release at last use, predicted peak."""
import gc
import os
import tracemalloc
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import gpuad
import gpuad.nn.functional as F
from gpuad import memory, nn
from gpuad.graph import FREED


@contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def no_pool():
    pool = memory.host_pool
    was = pool.enabled
    pool.enabled = False
    try:
        yield
    finally:
        pool.enabled = was


# --- random graphs: planner on/off and debug poisoning give identical gradients -----

UNARY = ["tanh", "sin", "exp_small", "sigmoid", "neg", "square", "relu", "reshape", "T", "sum_keep", "detach"]
BINARY = ["add", "mul", "sub", "maximum", "where"]


def _build(spec, leaves, grey, shape):
    values = list(leaves) + list(grey)
    for kind, i, j in spec:
        a, b = values[i % len(values)], values[j % len(values)]
        if kind == "tanh":
            v = a.tanh()
        elif kind == "sin":
            v = a.sin()
        elif kind == "exp_small":
            v = (a * 0.1).exp()
        elif kind == "sigmoid":
            v = a.sigmoid()
        elif kind == "neg":
            v = -a
        elif kind == "square":
            v = a * a
        elif kind == "relu":
            v = (a + 0.05).relu()
        elif kind == "reshape":
            v = a.reshape(-1).reshape(shape)
        elif kind == "T":
            v = a.T.T
        elif kind == "sum_keep":
            v = a.sum(axis=0, keepdims=True) + a
        elif kind == "detach":
            v = a.detach() * 2.0
        elif kind == "add":
            v = a + b
        elif kind == "mul":
            v = a * b
        elif kind == "sub":
            v = a - b
        elif kind == "maximum":
            v = gpuad.maximum(a, b)
        else:
            v = gpuad.where(a.data > 0, a, b)
        values.append(v)
    out = values[-1]
    for v in values[:-1]:
        out = out + v * 0.5                 # every value feeds the loss: lots of fan-in, never GREY
    return out.sum()


def _grads(spec, arrays, grey_arrays, shape):
    leaves = [gpuad.tensor(a, requires_grad=True) for a in arrays]
    grey = [gpuad.tensor(a) for a in grey_arrays]
    loss = _build(spec, leaves, grey, shape)
    loss.backward()
    return [x.grad.numpy().copy() if x.grad is not None else None for x in leaves]


op_spec = st.tuples(st.sampled_from(UNARY + BINARY), st.integers(0, 50), st.integers(0, 50))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(op_spec, min_size=2, max_size=40), n_leaves=st.integers(1, 3),
       n_grey=st.integers(0, 2), big=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_planner_on_off_and_debug_give_identical_gradients(spec, n_leaves, n_grey, big, seed):
    shape = (64, 80) if big else (3, 4)      # big: the in-place and donation paths run
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for _ in range(n_leaves)]
    grey = [rng.standard_normal(shape) for _ in range(n_grey)]
    planned = _grads(spec, arrays, grey, shape)
    with env(GPUAD_NO_PLANNER="1"):
        unplanned = _grads(spec, arrays, grey, shape)
    with env(GPUAD_DEBUG="1"):
        debugged = _grads(spec, arrays, grey, shape)
    for a, b, c in zip(planned, unplanned, debugged):
        if a is None:
            assert b is None and c is None
            continue
        assert not np.isnan(c).any(), "a released buffer was read after GPUAD_DEBUG poisoned it"
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_poison_if_dead_fills_only_unreferenced_buffers():
    from gpuad.engine.walk import poison_if_dead
    a = np.ones(10)
    poison_if_dead(a, extra_refs=2)            # held by `a` here and by the argument
    assert np.isnan(a).all()
    b = np.ones(10)
    keep = b                                   # noqa: F841  (a second holder)
    poison_if_dead(b, extra_refs=2)
    assert not np.isnan(b).any()
    base = np.ones(20)
    view = base[:10]
    poison_if_dead(view, extra_refs=2)         # the base is held elsewhere: not dead
    assert not np.isnan(base).any()


@pytest.mark.cpu_only("the host pool's poisoning of freed numpy blocks")
def test_debug_poisons_released_buffers_before_they_return_to_the_pool():
    """With GPUAD_DEBUG=1, saved activations the graph released come back to the pool as NaN."""
    pool = memory.host_pool
    pool.empty_cache()
    gpuad.manual_seed(0)
    lin = nn.Linear(128, 128, activation="tanh")
    x = gpuad.tensor(np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32))
    n = 256 * 128 * 4                          # over the pool's 64 KiB threshold
    with env(GPUAD_DEBUG="1"):
        loss = lin(lin(lin(x))).sum()
        loss.backward()
    del loss
    blocks = [raw[(-raw.ctypes.data) % 64:][:n].view(np.float32) for raw in pool.free.get(n, [])]
    assert any(np.isnan(b).all() for b in blocks)


# --- release at last use ---------------------------------------------------------

def test_saved_values_are_released_after_their_node():
    x = gpuad.tensor(np.ones((100, 100)), requires_grad=True)
    a = x.sin()
    b = a.tanh()
    loss = b.sum()
    seen = []
    a.register_hook(lambda g: seen.append((a._node.saved is FREED, b._node.saved is FREED)))
    loss.backward()
    assert seen == [(False, True)]       # when a's gradient is complete, b's node has released


def test_released_value_error_names_the_op_and_values():
    x = gpuad.tensor(np.ones(3), requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"node #\d+ \(\w+\) already released its saved values"):
        y.backward()


def test_graph_holds_no_unsaved_forward_value():
    x = gpuad.tensor(np.ones((50, 50)), requires_grad=True)
    h = x * 2.0           # multiply by a constant saves nothing of x or h
    ref = h.data
    y = h.sum()
    del h
    gc.collect()
    import sys
    assert sys.getrefcount(ref) == 2      # only `ref` here: the graph does not keep it
    y.backward()


def test_chain_backward_reuses_gradient_buffers():
    """Donation: a chain of big unary ops writes each gradient into the previous one."""
    x = gpuad.tensor(np.random.default_rng(0).standard_normal((64, 80)), requires_grad=True)
    y = x
    for _ in range(10):
        y = y.sin().tanh()
    loss = (y * 1.0).sum()
    with memory.track() as m:
        loss.backward()
    ops = m.by_op()
    fresh = sum(d["allocations"] for name, d in ops.items() if name.endswith("(backward)"))
    assert fresh <= 2, ops           # the first fresh gradient, then the rest reuse it


# --- accounting --------------------------------------------------------------------

def _mlp_step(net, x, y):
    loss = F.mse_loss(net(x), y)
    loss.backward()
    return loss


@pytest.mark.cpu_only("tracemalloc measures host memory")
@pytest.mark.parametrize("depth", [2, 5])
def test_accounting_agrees_with_tracemalloc(depth):
    rng = np.random.default_rng(depth)
    with no_pool():
        net = nn.MLP([256] * (depth + 1), activation="tanh")
        x = gpuad.tensor(rng.standard_normal((512, 256)).astype(np.float32))
        y = gpuad.tensor(rng.standard_normal((512, 256)).astype(np.float32))
        _mlp_step(net, x, y)
        net.zero_grad()
        gc.collect()
        with memory.track() as m:
            tracemalloc.start()          # inside: the region's own bookkeeping is not a buffer
            loss = _mlp_step(net, x, y)
            cur, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        s = m.stats()
        del loss
    assert s["peak_bytes"] == pytest.approx(peak, rel=0.05)
    assert s["live_bytes"] == pytest.approx(cur, rel=0.05)


@pytest.mark.cpu_only("tracemalloc measures host memory")
@pytest.mark.parametrize("make", ["tensor", "zeros", "randn", "astype", "clone"])
def test_accounting_counts_leaves_too(make):
    """Every buffer gpuad allocates counts, the leaves a program starts from included."""
    data = np.random.default_rng(0).standard_normal((256, 256))
    with no_pool():
        gc.collect()
        with memory.track() as m:
            tracemalloc.start()
            if make == "tensor":
                x = gpuad.tensor(data, requires_grad=True)          # a copy, as torch.tensor makes
            elif make == "zeros":
                x = gpuad.zeros(256, 256, dtype="float64", requires_grad=True)
            elif make == "randn":
                x = gpuad.randn(256, 256, dtype="float64", requires_grad=True)
            elif make == "astype":
                x = gpuad.from_numpy(data).astype("float32")
            else:
                x = gpuad.from_numpy(data).clone()
            # (VJPs here write no full-size temporaries: those are not counted, see the README)
            y = ((x * 2.0) * x).sum()
            if x.requires_grad:
                y.backward()
            cur, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        s = m.stats()
    assert s["live_bytes"] == pytest.approx(cur, rel=0.05)
    assert s["peak_bytes"] == pytest.approx(peak, rel=0.05)


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_predicted_peak_matches_measured(depth):
    rng = np.random.default_rng(depth)
    net = nn.MLP([200] * (depth + 1), activation="tanh", output_activation="tanh")
    x = gpuad.tensor(rng.standard_normal((128, 200)).astype(np.float32))
    y = gpuad.tensor(np.zeros((128, 200), np.float32))
    for planner in ("0", "1"):
        net.zero_grad()
        with env(GPUAD_NO_PLANNER=planner):
            with memory.track() as m:
                loss = F.mse_loss(net(x), y)
                predicted = memory.predict_backward_peak(loss)
                loss.backward()
        assert predicted == pytest.approx(m.peak_bytes_absolute, rel=0.02), planner


def test_planner_lowers_the_peak():
    rng = np.random.default_rng(0)
    net = nn.MLP([256] * 9, activation="tanh")
    x = gpuad.tensor(rng.standard_normal((256, 256)).astype(np.float32))
    y = gpuad.tensor(np.zeros((256, 10 * 0 + 256), np.float32))
    peaks = {}
    for planner in ("0", "1"):
        net.zero_grad()
        with env(GPUAD_NO_PLANNER=planner):
            with memory.track() as m:
                F.mse_loss(net(x), y).backward()
        peaks[planner] = m.stats()["peak_bytes"]
    assert peaks["0"] < peaks["1"]           # planner on ("NO_PLANNER=0") peaks lower


def test_timeline_returns_to_callers_live_bytes():
    rng = np.random.default_rng(1)
    net = nn.MLP([128] * 4, activation="tanh")
    x = gpuad.tensor(rng.standard_normal((64, 128)).astype(np.float32))
    net.zero_grad()
    params_grads = sum(p.nbytes for p in net.parameters())
    with memory.timeline() as m:
        loss = net(x).sum()
        loss.backward()
        del loss
    phases = [p for p, _, _ in m.timeline]
    assert "forward" in phases and "backward" in phases
    assert m.stats()["live_bytes"] == params_grads   # only the parameter gradients stay


def test_exception_in_backward_keeps_accounting_consistent():
    x = gpuad.tensor(np.ones((100, 100)), requires_grad=True)
    with memory.track() as m:
        y = x.sin()
        z = y.exp()

        def boom(g):
            raise RuntimeError("boom")
        y.register_hook(boom)
        with pytest.raises(RuntimeError):
            z.sum().backward()
        del y, z
        gc.collect()
    assert m.stats()["live_bytes"] == 0


def test_views_are_free_and_stats_fields():
    x = gpuad.tensor(np.ones((100, 100), np.float32), requires_grad=True)
    with memory.track() as m:
        y = x * 2.0
        v = y.reshape(-1)
        t = y.T
    s = m.stats()
    assert s["allocations"] == 1 and s["live_bytes"] == 40000
    assert s["bytes_read"] == 40000 and s["bytes_written"] == 40000
    assert set(m.by_op()) == {"multiply", "reshape", "transpose"}
    assert m.by_op()["reshape"]["allocations"] == 0
    del v, t
    g = memory.stats()
    assert {"live_bytes", "peak_bytes", "bytes_read", "bytes_written", "allocations"} <= set(g)


def test_reset_peak():
    memory.enable()
    try:
        a = gpuad.tensor(np.ones(1000)) * 2.0
        del a
        memory.reset_peak()
        assert memory.stats()["peak_bytes"] == memory.stats()["live_bytes"]
    finally:
        memory.disable()


def test_predict_needs_accounting():
    x = gpuad.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="accounting is off"):
        memory.predict_backward_peak((x * 2).sum())


def test_host_pool_reuses_blocks():
    pool = memory.host_pool
    a = pool.empty((256, 256), np.float32)
    hits = pool.hits
    addr = a.ctypes.data
    del a
    b = pool.empty((256, 256), np.float32)
    assert pool.hits == hits + 1 and b.ctypes.data == addr and b.ctypes.data % 64 == 0
    v = b[1:]
    del b
    c = pool.empty((256, 256), np.float32)
    assert c.ctypes.data != v.ctypes.data - 1024    # a live view keeps its block out of the pool


def test_device_ledger_ignores_failed_allocations_and_untracked_frees():
    from gpuad.memory.accounting import Accountant
    a = Accountant()
    a.device_free(0xbeef)                      # allocated before counting started
    a.device_alloc(0, 1 << 30)                 # CuPy reports a failed allocation with ptr 0
    assert a.device_live_bytes == 0 and a.device_peak_bytes == 0
    a.device_alloc(0x1000, 512)
    a.device_alloc(0x2000, 256)
    a.device_free(0x1000)
    a.device_free(0x1000)                      # twice: counted once
    assert a.device_live_bytes == 256 and a.device_peak_bytes == 768
