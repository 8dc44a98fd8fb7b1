"""Binary elementwise primitives (broadcasting), casts and comparisons.

The unary ones live in the derivative table (derivatives.py).

Binary VJPs return gradients in the broadcast shape of the output; the engine
sums them back to each input's shape with the one shared `unbroadcast`
(gpuad/engine/policy.py).

Each forward reads its inputs once and writes its output once (read N, write
N per input). Where a VJP may overwrite the incoming gradient (`donate`: the
engine owns it and it is large enough for out= to pay), it writes there, and
into its own temporaries, instead of allocating.

>>> import gpuad
>>> x = gpuad.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
>>> (x.tanh() * 3).sum().backward()
>>> x.grad.numpy().round(4)
array([1.2599, 0.212 ])
"""
import math

import numpy as np

from .dispatch import apply
from ..precision import set_caster
from .registry import primitive, BINARY, UNARY, OTHER
from ..memory.pool import INPLACE_MIN

_generic = np.generic


def _tmp(t):
    """A temporary the VJP made itself may be overwritten: worth it when large,
    impossible when numpy turned a 0-d result into a scalar."""
    size = getattr(t, "size", 0)          # (a Tensor's size is a method: recorded ops never write in place)
    return t if type(size) is int and size >= INPLACE_MIN and not isinstance(t, _generic) else None


# --- binary -------------------------------------------------------------------

@primitive("add", inputs=("x", "y"), kind=BINARY, method=True, operator="add", export=True)
def add(xp, x, y):
    """x + y with broadcasting."""
    return xp.add(x, y)


@add.defvjp
def _add_vjp(xp, g, saved, node, donate):
    nx, ny = node.needs
    return (g if nx else None), (g if ny else None)


@primitive("subtract", inputs=("x", "y"), kind=BINARY, method=True, operator="sub", export=True)
def subtract(xp, x, y):
    """x - y with broadcasting."""
    return xp.subtract(x, y)


@subtract.defvjp
def _subtract_vjp(xp, g, saved, node, donate):
    nx, ny = node.needs
    gy = xp.negative(g, out=g if donate and not nx else None) if ny else None
    return (g if nx else None), gy


@primitive("multiply", inputs=("x", "y"), kind=BINARY, retain={"x": "y", "y": "x"}, method=True,
           operator="mul", export=True)
def multiply(xp, x, y):
    """x * y with broadcasting. Saves y for dx and x for dy, only where needed."""
    return xp.multiply(x, y)


@multiply.defvjp
def _multiply_vjp(xp, g, saved, node, donate):
    x, y = saved
    nx, ny = node.needs
    gx = xp.multiply(g, y, out=g if donate and not ny else None) if nx else None
    gy = xp.multiply(g, x, out=g if donate else None) if ny else None
    return gx, gy


@primitive("divide", inputs=("x", "y"), kind=BINARY, retain={"y": None, "out": "y"}, vjp_temps=1,
           method=True, operator="truediv", export=True, float_result=True)
def divide(xp, x, y):
    """x / y with broadcasting. dx = g / y, dy = -(g / y) * out."""
    return xp.divide(x, y)


@divide.defvjp
def _divide_vjp(xp, g, saved, node, donate):
    y, out = saved
    nx, ny = node.needs
    gx = xp.divide(g, y, out=g if donate else None)
    if not ny:
        return gx, None
    gy = xp.multiply(gx, out, out=None if nx or not donate else gx)  # gx is ours once dx is not needed
    return (gx if nx else None), xp.negative(gy, out=gy if donate else None)


@primitive("power", inputs=("x", "p"), kind=BINARY, retain={"x": None, "p": None, "out": "p"}, vjp_temps=2,
           method=True, operator="pow", export=True)
def power(xp, x, p):
    """x ** p, p a scalar or a tensor. dx = g p x^(p-1), dp = g out log(x)."""
    return xp.power(x, p)


@power.defvjp
def _power_vjp(xp, g, saved, node, donate):
    # As torch: dx is 0 where p == 0 and dp is 0 where x == 0 and p >= 0 (the limits),
    # not the 0 * inf = NaN the formulas give there.
    x, p, out = saved
    nx, np_ = node.needs
    gx = gp = None
    with np.errstate(divide="ignore", invalid="ignore"):      # the masked-out points
        if nx:
            if _is_number(p):
                gx = xp.multiply(xp.multiply(g, 2.0), x) if p == 2 else (
                    xp.multiply(g, 0.0) if p == 0 else xp.multiply(xp.multiply(g, p), xp.power(x, p - 1)))
            else:
                gx = xp.multiply(g, xp.where(xp.equal(p, 0), 0.0, xp.multiply(p, xp.power(x, p - 1))))
        if np_:
            if _is_number(x):
                # a constant base: log in full precision, taking the computation's dtype
                log_x = math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)
                d = xp.multiply(out, log_x)
                zero = x == 0
            else:
                d = xp.multiply(out, xp.log(xp.astype(x, out.dtype)))   # never a float32 log in float64
                zero = xp.equal(x, 0)
            limit = xp.logical_and(zero, xp.greater_equal(p, 0)) if not isinstance(zero, bool) else \
                (xp.greater_equal(p, 0) if zero else None)
            gp = xp.multiply(g, d if limit is None else xp.where(limit, 0.0, d))
    return gx, gp


def _is_number(v):
    return isinstance(v, (int, float, np.number))


@primitive("atan2", inputs=("y", "x"), kind=BINARY, retain={"y": None, "x": None}, vjp_temps=3, method=True,
           export=True, float_result=True)
def atan2(xp, y, x):
    """The angle of (x, y), elementwise: d/dy = x / r^2, d/dx = -y / r^2."""
    return xp.arctan2(y, x)


@atan2.defvjp
def _atan2_vjp(xp, g, saved, node, donate):
    y, x = saved
    r2 = xp.add(xp.multiply(x, x), xp.multiply(y, y))
    with np.errstate(divide="ignore", invalid="ignore"):
        # at the origin both gradients are 0, as torch's (not the formula's 0/0)
        s = xp.where(xp.equal(r2, 0), 0.0, xp.divide(g, r2))
    ny, nx = node.needs
    return (xp.multiply(s, x) if ny else None), (xp.negative(xp.multiply(s, y)) if nx else None)


@primitive("maximum", inputs=("x", "y"), kind=BINARY, retain={"x": None, "y": None}, vjp_temps=3,
           method=True, export=True)
def maximum(xp, x, y):
    """Elementwise max; a tie sends half the gradient to each side (as PyTorch)."""
    return xp.maximum(x, y)


@maximum.defvjp
def _maximum_vjp(xp, g, saved, node, donate):
    return _minmax_vjp(xp, g, saved, node, xp.greater)


@primitive("minimum", inputs=("x", "y"), kind=BINARY, retain={"x": None, "y": None}, vjp_temps=3,
           method=True, export=True)
def minimum(xp, x, y):
    """Elementwise min; a tie sends half the gradient to each side (as PyTorch)."""
    return xp.minimum(x, y)


@minimum.defvjp
def _minimum_vjp(xp, g, saved, node, donate):
    return _minmax_vjp(xp, g, saved, node, xp.less)


def _minmax_vjp(xp, g, saved, node, wins):
    x, y = saved
    half = xp.multiply(g, 0.5)
    tie = xp.equal(x, y)
    nx, ny = node.needs
    gx = xp.where(tie, half, xp.where(wins(x, y), g, 0.0)) if nx else None
    gy = xp.where(tie, half, xp.where(wins(y, x), g, 0.0)) if ny else None
    return gx, gy


@primitive("where", inputs=("cond", "x", "y"), kind=BINARY, retain={"cond": None})
def where(xp, cond, x, y):
    """x where cond else y. cond gets no gradient."""
    return xp.where(cond, x, y)


@where.defvjp
def _where_vjp(xp, g, saved, node, donate):
    (cond,) = saved
    _, nx, ny = node.needs
    return (None,
            xp.where(cond, g, 0.0) if nx else None,
            xp.where(cond, 0.0, g) if ny else None)


@primitive("astype", kind=OTHER)
def astype(xp, x, dtype):
    """Cast; the gradient is cast back to the input's dtype by the engine."""
    return xp.astype(x, dtype)


# autocast's casts (gpuad/precision.py) are this primitive, recorded: gradients flow back
# to float32 parameters, cast back to float32
set_caster(lambda t, dtype: apply(astype, (t,), {"dtype": dtype}))


@astype.defvjp
def _astype_vjp(xp, g, saved, node, donate):
    return (g,)


# --- no gradient: comparisons and sign ----------------------------------------

def _comparison(name, operator):
    fwd = lambda xp, x, y: getattr(xp, name)(x, y)  # noqa: E731
    fwd.__doc__ = f"x {operator} y elementwise (bool; no gradient)."
    return primitive(name, inputs=("x", "y"), kind=BINARY, differentiable=False, method=False,
                     operator=operator, export=True)(fwd)


less = _comparison("less", "lt")
less_equal = _comparison("less_equal", "le")
greater = _comparison("greater", "gt")
greater_equal = _comparison("greater_equal", "ge")
equal = _comparison("equal", "eq")
not_equal = _comparison("not_equal", "ne")
def _bitwise(name, operator):
    fwd = lambda xp, x, y: getattr(xp, name)(x, y)  # noqa: E731
    fwd.__doc__ = f"{name}(x, y) elementwise, on bool or integer tensors (no gradient)."
    return primitive(name, inputs=("x", "y"), kind=BINARY, differentiable=False, method=True, operator=operator,
                     export=True)(fwd)


bitwise_and = _bitwise("bitwise_and", "and")
bitwise_or = _bitwise("bitwise_or", "or")
bitwise_xor = _bitwise("bitwise_xor", "xor")
bitwise_not = primitive("bitwise_not", kind=UNARY, differentiable=False, method=True, operator="invert",
                        export=True)(lambda xp, x: xp.invert(x))
logical_not = primitive("logical_not", kind=UNARY, differentiable=False, method=True, export=True)(
    lambda xp, x: xp.logical_not(x))


def _logical(name):
    fwd = lambda xp, x, y: getattr(xp, name)(x, y)  # noqa: E731
    fwd.__doc__ = f"{name}(x, y): elementwise truth (bool; no gradient)."
    return primitive(name, inputs=("x", "y"), kind=BINARY, differentiable=False, method=True, export=True)(fwd)


logical_and, logical_or, logical_xor = _logical("logical_and"), _logical("logical_or"), _logical("logical_xor")
floor_divide = primitive("floor_divide", inputs=("x", "y"), kind=BINARY, differentiable=False, method=True,
                         operator="floordiv", export=True)(lambda xp, x, y: xp.floor_divide(x, y))


@primitive("remainder", inputs=("x", "y"), kind=BINARY, retain={"x": "y", "y": "y"}, method=True, operator="mod",
           export=True)
def remainder(xp, x, y):
    """x - floor(x / y) y, with the sign of y (Python's %, torch.remainder)."""
    return xp.remainder(x, y)


@remainder.defvjp
def _remainder_vjp(xp, g, saved, node, donate):
    x, y = saved
    nx, ny = node.needs
    gy = xp.multiply(g, xp.negative(xp.floor(xp.divide(x, y)))) if ny else None
    return (g if nx else None), gy


isnan = primitive("isnan", kind=UNARY, differentiable=False, method=True, export=True)(lambda xp, x: xp.isnan(x))
isfinite = primitive("isfinite", kind=UNARY, differentiable=False, method=True, export=True)(
    lambda xp, x: xp.isfinite(x))
isinf = primitive("isinf", kind=UNARY, differentiable=False, method=True, export=True)(lambda xp, x: xp.isinf(x))
