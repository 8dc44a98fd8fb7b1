"""Generated source is registered with linecache: a traceback through it shows its lines.

apply()'s entries (ops/dispatch.py), the derivative table's VJPs, the node
constructor and the compiler's replays are all compiled by gpuad/generated.py.
"""
import traceback

import numpy as np
import pytest

import gpuad
from gpuad.generated import load


def _generated_frames(exc):
    return [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<gpuad ")]


def test_load_registers_the_source():
    scope = load("def f(x):\n    return 1 / x\n", "test")
    with pytest.raises(ZeroDivisionError) as e:
        scope["f"](0)
    (frame,) = _generated_frames(e.value)
    assert frame.line == "return 1 / x" and frame.filename.startswith("<gpuad test #")


def test_a_traceback_through_the_dispatch_core_and_a_vjp_shows_their_lines():
    boom = gpuad.unary("_test_boom", "x", "int('not a number')", fwd=lambda xp, x: xp.multiply(x, 1.0))
    try:
        x = gpuad.tensor([1.0, 2.0], requires_grad=True)
        y = boom(x)                                   # through the generated unary entry
        assert y.requires_grad
        with pytest.raises(ValueError) as e:
            y.sum().backward()                        # the generated VJP evaluates the derivative
        frames = _generated_frames(e.value)
        assert frames and frames[-1].filename.startswith("<gpuad derivative of _test_boom")
        assert "int('not a number')" in frames[-1].line
        boom.fwd = lambda xp, x: (_ for _ in ()).throw(RuntimeError("from the forward"))
        with pytest.raises(RuntimeError) as e:
            gpuad._test_boom(x)
        names = [f.filename for f in _generated_frames(e.value)]
        assert any(n.startswith("<gpuad dispatch unary_entry") for n in names)
        assert all(f.line for f in _generated_frames(e.value))
    finally:
        gpuad.surface.unregister("_test_boom")


def test_the_node_constructor_is_one_text():
    """new_node and apply's core are made from graph.NEW_NODE: a node made either way has
    the same fields."""
    from gpuad.graph import NEW_NODE, new_node
    a = new_node(None, (), (), None, (), (2,), np.dtype("float32"))
    b = (gpuad.tensor([1.0, 2.0], requires_grad=True) * 2)._node
    fields = [line.split("=")[0].strip()[2:] for line in NEW_NODE.strip().splitlines()[1:]]
    for f in fields:
        getattr(a, f), getattr(b, f)                  # every field set on both
    assert a.grad is None and b.grad is None and a.extra is None and b.extra is None
