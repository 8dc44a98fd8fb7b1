"""Forward mode: jvp (the Jacobians built on it are in jacobians.py).

gpuad.compile's tracer already turns any function into a graph of `xp`
primitives: the numpy vocabulary every forward and every VJP is written in.
Forward mode runs that graph once on numbers, carrying beside each value its
tangent. The JVP rule in each xp primitive's declaration (gpuad/xp/) gives the output's tangent
from the inputs' values and tangents. Because the reverse pass is xp code too,
jvp of a gradient (forward over reverse: `hessian`) needs nothing more.
No autograd graph is recorded.

Every primitive a traced gpuad function can emit has a rule
(tests/test_forward.py checks them against the traces of every gradcheck case).
A tangent that is None is zero and costs nothing: the rules skip it.

>>> import gpuad
>>> y, t = gpuad.jvp(lambda x: (x * x).sum(), (gpuad.tensor([1.0, 2.0]),), (gpuad.tensor([1.0, 0.0]),))
>>> float(y), float(t)
(5.0, 2.0)
"""
import weakref

import numpy as np

from ..compiler.capture import build_result, capture
from ..compiler.ir import Literal, Var, map_leaves
from .. import autograd
from ..backends import _cupy_namespace, namespace_of, numpy_ns
from ..backends.batched import LIVE, BatchedArray, batched_xp
from ..graph import is_grad_enabled
from ..compiler.trace import resolve
from ..pytree import tree_flatten, tree_unflatten
from ..tensor import Tensor
from ..xp import ZERO, lookup
from ..xp.tangents import fit

def _z(x):
    """Zeros like x, on x's device (a zero tangent made explicit)."""
    if hasattr(x, "shape") and not isinstance(x, np.generic):
        return namespace_of(x).zeros_like(x)
    return np.zeros(np.shape(x), np.result_type(x))


class _Ops:
    """xp primitives by name on one device's namespace (numpy's or CuPy's functions and
    gpuad's helpers): what the JVP rules (gpuad/xp/tangents.py) call."""

    def __init__(self, ns):
        self.ns = ns

    def __getattr__(self, prim):
        fn = resolve(prim, self.ns)
        setattr(self, prim, fn)
        return fn


_OPS = {}


def _ops(ns):
    key = ns.name if ns.name != "batched" else ns
    ops = _OPS.get(key)
    if ops is None:
        ops = _Ops(ns)
        if ns.name != "batched":
            _OPS[key] = ops
    return ops


# -- evaluating a traced graph with tangents -------------------------------------------

def _value(x, env):
    """An operand with its Vars' values and its Literals' objects."""
    return map_leaves(x, lambda a: env[a.id] if isinstance(a, Var) else a.value if isinstance(a, Literal) else a)


def _tangent(x, tan):
    if isinstance(x, Var):
        return tan.get(x.id)
    if isinstance(x, (list, tuple)) and any(isinstance(t, Var) for t in x):
        return [_tangent(t, tan) for t in x]       # the arrays given to concatenate or stack
    return None


def run(graph, inputs, tangents, device="cpu"):
    """Run `graph` on `inputs` (arrays on `device`), carrying `tangents` (None: zero): the
    values and tangents of every Var, by id."""
    xp = _namespace(device)
    # on a device, host constants (captured arrays, folded literals) go there first
    host = (lambda a: xp.asarray(a) if type(a) is np.ndarray else a) if device != "cpu" else None
    ops = _ops(xp)
    batched = LIVE[0] and any(isinstance(t, BatchedArray) for t in tangents)    # jacfwd's basis (vmap)
    env, tan = {}, {}
    for v, a, t in zip(graph.inputs, inputs, tangents):
        env[v.id] = a if host is None else host(a)
        if t is not None:
            tan[v.id] = t
    for e, fn, ids, rule, floating in _steps(graph, xp):
        args, params = _value(e.args, env), _value(e.params, env)
        if host is not None:
            args, params = map_leaves(args, host), map_leaves(params, host)
        out = args[0][args[1]] if fn is None else fn(*args, **params)
        outs = list(out) if len(e.outs) > 1 else [out]
        for o, val in zip(e.outs, outs):
            env[o.id] = val if hasattr(val, "shape") and not isinstance(val, np.generic) else \
                np.asarray(val, dtype=o.dtype)
        if floating and any(i in tan for i in ids):
            push_tangent(e, rule, ops, args, params, env, tan, batched)
    return env, tan


def push_tangent(e, rule, ops, args, params, env, tan, batched):
    """The tangent of equation e's output from its inputs' (in `tan`, by Var id), by its
    JVP rule; `batched`: the tangents may be a vmap's (a batch of directions at once)."""
    if rule is None:
        raise NotImplementedError(f"gpuad.jvp: no forward-mode rule for the primitive {e.prim!r} "
                                  "(its declaration in gpuad/xp/vocabulary.py has none)")
    if rule is ZERO:
        return
    tans = [_tangent(a, tan) for a in e.args]
    top = batched_xp(None, None, tans) if batched else None
    out = env[e.outs[0].id]
    t = rule(ops if top is None else _ops(top), args, tans, out, params)
    if t is not None:
        tan[e.outs[0].id] = fit(t, out)


_plans = weakref.WeakKeyDictionary()


def _rule(prim):
    d = lookup(prim)
    return None if d is None else d.jvp


def _steps(graph, xp):
    """Per equation, resolved once per graph and device: (eqn, its function on xp (None:
    indexing), the ids it reads, its rule, whether its result can carry a tangent)."""
    per = _plans.setdefault(graph, {})
    steps = per.get(xp.name)
    if steps is None:
        steps = per[xp.name] = [(e, None if e.prim == "getitem" else resolve(e.prim, xp), [v.id for v in e.invars()],
                                  _rule(e.prim), e.outs[0].dtype.kind in "fc") for e in graph.eqns]
    return steps


# -- the transforms ----------------------------------------------------------------------

def _as_tensor(x):
    if isinstance(x, Tensor):
        return x
    return Tensor(x, dtype="float32" if isinstance(x, float) else None)


_CACHE = weakref.WeakKeyDictionary()      # f -> {guard key: capture}: a repeated jvp traces once


def _traced(f, primals):
    """(capture, flat primal Tensors, spec, args) for f(*primals), primals being pytrees.
    The trace is reused while f's arguments and reachable state keep their shapes
    (the guard key of gpuad.compile)."""
    from ..compiler.state import discover, guard_key
    leaves, spec = tree_flatten(tuple(primals))
    leaves = [_as_tensor(x) for x in leaves]
    args = tree_unflatten(spec, leaves)
    try:
        per_f = _CACHE.setdefault(f, {})
    except TypeError:                       # not weak-referenceable: trace every time
        per_f = {}
    found = discover(f)
    key = guard_key(found, tuple(args), {})
    cap = per_f.get(key)
    if cap is None:
        cap = per_f[key] = capture(f, tuple(args), {}, found)
    return cap, leaves, spec, args


def _input_values(cap, args):
    call = (list(args), {})
    return [r.get(call) if hasattr(r, "get") else r for r in cap.reads]


def _results(cap, env, tan):
    """(values pytree, tangents pytree) of the function's return value."""
    xp = _namespace(cap.device)
    value = build_result(cap.result, lambda kind, v: env[v.id].item() if kind == "I" else
                         Tensor._from(xp.asarray(env[v.id])))
    tangent = build_result(cap.result, lambda kind, v: Tensor._from(
        _on(xp, tan[v.id]) if v.id in tan else _z(xp.asarray(env[v.id]))))
    return value, tangent


def _tangent_inputs(cap, spec, tangent_leaves):
    """One tangent per graph input: for an argument, the tangent at the same place in the
    tangents' pytree (found by the argument's path); None for state."""
    from ..compiler.capture import ArgGradSlot, ArgSlot
    tangent_args = tree_unflatten(spec, [_Leaf(t) for t in tangent_leaves])
    call = (list(tangent_args), {})
    out = []
    for r in cap.reads:
        t = None
        if isinstance(r, ArgSlot) and not isinstance(r, ArgGradSlot):
            t = r.owner(call).value
        # on the primals' device (a host tangent for a device primal is copied there)
        out.append(None if t is None else _on(_namespace(cap.device), t.data if isinstance(t, Tensor) else t))
    return out


def _on(xp, a):
    """a as an array of xp (a batched tangent, under vmap, stays one)."""
    return a if isinstance(a, BatchedArray) else xp.asarray(a)


def _namespace(device):
    return numpy_ns if device == "cpu" else _cupy_namespace()


class _Leaf:
    """A tangent standing where its primal Tensor stood (so a path finds it)."""

    def __init__(self, value):
        self.value = value


def jvp(f, primals, tangents, has_aux=False):
    """(f(*primals), the directional derivative of f at primals along tangents), JAX's
    jvp: primals and tangents are tuples of pytrees of the same structure.

    >>> import gpuad
    >>> _, t = gpuad.jvp(gpuad.sin, (gpuad.tensor(0.0),), (gpuad.tensor(2.0),))
    >>> float(t)
    2.0
    """
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError("gpuad.jvp: primals and tangents must be tuples (as jax.jvp)")
    leaves, spec = tree_flatten(tuple(primals))
    t_leaves, t_spec = tree_flatten(tuple(tangents))
    if t_spec != spec:
        raise ValueError("gpuad.jvp: tangents must have the structure of primals")
    for p, t in zip(leaves, t_leaves):
        if tuple(np.shape(t.data if isinstance(t, Tensor) else t)) != tuple(np.shape(getattr(p, "data", p))):
            raise ValueError(f"gpuad.jvp: a tangent of shape {np.shape(t)} for a primal of shape "
                             f"{np.shape(getattr(p, 'data', p))}")
    if _needs_reverse(primals):
        return _jvp_by_double_vjp(f, leaves, spec, t_leaves, has_aux)
    cap, leaves, spec, args = _traced(f, primals)
    env, tan = run(cap.graph, _input_values(cap, args), _tangent_inputs(cap, spec, t_leaves), cap.device)
    value, tangent = _results(cap, env, tan)
    if has_aux:
        return value[0], tangent[0], value[1]
    return value, tangent


def _needs_reverse(primals):
    return is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad
                                     for x in tree_flatten(tuple(primals))[0])


def _jvp_by_double_vjp(f, leaves, spec, t_leaves, has_aux):
    """J t when the result must stay differentiable (grad of jvp): J t = d/du <J^T u, t>,
    two reverse passes with create_graph, so the answer is recorded and reverse mode
    can differentiate it again (about three backward passes' work)."""
    xs = [x * 1 if isinstance(x, Tensor) and x.requires_grad else _as_tensor(x).detach().requires_grad_(True)
          for x in leaves]
    out = f(*tree_unflatten(spec, xs))
    aux = None
    if has_aux:
        out, aux = out
    out_leaves, out_spec = tree_flatten(out)
    us = [Tensor._from(_z(o.data)).requires_grad_(True) for o in out_leaves]
    live = [(o, u) for o, u in zip(out_leaves, us) if o.requires_grad]
    tangents = []
    if live:
        gs = autograd.grad([o for o, _ in live], xs, grad_outputs=[u for _, u in live], create_graph=True,
                           allow_unused=True)
        terms = [(g * _as_tensor(t)).sum() for g, t in zip(gs, t_leaves) if g is not None]
        if terms:
            s = terms[0]
            for term in terms[1:]:
                s = s + term
            tangents = autograd.grad(s, [u for _, u in live], create_graph=True, allow_unused=True)
    by_out = {id(u): t for (_, u), t in zip(live, tangents)}
    tan = [by_out.get(id(u)) if by_out.get(id(u)) is not None else Tensor._from(_z(o.data))
           for o, u in zip(out_leaves, us)]
    value, tangent = tree_unflatten(out_spec, out_leaves), tree_unflatten(out_spec, tan)
    return (value, tangent, aux) if has_aux else (value, tangent)


def _refuse_reverse_over_forward(primals, who):
    """Forward mode runs on numbers, outside autograd: differentiating its result again
    by reverse mode would silently give zeros, so it is refused (jvp of grad, forward
    over reverse, is the supported order)."""
    if is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in tree_flatten(tuple(primals))[0]):
        raise NotImplementedError(f"gpuad.{who}: reverse mode through forward mode (grad of {who}) is not "
                                  f"supported yet; differentiate with jacrev or hessian instead, or pass "
                                  f"primals that do not require grad (detach them)")
