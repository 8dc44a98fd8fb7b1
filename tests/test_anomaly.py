"""Anomaly mode: backward stops at the first VJP with a NaN or an infinity, names the op and
the user's forward line; off, it records nothing; torch's function/context-manager forms."""
import warnings

import numpy as np
import pytest

import gpuad
from gpuad.engine import anomaly


def _model(x):
    h = x * 2.0
    return gpuad.sqrt(h).sum()          # the line the error must show


def test_backward_raises_at_the_op_and_shows_the_forward_line():
    x = gpuad.tensor([0.0, 2.0], requires_grad=True)
    with warnings.catch_warnings(), gpuad.autograd.detect_anomaly():
        warnings.simplefilter("ignore")
        y = _model(x)
        with pytest.raises(RuntimeError) as e:
            y.backward()
    msg = str(e.value)
    assert msg.startswith("gpuad: backward of sqrt (node #") and "returned inf values in its 0th output" in msg
    assert "return gpuad.sqrt(h).sum()          # the line the error must show" in msg
    assert "in _model" in msg and "test_anomaly.py" in msg
    assert x.grad is None                      # stopped before reaching the leaf


def test_nan_from_inf_times_zero_is_named_and_check_nan_false_lets_it_through():
    x = gpuad.tensor([0.0], requires_grad=True)
    with gpuad.autograd.set_detect_anomaly(True):
        y = gpuad.sqrt(x) * 0.0
        with pytest.raises(RuntimeError, match="backward of sqrt .* returned nan values"):
            y.sum().backward()
    with gpuad.autograd.set_detect_anomaly(True, check_nan=False):
        assert gpuad.autograd.is_anomaly_enabled() and not gpuad.autograd.is_anomaly_check_nan_enabled()
        (gpuad.sqrt(x) * 0.0).sum().backward()
        assert np.isnan(x.grad.numpy()).all()


def test_off_records_nothing_and_the_plain_path_is_unchanged():
    assert not gpuad.autograd.is_anomaly_enabled()
    from gpuad import graph
    from gpuad.ops import dispatch
    assert dispatch._next_index is graph.index_source() and graph._next_index is graph.index_source()
    x = gpuad.tensor([4.0], requires_grad=True)
    gpuad.sqrt(x).sum().backward()
    assert anomaly.SITES == {}
    with gpuad.autograd.set_detect_anomaly(True):
        gpuad.sqrt(x).sum()
        assert len(anomaly.SITES) == 2 and dispatch._next_index is not graph.index_source()
    assert anomaly.SITES == {} and dispatch._next_index is graph.index_source()


def test_function_form_nesting_decorator_and_warning():
    gpuad.autograd.set_detect_anomaly(True)
    try:
        assert gpuad.autograd.is_anomaly_enabled()
        with gpuad.autograd.set_detect_anomaly(False):
            assert not gpuad.autograd.is_anomaly_enabled()
        assert gpuad.autograd.is_anomaly_enabled()
    finally:
        gpuad.autograd.set_detect_anomaly(False)
    assert not gpuad.autograd.is_anomaly_enabled()

    @gpuad.autograd.detect_anomaly()
    def step(x):
        assert gpuad.autograd.is_anomaly_enabled()
        gpuad.log(x).sum().backward()
    x = gpuad.tensor([0.0], requires_grad=True)
    with pytest.warns(UserWarning, match="anomaly detection is on"):
        with pytest.raises(RuntimeError, match="backward of log"):
            step(x)
    assert not gpuad.autograd.is_anomaly_enabled()


def test_finite_backward_in_anomaly_mode_gives_the_same_gradients():
    w = gpuad.tensor(np.random.default_rng(0).standard_normal((4, 3)), requires_grad=True)
    x = gpuad.tensor(np.random.default_rng(1).standard_normal((5, 4)))
    gpuad.tanh(x @ w).sum().backward()
    want = w.grad.numpy().copy()
    w.grad = None
    with gpuad.autograd.set_detect_anomaly(True):
        gpuad.tanh(x @ w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), want)


def test_torch_names_the_same_op():
    torch = pytest.importorskip("torch")
    x = torch.tensor([0.0], requires_grad=True)
    with warnings.catch_warnings(), torch.autograd.detect_anomaly():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="SqrtBackward"):
            (torch.sqrt(x) * 0.0).sum().backward()
