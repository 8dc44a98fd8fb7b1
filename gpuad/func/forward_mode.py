"""Forward mode: jvp (the Jacobians built on it are in jacobians.py).

gpuad.compile's tracer already turns any function into a graph of `xp`
primitives: the numpy vocabulary every forward and every VJP is written in.
Forward mode runs that graph once on numbers, carrying beside each value its
tangent. A JVP rule per xp primitive (RULES, below) gives the output's tangent
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
import math
import weakref

import numpy as np

from ..compiler.capture import build_result, capture
from ..compiler.ir import Literal, Var, map_leaves
from .. import autograd
from ..backends import _cupy_namespace, namespace_of, numpy_ns
from ..graph import is_grad_enabled
from ..compiler.trace import resolve
from ..pytree import tree_flatten, tree_unflatten
from ..tensor import Tensor

_SQRT_PI = math.sqrt(math.pi)


def _z(x):
    """Zeros like x, on x's device (a zero tangent made explicit)."""
    if hasattr(x, "shape") and not isinstance(x, np.generic):
        return namespace_of(x).zeros_like(x)
    return np.zeros(np.shape(x), np.result_type(x))


# -- the rules: rule(args, tans, out, params) -> tangent of out ----------------------
# args: the inputs' values, tans: their tangents (None: zero, or not an array)

def _unary(d):
    def rule(args, tans, out, params):
        if tans[0] is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            t = tans[0] * d(args[0], out)
        # a zero tangent stays zero where the derivative is infinite (sqrt at 0: a norm
        # of zeros), as reverse mode's rules never multiply a zero by an infinity
        return np.where(tans[0] == 0, 0.0, t).astype(t.dtype) if np.isnan(t).any() else t
    return rule


def _linear(prim):
    """An op linear in its first argument: the tangent goes through the same op."""
    def rule(args, tans, out, params):
        if tans[0] is None:
            return None
        return resolve(prim, namespace_of(tans[0]))(tans[0], *args[1:], **params)
    return rule


def _add(args, tans, out, params):
    ta, tb = tans
    if ta is None and tb is None:
        return None
    return _fit(ta, out) if tb is None else (_fit(tb, out) if ta is None else _fit(ta + tb, out))


def _subtract(args, tans, out, params):
    ta, tb = tans
    if ta is None and tb is None:
        return None
    if tb is None:
        return _fit(ta, out)
    return _fit(-tb if ta is None else ta - tb, out)


def _multiply(args, tans, out, params):
    (a, b), (ta, tb) = args, tans
    t = None if ta is None else ta * b
    if tb is not None:
        t = a * tb if t is None else t + a * tb
    return None if t is None else _fit(t, out)


def _divide(args, tans, out, params):
    (_, b), (ta, tb) = args, tans                # d(a / b) = ta / b - tb (a / b) / b
    t = None if ta is None else ta / b
    if tb is not None:
        u = -tb * out / b
        t = u if t is None else t + u
    return None if t is None else _fit(t, out)


def _power(args, tans, out, params):
    (a, b), (ta, tb) = args, tans
    t = None
    if ta is not None:
        t = ta * (b * np.power(a, np.subtract(b, 1)))
    if tb is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            u = tb * out * np.log(a)
        t = u if t is None else t + u
    return None if t is None else _fit(t, out)


def _select(cond_fn, tie=0.5):
    """maximum/minimum: the tangent of the side that wins, the mean of both on a tie (as
    gpuad's VJP splits the gradient)."""
    def rule(args, tans, out, params):
        (a, b), (ta, tb) = args, tans
        if ta is None and tb is None:
            return None
        ta = _z(out) if ta is None else ta
        tb = _z(out) if tb is None else tb
        wins = cond_fn(a, b)
        ties = a == b
        return _fit(np.where(ties, tie * (ta + tb), np.where(wins, ta, tb)), out)
    return rule


def _arctan2(args, tans, out, params):
    (a, b), (ta, tb) = args, tans
    d = a * a + b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d != 0, 1.0 / d, 0.0)          # 0 at the origin, as the VJP
    t = None if ta is None else ta * b * inv
    if tb is not None:
        u = -tb * a * inv
        t = u if t is None else t + u
    return None if t is None else _fit(t, out)


def _remainder(args, tans, out, params):
    (a, b), (ta, tb) = args, tans        # a - floor(a / b) b: d/da = 1, d/db = -floor(a / b)
    t = None if ta is None else ta
    if tb is not None:
        u = -tb * np.floor(a / b)
        t = u if t is None else t + u
    return None if t is None else _fit(t, out)


def _matmul(args, tans, out, params):
    (a, b), (ta, tb) = args, tans
    t = None if ta is None else np.matmul(ta, b)
    if tb is not None:
        u = np.matmul(a, tb)
        t = u if t is None else t + u
    return t


def _where(args, tans, out, params):
    c, a, b = args
    _, ta, tb = tans
    if ta is None and tb is None:
        return None
    return _fit(np.where(c, _z(out) if ta is None else ta, _z(out) if tb is None else tb), out)


def _extreme(reduce):
    """max/min along axes: the tangent at the extreme, shared evenly among ties."""
    def rule(args, tans, out, params):
        if tans[0] is None:
            return None
        a, t = args[0], tans[0]
        axis, keepdims = params.get("axis"), params.get("keepdims", False)
        hit = a == reduce(a, axis=axis, keepdims=True)
        return np.sum(t * hit, axis=axis, keepdims=keepdims) / np.sum(hit, axis=axis, keepdims=keepdims)
    return rule


def _concat(prim):
    def rule(args, tans, out, params):
        arrays, ts = args[0], tans[0]
        if ts is None or all(t is None for t in ts):
            return None
        like = next(t for t in ts if t is not None)
        return resolve(prim, namespace_of(like))([_z(a) if t is None else t for a, t in zip(arrays, ts)], *args[1:],
                                                 **params)
    return rule


def _einsum(args, tans, out, params):
    eq, ops, ts = args[0], list(args[1:]), list(tans[1:])
    t = None
    for i, ti in enumerate(ts):
        if ti is not None:
            term = np.einsum(eq, *(ops[:i] + [ti] + ops[i + 1:]), **params)
            t = term if t is None else t + term
    return t


def _scatter_add(args, tans, out, params):
    if tans[0] is None:
        return None
    return resolve("scatter_add", namespace_of(tans[0]))(tans[0], *args[1:])


def _setitem(args, tans, out, params):
    a, index, value = args
    ta, _, tv = tans
    if ta is None and tv is None:
        return None
    xp = namespace_of(a)
    tv = _z(value) if tv is None else tv
    return resolve("setitem", xp)(_z(a) if ta is None else ta, index, xp.asarray(tv) if hasattr(tv, "shape") else tv)


def _cumprod(args, tans, out, params):
    # the product rule along the axis, no division (a zero among the x is fine):
    # d out_k = d out_{k-1} x_k + out_{k-1} t_k
    if tans[0] is None:
        return None
    axis = params.get("axis", args[1] if len(args) > 1 else None)
    a, t, y = (np.ravel(v) if axis is None else v for v in (args[0], tans[0], out))
    ax = 0 if axis is None else axis
    a, t, y = (np.moveaxis(v, ax, 0) for v in (a, t, y))
    d = np.empty_like(y)
    d[0] = t[0]
    for k in range(1, len(y)):
        d[k] = d[k - 1] * a[k] + y[k - 1] * t[k]
    return np.moveaxis(d, 0, ax)


def _zero_where(args, tans, out, params):
    if tans[0] is None:
        return None
    t = tans[0].copy()
    np.copyto(t, 0, where=args[1])
    return t


def _fit(t, out):
    """A tangent with its output's shape and dtype (broadcast up when an operand was
    broadcast; tangents are never written in place, so a view is fine)."""
    if not hasattr(t, "shape") or isinstance(t, np.generic):
        t = np.asarray(t)
    shape = np.shape(out)
    if t.shape != shape:
        t = np.broadcast_to(t, shape)
    dt = out.dtype if isinstance(out, np.ndarray) else np.result_type(out)
    return t if t.dtype == dt else t.astype(dt)


def _clip(args, tans, out, params):
    """The tangent inside [lo, hi], bounds included (clamp's gradient), 0 outside."""
    if tans[0] is None:
        return None
    x, lo, hi = (list(args) + [params.get("a_min"), params.get("a_max")])[:3]
    inside = x == x                                  # on x's device (NaN: outside, as in the VJP)
    if lo is not None:
        inside &= x >= lo
    if hi is not None:
        inside &= x <= hi
    return np.where(inside, tans[0], 0.0)


_none = lambda *_: None          # noqa: E731  piecewise-constant outputs (floor, sign, comparisons)

RULES = {
    "add": _add, "subtract": _subtract, "multiply": _multiply, "divide": _divide, "true_divide": _divide,
    "power": _power, "maximum": _select(np.greater), "minimum": _select(np.less), "arctan2": _arctan2,
    "remainder": _remainder, "matmul": _matmul, "where": _where, "einsum": _einsum,
    "negative": _unary(lambda x, y: -1.0), "exp": _unary(lambda x, y: y), "expm1": _unary(lambda x, y: y + 1),
    "log": _unary(lambda x, y: 1 / x), "log1p": _unary(lambda x, y: 1 / (1 + x)),
    "log2": _unary(lambda x, y: 1 / (x * math.log(2))), "log10": _unary(lambda x, y: 1 / (x * math.log(10))),
    "sqrt": _unary(lambda x, y: 0.5 / y), "sin": _unary(lambda x, y: np.cos(x)),
    "cos": _unary(lambda x, y: -np.sin(x)), "tan": _unary(lambda x, y: 1 + y * y),
    "tanh": _unary(lambda x, y: 1 - y * y), "sinh": _unary(lambda x, y: np.cosh(x)),
    "cosh": _unary(lambda x, y: np.sinh(x)), "arctan": _unary(lambda x, y: 1 / (1 + x * x)),
    "atan": _unary(lambda x, y: 1 / (1 + x * x)), "arcsin": _unary(lambda x, y: 1 / np.sqrt(1 - x * x)),
    "arccos": _unary(lambda x, y: -1 / np.sqrt(1 - x * x)), "absolute": _unary(lambda x, y: np.sign(x)),
    "abs": _unary(lambda x, y: np.sign(x)), "square": _unary(lambda x, y: 2 * x),
    "reciprocal": _unary(lambda x, y: -y * y),
    "erf": _unary(lambda x, y: (2 / _SQRT_PI) * np.exp(-x * x)),
    "sum": _linear("sum"), "mean": _linear("mean"), "cumsum": _linear("cumsum"), "cumprod": _cumprod,
    "max": _extreme(np.max), "min": _extreme(np.min), "amax": _extreme(np.max), "amin": _extreme(np.min),
    "reshape": _linear("reshape"), "transpose": _linear("transpose"), "swapaxes": _linear("swapaxes"),
    "broadcast_to": _linear("broadcast_to"), "getitem": _linear("getitem"), "astype": _linear("astype"),
    "copy": _linear("copy"), "ravel": _linear("ravel"), "squeeze": _linear("squeeze"), "flip": _linear("flip"),
    "expand_dims": _linear("expand_dims"), "moveaxis": _linear("moveaxis"), "broadcast_copy": _linear("broadcast_copy"),
    "take_along_axis": _linear("take_along_axis"), "take": _linear("take"), "tril": _linear("tril"),
    "triu": _linear("triu"), "roll": _linear("roll"), "tile": _linear("tile"), "repeat": _linear("repeat"),
    "pad": _linear("pad"), "diagonal": _linear("diagonal"), "asarray": _linear("asarray"),
    "concatenate": _concat("concatenate"), "stack": _concat("stack"),
    "scatter_add": _scatter_add, "setitem": _setitem, "zero_where": _zero_where,
    "floor": _none, "ceil": _none, "rint": _none, "round": _none, "trunc": _none, "sign": _none,
    "greater": _none, "greater_equal": _none, "less": _none, "less_equal": _none, "equal": _none,
    "not_equal": _none, "logical_and": _none, "logical_or": _none, "logical_not": _none, "logical_xor": _none,
    "isfinite": _none, "isnan": _none, "isinf": _none, "arange": _none, "empty": _none, "zeros": _none,
    "ones": _none, "full": _none, "zeros_like": _none, "ones_like": _none, "empty_like": _none,
    "buffer": _none, "random_draw": _none, "dropout_keep": _none, "check_none": _none, "check_value": _none, "host_callback": _none, "argmax": _none, "argmin": _none,
    "argsort": _none, "floor_divide": _none, "bitwise_and": _none, "bitwise_or": _none, "bitwise_xor": _none,
    "invert": _none, "stop_gradient": _none, "clip": _clip,
}


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
        if not floating or not any(i in tan for i in ids):
            continue
        if rule is None:
            raise NotImplementedError(f"gpuad.jvp: no forward-mode rule for the primitive {e.prim!r}")
        t = rule(args, [_tangent(a, tan) for a in e.args], env[e.outs[0].id], params)
        if t is not None:
            tan[e.outs[0].id] = _fit(t, env[e.outs[0].id])
    return env, tan


_plans = weakref.WeakKeyDictionary()


def _steps(graph, xp):
    """Per equation, resolved once per graph and device: (eqn, its function on xp (None:
    indexing), the ids it reads, its rule, whether its result can carry a tangent)."""
    per = _plans.setdefault(graph, {})
    steps = per.get(xp.name)
    if steps is None:
        steps = per[xp.name] = [(e, None if e.prim == "getitem" else resolve(e.prim, xp), [v.id for v in e.invars()],
                                  RULES.get(e.prim), e.outs[0].dtype.kind in "fc") for e in graph.eqns]
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
        xp.asarray(tan[v.id]) if v.id in tan else _z(xp.asarray(env[v.id]))))
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
        out.append(None if t is None else _namespace(cap.device).asarray(t.data if isinstance(t, Tensor) else t))
    return out


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
