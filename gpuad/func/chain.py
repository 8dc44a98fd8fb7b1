"""The Jacobian of a chain of maps, formed in the order the matrix-chain program chooses.

A chain x -> f1 -> f2 -> ... -> fL has Jacobian J = J_L ... J_1. Forward mode
forms it left to right (cost ~ n0 passes), reverse mode right to left (~ nL
passes); where the widths narrow in the middle, a split beats both. chain_plan
is the dynamic program that picks (the lecture: reverse mode is optimal only
when widths shrink toward the output).

>>> chain_plan([4, 1, 4], [8, 8])[1]
('split', 1, ('reverse', 0, 1), ('forward', 1, 2))
"""
import weakref

import numpy as np

from ..graph import no_grad
from ..tensor import Tensor
from .jacobians import jacfwd, jacrev
from .structure import ChainPlan, evaluate, plan_by_structure


def chain_plan(dims, costs):
    """The cheapest way to form J = J_L ... J_1 for a chain with widths dims = [n0, ..., nL]
    and per-layer costs (the FLOPs of one pass through layer i, forward or backward).

    A segment of layers (i, j] is formed directly by forward mode (n_i jvps through it)
    or reverse mode (n_j vjps), or split at m and multiplied (n_j n_m n_i multiply-adds),
    the split chosen by the matrix-chain dynamic program (Cormen et al. 15.2; the lecture:
    reverse mode is optimal only when widths shrink toward the output). Returns (cost,
    plan), plan = ("forward"|"reverse", i, j) or ("split", m, left, right).

    >>> chain_plan([512, 8, 512], [512 * 8, 8 * 512])[1]
    ('split', 1, ('reverse', 0, 1), ('forward', 1, 2))
    """
    L = len(dims) - 1
    pre = [0]
    for c in costs:
        pre.append(pre[-1] + c)
    best = {}
    for length in range(1, L + 1):
        for i in range(0, L - length + 1):
            j = i + length
            seg = pre[j] - pre[i]
            fwd, rev = dims[i] * seg, dims[j] * seg
            choice = (fwd, ("forward", i, j)) if fwd <= rev else (rev, ("reverse", i, j))
            for m in range(i + 1, j):
                c = best[(i, m)][0] + best[(m, j)][0] + dims[j] * dims[m] * dims[i]
                if c < choice[0]:
                    choice = (c, ("split", m, best[(i, m)][1], best[(m, j)][1]))
            best[(i, j)] = choice
    return best[(0, L)]


def _layer_cost(layer, x, y):
    """FLOPs of one pass through a layer: 2 n_in n_out for a dense map (its weight
    matrices' sizes when it has parameters), else the elements it touches."""
    params = [p for p in getattr(layer, "parameters", lambda: [])() if p.ndim == 2]
    if params:
        return sum(2 * int(np.prod(p.shape)) for p in params)
    return int(np.prod(x.shape)) + int(np.prod(y.shape))


def jacobian(f, x, mode="auto", return_plan=False):
    """The Jacobian d f(x) / d x, as an (f(x).size, x.size) matrix.

    f: a function, or a chain of maps (a list of callables or an nn.Sequential). For a
    chain, mode="auto" records each layer's width once, n0 -> n1 -> ... -> nL, and forms
    J = J_L ... J_1 in the order chain_plan chooses: forward, reverse, or mixed, split
    where the matrix-chain program puts the product. For a plain function, auto mode
    traces it once and finds the chain itself: the values every path from input to
    output crosses (structure.py), with their widths; plan.cuts lists them. A function
    with no such cut gets the cheaper of the two fixed modes. mode="forward"|"reverse"
    forces one. return_plan=True also returns (plan, its modelled cost in FLOPs).

    >>> import gpuad
    >>> J, (plan, cost) = gpuad.jacobian([lambda x: x * 2, gpuad.sin], gpuad.zeros(3), return_plan=True)
    >>> J.shape, plan[0]
    ((3, 3), 'forward')
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"gpuad.jacobian: mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    layers = list(f) if isinstance(f, (list, tuple)) or type(f).__name__ == "Sequential" else [f]
    if mode == "auto" and len(layers) == 1:
        found = _by_structure(f, x)
        if found is not None:
            dims, costs, segments, cuts, values = found
            cost, plan = chain_plan(dims, costs)
            plan = ChainPlan(plan, cuts)
            J = evaluate(plan, segments, values)
            return (J, (plan, cost)) if return_plan else J
    xs = [x]
    with no_grad():
        for layer in layers:
            xs.append(layer(xs[-1]))
    dims = [int(np.prod(v.shape)) for v in xs]
    costs = [_layer_cost(layer, a, b) for layer, a, b in zip(layers, xs, xs[1:])]
    L = len(layers)
    seg = sum(costs)
    if mode == "forward":
        cost, plan = dims[0] * seg, ("forward", 0, L)
    elif mode == "reverse":
        cost, plan = dims[L] * seg, ("reverse", 0, L)
    else:
        cost, plan = chain_plan(dims, costs)
    J = _evaluate(plan, layers, xs)
    return (J, (plan, cost)) if return_plan else J


def _by_structure(f, x):
    """f's traced chain of cuts (structure.py), or None: no chain to split (one cut), or a
    function the tracer or the segment evaluation cannot take (then the fixed modes' choice)."""
    from ..errors import TraceError
    try:
        found = plan_by_structure(f, x)
    except (TraceError, NotImplementedError, AttributeError, TypeError):
        return None
    if found is None or len(found[0]) < 3:
        return None
    return found


_SEGMENTS = {}      # ids of a run of layers -> (weakrefs to them, the function that runs them)


def _segment(layers, i, j):
    """The function layers[i:j] compose, the same object for the same layers (so forward
    mode's trace of it is reused, not taken again at every call). It holds the layers
    weakly: a cached segment never keeps a model alive."""
    part = layers[i:j]
    key = tuple(id(layer) for layer in part)
    hit = _SEGMENTS.get(key)
    if hit is not None and all(r() is layer for r, layer in zip(hit[0], part)):
        return hit[1]
    try:
        refs = tuple(weakref.ref(layer) for layer in part)
    except TypeError:                       # a layer without weak references: not cached
        refs = None

    def run(v):
        for layer in (part if refs is None else [r() for r in refs]):
            v = layer(v)
        return v
    if refs is not None:
        if len(_SEGMENTS) >= 256:
            _SEGMENTS.pop(next(iter(_SEGMENTS)))
        _SEGMENTS[key] = (refs, run)
        part = None                          # (run reads the weak references only)
    return run


def _evaluate(plan, layers, xs):
    kind = plan[0]
    if kind == "split":
        _, m, left, right = plan
        return Tensor._from(np.matmul(_evaluate(right, layers, xs).data, _evaluate(left, layers, xs).data))
    _, i, j = plan
    fn = _segment(layers, i, j)
    jac = (jacfwd if kind == "forward" else jacrev)(fn)(xs[i])
    n_out, n_in = int(np.prod(xs[j].shape)), int(np.prod(xs[i].shape))
    return Tensor._from(jac.data.reshape(n_out, n_in))
