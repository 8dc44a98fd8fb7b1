"""The planner is the walk: run on abstract arrays, it visits, routes, accumulates and
finishes hooked leaves exactly as the real backward does, on every gradcheck case.

engine/plan.py runs engine/walk.py's one loop over a twin graph of abstract arrays;
walk.observe() records what each walk does (every visit, every gradient routed to a
parent with its shape, dtype and ownership, every fan-in and where its sum went).
The two lists must be equal: any VJP whose abstract run differs from its real one
(a gradient it returns as a view on one and fresh on the other, a None on one side)
shows here.
"""
import numpy as np
import pytest

import gpuad
from gpuad import memory
from gpuad.engine import walk
from gpuad.graph import reachable
from tests.test_ops_gradcheck import planned_params


def _params():
    return planned_params()


def _events(fn, inputs, fan_out, hooked):
    gpuad.set_kernels("numpy")            # the generic VJPs (a provider's kernel has its own stand-in)
    try:
        ts = [gpuad.tensor(a, requires_grad=True) for a in inputs]
        if hooked:
            for t in ts:
                t.register_post_accumulate_grad_hook(lambda t: None)
        out = fn(*ts)
        if fan_out:
            out = out * 2.0 + out             # two gradients meet at out: fan-in accumulation
        loss = out.sum()
        nodes = reachable([loss._node])
        checkpointed = {n.index for n in nodes} if any(n.op is not None and n.op.name == "checkpoint"
                                                       for n in nodes) else None
        with walk.observe() as planned:
            memory.plan_backward(loss)
        with walk.observe() as real:
            loss.backward()
        return planned, real, checkpointed
    finally:
        gpuad.set_kernels(None)


@pytest.mark.parametrize("hooked", [False, True], ids=["plain", "hooked-leaves"])
@pytest.mark.parametrize("fan_out", [False, True], ids=["chain", "fan-in"])
@pytest.mark.parametrize("fn,inputs", list(_params()))
def test_the_planner_visits_and_routes_as_the_walk(fn, inputs, fan_out, hooked):
    planned, real, checkpointed = _events(fn, inputs, fan_out, hooked)
    if fan_out:
        assert any(e[0] == "accumulate" for e in real)
    if checkpointed is not None:
        # the planner cannot rerun a checkpointed function on sizes: its stand-in VJP hands
        # fresh gradients (checkpoint.py), and the real one walks the recomputed segment
        # too; the visits of the outer graph still agree
        planned, real = ([e for e in ev if e[0] == "visit" and e[1] in checkpointed] for ev in (planned, real))
    assert planned == real
    assert any(e[0] == "visit" for e in real)


def test_observe_sees_a_difference():
    """The comparison can fail: a walk that routes differently gives other events."""
    x = gpuad.tensor(np.ones((3, 4)), requires_grad=True)
    with walk.observe() as a:
        (x * 2.0).sum().backward()
    with walk.observe() as b:
        (x * 2.0 + x).sum().backward()
    assert a != b and any(e[0] == "accumulate" for e in b) and not any(e[0] == "accumulate" for e in a)


def test_hooked_leaves_finish_early_in_both():
    """A leaf with a post-accumulate hook is visited as soon as its last consumer has sent
    its gradient, before the rest of the walk: in the plan as in the real walk."""
    w = gpuad.tensor(np.ones((4, 4)), requires_grad=True)
    x = gpuad.tensor(np.ones((2, 4)), requires_grad=True)
    w.register_post_accumulate_grad_hook(lambda t: None)
    loss = ((x @ w).tanh() * 3.0).sum()
    with walk.observe() as planned:
        memory.plan_backward(loss)
    with walk.observe() as real:
        loss.backward()
    visits = [e[2] for e in real if e[0] == "visit"]
    assert planned == real and visits.index("leaf") < len(visits) - 1     # w before the walk ends
