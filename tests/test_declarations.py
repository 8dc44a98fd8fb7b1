"""One declaration per primitive: what it generates, its shape rule, and the
planner's prediction for every primitive, all derived from the declaration.

The same gradcheck cases as test_ops_gradcheck drive the shape-rule and
peak-prediction tests, so a new primitive (like tests/fixture_ops.py's
fixture_cube) is covered by all of them once it has a case.
"""
import numpy as np
import pytest

import gpuad
from gpuad import memory
from gpuad.ops import REGISTRY
from gpuad.backends.abstract import AbstractArray
from gpuad.ops.namespace import tensor_ns
from tests.test_ops_gradcheck import all_cases, planned_params, table_cases


def _params():
    for name, cases in all_cases().items():
        for i, (fn, inputs) in enumerate(cases):
            yield pytest.param(fn, inputs, id=f"{name}-{i}")


# --- what one declaration generates -------------------------------------------------

def test_fixture_op_gets_function_method_namespace_entry_and_cases():
    x = gpuad.tensor([1.0, -2.0], dtype="float64", requires_grad=True)
    assert gpuad.fixture_cube(x).tolist() == pytest.approx([1 / 3, -8 / 3])
    assert x.fixture_cube().tolist() == gpuad.fixture_cube(x).tolist()          # the Tensor method
    (g,) = gpuad.autograd.grad(tensor_ns.fixture_cube(x).sum(), x, create_graph=True)   # namespace entry
    assert g.tolist() == [1.0, 4.0] and g.requires_grad
    assert "fixture_cube" in table_cases()                                       # gradcheck and peak cases


def test_unregister_removes_everything_installed():
    op = gpuad.unary("_tmp_op", "x", "1.0", fwd=lambda xp, x: xp.add(x, 0.0))
    assert hasattr(gpuad, "_tmp_op") and hasattr(gpuad.Tensor, "_tmp_op") and op.name in REGISTRY
    gpuad.surface.unregister("_tmp_op")
    assert not hasattr(gpuad, "_tmp_op") and not hasattr(gpuad.Tensor, "_tmp_op") and "_tmp_op" not in REGISTRY


def test_operators_and_torch_spellings_come_from_declarations():
    a, b = gpuad.tensor([6.0]), gpuad.tensor([3.0])
    assert (a - b).item() == 3.0 and (1.0 - b).item() == -2.0 and (a / b).item() == 2.0
    assert (2.0 ** b).item() == 8.0 and (-a).item() == -6.0 and abs(-a).item() == 6.0
    assert gpuad.sub is gpuad.subtract and gpuad.div is gpuad.divide and gpuad.neg is gpuad.negative
    assert a.mul(b).item() == 18.0 and bool((a > b).all()) and gpuad.lt(b, a).item()


def test_declaration_errors_are_clear():
    with pytest.raises(ValueError, match="retain names 'z'"):
        gpuad.ops.primitive("_bad_retain", inputs=("x",), retain={"z": None})(lambda xp, x: x)
    with pytest.raises(ValueError, match="kind must be one of"):
        gpuad.ops.primitive("_bad_kind", kind="sideways")(lambda xp, x: x)
    with pytest.raises(ValueError, match="registered twice"):
        gpuad.ops.primitive("tanh")(lambda xp, x: x)
    assert "_bad_retain" not in REGISTRY and "_bad_kind" not in REGISTRY


def test_saves_follow_the_named_retain():
    assert REGISTRY["multiply"].saves((True, True)) == ("x", "y")
    assert REGISTRY["multiply"].saves((False, True)) == ("x",)
    assert REGISTRY["divide"].saves((True, False)) == ("y",)
    assert REGISTRY["linear_tanh"].saves((False, True, True)) == ("x", "out")


# --- the shape-and-dtype rule agrees with every real forward ------------------------

def _real_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, (np.generic, AbstractArray))


@pytest.mark.parametrize("fn,inputs", list(_params()))
def test_shape_rule_matches_the_forward(fn, inputs, monkeypatch):
    """Each forward, run on abstract arrays, gives the real output's shape and dtype."""
    from gpuad.backends.abstract import abstract_ns
    checked = []
    for op in list(REGISTRY.values()):
        if op.name == "checkpoint":
            continue

        def checking(xp, *arrays, _op=op, _real=op.fwd, **params):
            result = _real(xp, *arrays, **params)
            if xp.name in ("numpy", "cupy"):
                avals = [AbstractArray.like(a) if _real_array(a) else a for a in arrays]
                rule = _real(abstract_ns, *avals, **params)
                out, rule_out = (result[0], rule[0]) if _op.has_aux else (result, rule)
                out = np.asarray(out) if isinstance(out, (np.generic, float, int)) else out
                assert (rule_out.shape, rule_out.dtype) == (out.shape, out.dtype), _op.name
                checked.append(_op.name)
            return result
        monkeypatch.setattr(op, "fwd", checking)
    gpuad.set_kernels("numpy")            # the generic forward (a provider's kernel has no shape rule)
    try:
        fn(*[gpuad.tensor(a, requires_grad=True) for a in inputs])
    finally:
        gpuad.set_kernels(None)
    assert checked or "checkpoint" in fn.__code__.co_names


# --- the planner predicts the measured peak of every primitive ----------------------

def _measure(fn, inputs, fan_out):
    pool = memory.host_pool
    was, pool.enabled = pool.enabled, False       # pooled blocks are page-rounded; compare raw bytes
    try:
        with memory.track() as m:
            ts = [gpuad.tensor(a, requires_grad=True) for a in inputs]
            out = fn(*ts)
            if fan_out:
                out = out * 2.0 + out             # two gradients meet at out: fan-in accumulation
            loss = out.sum()
            predicted = memory.predict_backward_peak(loss)
            memory.reset_peak()
            loss.backward()
        return predicted, m.peak_bytes_absolute
    finally:
        pool.enabled = was


@pytest.mark.parametrize("fan_out", [False, True])
@pytest.mark.parametrize("fn,inputs", list(planned_params()))
def test_predicted_peak_equals_measured_for_every_case(fn, inputs, fan_out):
    predicted, measured = _measure(fn, inputs, fan_out)
    if fn.__name__ == "<lambda>" and "checkpoint" in fn.__code__.co_names:
        assert predicted >= measured          # a checkpoint's recompute is an upper estimate
    else:
        assert predicted == measured


@pytest.mark.parametrize("fan_out", [False, True])
@pytest.mark.parametrize("name", sorted(table_cases()))
def test_predicted_peak_equals_measured_on_large_arrays(name, fan_out):
    """Large enough (8192 elements) that gradients are donated and added in place."""
    p = REGISTRY[name]
    lo, hi = (0.2, 2.0) if p.domain == "away0" else p.domain
    x = np.random.default_rng(3).uniform(lo, hi, (64, 128))
    predicted, measured = _measure(getattr(gpuad, name), (x,), fan_out)
    assert predicted == measured
