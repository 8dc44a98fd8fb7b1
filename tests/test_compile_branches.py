"""Steps that branch on values, under gpuad.compile(fallback="eager").

Such a step is traced on the values of the call being traced; each value Python
asked for is checked at every replay; a call whose value differs takes another path,
traced once and replayed after. Every test compares with the same step run eagerly
from the same seed: bitwise, call by call, parameters and optimizer state included.
"""
import warnings

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim
from gpuad.compiler import CompileWarning, TraceError
from gpuad.compiler.compiled import MAX_PATHS, VARYING


def _twins(make, passes=None):
    """The same step built twice from the same seed: (eager, compiled, their models)."""
    gpuad.manual_seed(3)
    eager, m_e = make()
    gpuad.manual_seed(3)
    comp, m_c = make()
    return eager, gpuad.compile(comp, fallback="eager", passes=passes), m_e, m_c


def _run_both(eager, comp, calls):
    """Each call eagerly, then compiled, each from the generator state the other began at."""
    outs = []
    for args in calls:
        state = gpuad.get_rng_state()
        a = eager(*args)
        after = gpuad.get_rng_state()
        gpuad.set_rng_state(state)
        b = comp(*args)
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            x, y = (v.numpy() if isinstance(v, gpuad.Tensor) else np.asarray(v) for v in (x, y))
            np.testing.assert_array_equal(x, y)
        assert gpuad.get_rng_state() == after         # the same draws, a missed path's put back
        outs.append(a)
    return outs


def _same_params(m_e, m_c):
    for p, q in zip(m_e.parameters(), m_c.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def _batches(n, scales, seed=0):
    rng = np.random.default_rng(seed)
    return [(gpuad.tensor((rng.standard_normal((8, 4)) * scales[i % len(scales)]).astype(np.float32)),
             gpuad.tensor(rng.integers(0, 3, 8))) for i in range(n)]


def _quiet():
    w = warnings.catch_warnings()
    w.__enter__()
    warnings.simplefilter("error", CompileWarning)
    return w


def test_a_step_that_branches_on_its_loss_replays_both_paths_bitwise():
    """`if loss > t:` before backward, and an update skipped on a large loss after it: the
    optimizer's update sits before the second check, so a replay that misses must not
    have written the parameters in place (it runs the other path from where it began)."""
    def make():
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
        opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            if loss > 1.5:
                loss = loss * 0.5
            loss.backward()
            opt.step()
            if loss.item() > 3.0:              # an ItemValue compared: a branch, not data
                return loss, gpuad.zeros(())
            return loss, loss.detach() * 2
        return step, m
    eager, comp, m_e, m_c = _twins(make)
    w = _quiet()
    try:
        _run_both(eager, comp, _batches(12, (0.1, 8.0, 30.0, 0.1)))
    finally:
        w.__exit__(None, None, None)
    _same_params(m_e, m_c)
    assert 1 <= comp.traces <= 3 and "another path" in comp.explain()


@pytest.mark.parametrize("passes", [None, ("dce",)], ids=["default", "unfused"])
def test_a_path_missed_after_the_update_leaves_the_parameters_as_they_were(passes):
    """The only branch comes after opt.step(): a replay of the other path has computed the
    update when its check fails, and must not have written it into the parameters (nor
    the momentum buffers) yet. (Unfused, the update's elementwise ops would write the
    parameters' own arrays in place, were it not for the check after them.)"""
    def make():
        m = nn.Linear(4, 3)
        opt = optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            return loss * 10 if loss > 2.0 else loss
        return step, m
    eager, comp, m_e, m_c = _twins(make, passes)
    w = _quiet()
    try:
        _run_both(eager, comp, _batches(10, (0.1, 0.1, 20.0, 0.1, 20.0, 20.0)))
    finally:
        w.__exit__(None, None, None)
    _same_params(m_e, m_c)
    assert comp.traces == 1


def test_a_while_loop_on_a_value_traces_one_path_per_trip_count():
    def make():
        def halve(x):
            n = 0
            while x.abs().max() > 1:
                x = x / 2
                n += 1
            return x, gpuad.tensor(float(n))
        return halve, None
    eager, comp, _, _ = _twins(make)
    xs = [gpuad.tensor(np.array([v, -v / 3], np.float32)) for v in (3.0, 5.0, 0.5, 3.5, 0.25, 6.0, 7.0)]
    outs = _run_both(eager, comp, [(x,) for x in xs])
    assert [float(n) for _, n in outs] == [2, 3, 0, 2, 0, 3, 3]
    assert comp.traces == 2                   # three trip counts: 2, 3 and 0


def test_int_of_a_tensor_as_a_size():
    def make():
        def head_sum(x, k):
            return x[:int(k)].sum()
        return head_sum, None
    eager, comp, _, _ = _twins(make)
    x = gpuad.arange(10.0)
    _run_both(eager, comp, [(x, gpuad.tensor(k)) for k in (3, 5, 3, 5, 3)])
    assert comp.traces == 1


def test_a_value_used_as_data_runs_eagerly_once_it_keeps_changing():
    """A formatted .item() (a log line) is data: each new value is a new path, and past
    VARYING values at one line the step runs eagerly, saying why. The log is eager's."""
    logs = {}

    def make():
        log = []
        m = nn.Linear(4, 3)
        key = "eager" if "eager" not in logs else "compiled"
        logs[key] = log

        def step(x):
            loss = m(x).square().mean()
            log.append(f"{loss.item():.4f}")
            return loss
        return step, m
    eager, comp, _, _ = _twins(make)
    xs = [gpuad.full((2, 4), float(i)) for i in range(VARYING + 3)]
    with pytest.warns(CompileWarning, match="changes from call to call.*gpuad.compiler.disable"):
        _run_both(eager, comp, [(x,) for x in xs])
    assert logs["compiled"] == logs["eager"]
    assert comp.traces == VARYING


def test_a_host_copy_of_a_tensor_is_checked_whole():
    """np.asarray(t) inside the step: the replay checks the whole array it would give."""
    def make():
        def step(x, w):
            keep = np.asarray(x.detach() > 0)          # numpy code on the values
            return (w * gpuad.tensor(keep.astype(np.float32))).sum(), (x * 2).tolist()
        return step, None
    eager, comp, _, _ = _twins(make)
    w = gpuad.ones(3)
    a, b = gpuad.tensor([1.0, -1.0, 2.0]), gpuad.tensor([-1.0, 1.0, 2.0])
    _run_both(eager, comp, [(a, w), (b, w), (a, w), (b, w)])
    assert comp.traces == 1


def test_past_max_paths_the_arguments_run_eagerly():
    def make():
        def signs(x):
            out = x
            for i in range(5):
                if x[i] > 0:
                    out = out + i
            return out
        return signs, None
    eager, comp, _, _ = _twins(make)
    rng = np.random.default_rng(5)
    calls = [(gpuad.tensor(rng.standard_normal(5).astype(np.float32)),) for _ in range(40)]
    with pytest.warns(CompileWarning, match=f"{MAX_PATHS} paths are traced"):
        _run_both(eager, comp, calls)
    assert comp.traces == MAX_PATHS - 1


def test_fallback_error_refuses_a_value_and_names_the_option():
    def step(x):
        return x * 2 if x.sum() > 0 else x
    with pytest.raises(TraceError, match="bool.*fallback='eager'"):
        gpuad.compile(step)(gpuad.ones(2))
    with pytest.raises(TraceError, match="float.*fallback='eager'"):
        gpuad.compile(lambda x: x * float(x.sum()))(gpuad.ones(2))
