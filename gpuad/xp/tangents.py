"""The JVP rules of the xp primitives that are not simple unary maps (those come
from the derivative table, gpuad/ops/derivatives.py, from the same expression
as their VJP).

A rule is rule(xp, args, tans, out, params) -> the output's tangent, or None
for zero. `xp` runs xp primitives on the device the values live on (numpy's
or CuPy's functions and gpuad's helpers, by name); args are the inputs'
values, tans their tangents (None: zero, or not an array). Tangents are never
written in place, so a rule may return a view.

>>> import numpy as np
>>> from gpuad.xp.tangents import multiply
>>> multiply(np, (np.float64(2.0), np.float64(3.0)), (np.float64(1.0), None), np.float64(6.0), {})
array(3.)
"""
import math

import numpy as np

_SQRT_PI = math.sqrt(math.pi)


def fit(t, out):
    """A tangent with its output's shape and dtype (broadcast up when an operand was
    broadcast; tangents are never written in place, so a view is fine)."""
    if not hasattr(t, "shape") or isinstance(t, np.generic):
        t = np.asarray(t)
    shape = np.shape(out)
    if t.shape != shape:
        t = np.broadcast_to(t, shape)
    dt = out.dtype if isinstance(out, np.ndarray) else np.result_type(out)
    return t if t.dtype == dt else t.astype(dt)


def _z(xp, x):
    """Zeros like x, on x's device (a zero tangent made explicit)."""
    if hasattr(x, "shape") and not isinstance(x, np.generic):
        return xp.zeros_like(x)
    return np.zeros(np.shape(x), np.result_type(x))


def unary(d):
    """The rule of an elementwise map with derivative d(xp, x, out): tangent * d."""
    def rule(xp, args, tans, out, params):
        if tans[0] is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            t = tans[0] * d(xp, args[0], out)
        return finite_zero(xp, tans[0], t)
    return rule


def finite_zero(xp, tan, t):
    """A zero tangent stays zero where the derivative is infinite (sqrt at 0: a norm of
    zeros), as reverse mode's rules never multiply a zero by an infinity."""
    v = t
    while getattr(v, "ns", None) is not None and hasattr(v, "value"):
        v = v.value                        # under vmap (jacfwd's basis): any example's NaN
    bad = xp.isnan(t).any() if v is t else np.isnan(v).any()
    return xp.where(tan == 0, 0.0, t).astype(t.dtype) if bool(bad) else t


def linear(prim):
    """An op linear in its first argument: the tangent goes through the same op."""
    def rule(xp, args, tans, out, params):
        if tans[0] is None:
            return None
        return getattr(xp, prim)(tans[0], *args[1:], **params)
    return rule


def add(xp, args, tans, out, params):
    ta, tb = tans
    if ta is None and tb is None:
        return None
    return fit(ta, out) if tb is None else (fit(tb, out) if ta is None else fit(ta + tb, out))


def subtract(xp, args, tans, out, params):
    ta, tb = tans
    if ta is None and tb is None:
        return None
    if tb is None:
        return fit(ta, out)
    return fit(-tb if ta is None else ta - tb, out)


def multiply(xp, args, tans, out, params):
    (a, b), (ta, tb) = args, tans
    t = None if ta is None else ta * b
    if tb is not None:
        t = a * tb if t is None else t + a * tb
    return None if t is None else fit(t, out)


def divide(xp, args, tans, out, params):
    (_, b), (ta, tb) = args, tans                # d(a / b) = ta / b - tb (a / b) / b
    t = None if ta is None else ta / b
    if tb is not None:
        u = -tb * out / b
        t = u if t is None else t + u
    return None if t is None else fit(t, out)


def power(xp, args, tans, out, params):
    (a, b), (ta, tb) = args, tans
    t = None
    if ta is not None:
        t = ta * (b * xp.power(a, xp.subtract(b, 1)))
    if tb is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            u = tb * out * xp.log(a)
        t = u if t is None else t + u
    return None if t is None else fit(t, out)


def select(compare, tie=0.5):
    """maximum/minimum: the tangent of the side that wins, the mean of both on a tie (as
    gpuad's VJP splits the gradient)."""
    def rule(xp, args, tans, out, params):
        (a, b), (ta, tb) = args, tans
        if ta is None and tb is None:
            return None
        ta = _z(xp, out) if ta is None else ta
        tb = _z(xp, out) if tb is None else tb
        wins = getattr(xp, compare)(a, b)
        ties = xp.equal(a, b)
        return fit(xp.where(ties, tie * (ta + tb), xp.where(wins, ta, tb)), out)
    return rule


def arctan2(xp, args, tans, out, params):
    (a, b), (ta, tb) = args, tans
    d = a * a + b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = xp.where(d != 0, 1.0 / d, 0.0)          # 0 at the origin, as the VJP
    t = None if ta is None else ta * b * inv
    if tb is not None:
        u = -tb * a * inv
        t = u if t is None else t + u
    return None if t is None else fit(t, out)


def remainder(xp, args, tans, out, params):
    (a, b), (ta, tb) = args, tans        # a - floor(a / b) b: d/da = 1, d/db = -floor(a / b)
    t = None if ta is None else ta
    if tb is not None:
        u = -tb * xp.floor(a / b)
        t = u if t is None else t + u
    return None if t is None else fit(t, out)


def matmul(xp, args, tans, out, params):
    (a, b), (ta, tb) = args, tans
    t = None if ta is None else xp.matmul(ta, b)
    if tb is not None:
        u = xp.matmul(a, tb)
        t = u if t is None else t + u
    return t


def where(xp, args, tans, out, params):
    c, a, b = args
    _, ta, tb = tans
    if ta is None and tb is None:
        return None
    return fit(xp.where(c, _z(xp, out) if ta is None else ta, _z(xp, out) if tb is None else tb), out)


def extreme(reduce):
    """max/min along axes: the tangent at the extreme, shared evenly among ties."""
    def rule(xp, args, tans, out, params):
        if tans[0] is None:
            return None
        a, t = args[0], tans[0]
        axis, keepdims = params.get("axis"), params.get("keepdims", False)
        hit = xp.equal(a, getattr(xp, reduce)(a, axis=axis, keepdims=True))
        return xp.divide(xp.sum(t * hit, axis=axis, keepdims=keepdims), xp.sum(hit, axis=axis, keepdims=keepdims))
    return rule


def concat(prim):
    def rule(xp, args, tans, out, params):
        arrays, ts = args[0], tans[0]
        if ts is None or all(t is None for t in ts):
            return None
        return getattr(xp, prim)([_z(xp, a) if t is None else t for a, t in zip(arrays, ts)], *args[1:], **params)
    return rule


def pad(xp, args, tans, out, params):
    """Linear, with the padding's constant (-inf for max pooling) as a zero tangent."""
    if tans[0] is None:
        return None
    kw = {k: v for k, v in params.items() if k != "constant_values"}
    return xp.pad(tans[0], *args[1:], **kw)


def einsum(xp, args, tans, out, params):
    eq, ops, ts = args[0], list(args[1:]), list(tans[1:])
    t = None
    for i, ti in enumerate(ts):
        if ti is not None:
            term = xp.einsum(eq, *(ops[:i] + [ti] + ops[i + 1:]), **params)
            t = term if t is None else t + term
    return t


def scatter_add(xp, args, tans, out, params):
    if tans[0] is None:
        return None
    return xp.scatter_add(tans[0], *args[1:])


def setitem(xp, args, tans, out, params):
    a, index, value = args
    ta, _, tv = tans
    if ta is None and tv is None:
        return None
    tv = _z(xp, value) if tv is None else tv
    return xp.setitem(_z(xp, a) if ta is None else ta, index, xp.asarray(tv) if hasattr(tv, "shape") else tv)


def cumprod(xp, args, tans, out, params):
    # the product rule along the axis, no division (a zero among the x is fine):
    # d out_k = d out_{k-1} x_k + out_{k-1} t_k
    if tans[0] is None:
        return None
    axis = params.get("axis", args[1] if len(args) > 1 else None)
    a, t, y = (xp.ravel(v) if axis is None else v for v in (args[0], tans[0], out))
    ax = 0 if axis is None else axis
    a, t, y = (xp.moveaxis(v, ax, 0) for v in (a, t, y))
    d = xp.empty_like(y)
    d[0] = t[0]
    for k in range(1, len(y)):
        d[k] = d[k - 1] * a[k] + y[k - 1] * t[k]
    return xp.moveaxis(d, 0, ax)


def zero_where(xp, args, tans, out, params):
    if tans[0] is None:
        return None
    return xp.where(args[1], 0, tans[0])


def clip(xp, args, tans, out, params):
    """The tangent inside [lo, hi], bounds included (clamp's gradient), 0 outside."""
    if tans[0] is None:
        return None
    x, lo, hi = (list(args) + [params.get("a_min"), params.get("a_max")])[:3]
    inside = x == x                                  # on x's device (NaN: outside, as in the VJP)
    if lo is not None:
        inside &= x >= lo
    if hi is not None:
        inside &= x <= hi
    return xp.where(inside, tans[0], 0.0)


# derivatives of the maps numpy spells that the derivative table declares under other
# names (its asin runs xp.arcsin) or not at all (square, absolute as numpy's name)
def arcsin_d(xp, x, y):
    return 1 / xp.sqrt(1 - x * x)


def arccos_d(xp, x, y):
    return -1 / xp.sqrt(1 - x * x)


def sign_d(xp, x, y):
    return xp.sign(x)


def square_d(xp, x, y):
    return 2 * x


def reciprocal_d(xp, x, y):
    return -y * y


def arctan_d(xp, x, y):
    return 1 / (1 + x * x)


def exp2_d(xp, x, y):
    return y * math.log(2.0)
