"""Elementwise primitives: unary and binary math, activations, comparisons.

Binary VJPs return gradients in the broadcast shape of the output; the engine
sums them back to each input's shape with the one shared `unbroadcast`.

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

from .registry import primitive
from ..memory.pool import INPLACE_MIN

_generic = np.generic


def unbroadcast(xp, g, shape):
    """Sum `g` over the axes that broadcasting added or stretched to reach `shape`.

    The one helper every binary VJP relies on (through the engine).

    >>> import numpy as np
    >>> from gpuad.backends import numpy_ns
    >>> unbroadcast(numpy_ns, np.ones((4, 2, 3)), (2, 1)).tolist()
    [[12.0], [12.0]]
    """
    gshape = g.shape
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gshape[lead + i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=False)
        if len(shape) != g.ndim or tuple(g.shape) != tuple(shape):
            g = xp.reshape(g, shape)
    return g


def _tmp(t):
    """A temporary the VJP made itself may be overwritten: worth it when large,
    impossible when numpy turned a 0-d result into a scalar."""
    return t if getattr(t, "size", 0) >= INPLACE_MIN and not isinstance(t, _generic) else None


def _into_g(node, donate):
    """grad_kinds of a VJP that writes its result into a donated g."""
    return ("g",) if donate else ("fresh",)


# --- binary -------------------------------------------------------------------

@primitive("add", nin=2)
def add(xp, x, y):
    """x + y with broadcasting."""
    return xp.add(x, y)


@add.defvjp(grad_kinds=lambda node, donate: ("g", "g"))
def _add_vjp(xp, g, saved, node, donate):
    nx, ny = node.needs
    return (g if nx else None), (g if ny else None)


@primitive("subtract", nin=2)
def subtract(xp, x, y):
    """x - y with broadcasting."""
    return xp.subtract(x, y)


@subtract.defvjp(grad_kinds=lambda node, donate: ("g", "g" if donate and not node.needs[0] else "fresh"))
def _subtract_vjp(xp, g, saved, node, donate):
    nx, ny = node.needs
    gy = xp.negative(g, out=g if donate and not nx else None) if ny else None
    return (g if nx else None), gy


@primitive("multiply", nin=2, save=(0, 1), save_if=(1, 0))
def multiply(xp, x, y):
    """x * y with broadcasting. Saves y for dx and x for dy, only where needed."""
    return xp.multiply(x, y)


@multiply.defvjp(grad_kinds=lambda node, donate: ("g" if donate and not node.needs[1] else "fresh",
                                                  "g" if donate else "fresh"))
def _multiply_vjp(xp, g, saved, node, donate):
    x, y = saved
    nx, ny = node.needs
    gx = xp.multiply(g, y, out=g if donate and not ny else None) if nx else None
    gy = xp.multiply(g, x, out=g if donate else None) if ny else None
    return gx, gy


@primitive("divide", nin=2, save=(1, "out"), save_if=(None, 1))
def divide(xp, x, y):
    """x / y with broadcasting. dx = g / y, dy = -(g / y) * out."""
    return xp.divide(x, y)


@divide.defvjp(grad_kinds=lambda node, donate: ("g" if donate else "fresh",
                                                ("g" if donate else "fresh") if not node.needs[0] else "fresh"),
               vjp_temps=1)
def _divide_vjp(xp, g, saved, node, donate):
    y, out = saved
    nx, ny = node.needs
    gx = xp.divide(g, y, out=g if donate else None)
    if not ny:
        return gx, None
    gy = xp.multiply(gx, out, out=None if nx or not donate else gx)  # gx is ours once dx is not needed
    return (gx if nx else None), xp.negative(gy, out=gy if donate else None)


@primitive("power", nin=2, save=(0, 1, "out"), save_if=(None, None, 1))
def power(xp, x, p):
    """x ** p, p a scalar or a tensor. dx = g p x^(p-1), dp = g out log(x)."""
    return xp.power(x, p)


@power.defvjp(vjp_temps=2)
def _power_vjp(xp, g, saved, node, donate):
    x, p, out = saved
    nx, np_ = node.needs
    gx = None
    if nx:
        if isinstance(p, (int, float)) and p == 2:
            gx = xp.multiply(xp.multiply(g, 2.0), x)
        else:
            gx = xp.multiply(xp.multiply(g, p), xp.power(x, p - 1))
    gp = xp.multiply(xp.multiply(g, out), xp.log(x)) if np_ else None
    return gx, gp


@primitive("maximum", nin=2, save=(0, 1))
def maximum(xp, x, y):
    """Elementwise max; a tie sends half the gradient to each side (as PyTorch)."""
    return xp.maximum(x, y)


@maximum.defvjp(vjp_temps=3)
def _maximum_vjp(xp, g, saved, node, donate):
    return _minmax_vjp(xp, g, saved, node, xp.greater)


@primitive("minimum", nin=2, save=(0, 1))
def minimum(xp, x, y):
    """Elementwise min; a tie sends half the gradient to each side (as PyTorch)."""
    return xp.minimum(x, y)


@minimum.defvjp(vjp_temps=3)
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


@primitive("where", nin=3, save=(0,))
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


# --- unary --------------------------------------------------------------------

@primitive("negative")
def negative(xp, x):
    return xp.negative(x)


@negative.defvjp(grad_kinds=_into_g, vjp_temps=0)
def _negative_vjp(xp, g, saved, node, donate):
    return (xp.negative(g, out=g if donate else None),)


@primitive("exp", save=("out",))
def exp(xp, x):
    return xp.exp(x)


@exp.defvjp(grad_kinds=_into_g, vjp_temps=0)
def _exp_vjp(xp, g, saved, node, donate):
    return (xp.multiply(g, saved[0], out=g if donate else None),)


@primitive("log", save=(0,))
def log(xp, x):
    return xp.log(x)


@log.defvjp(grad_kinds=_into_g, vjp_temps=0)
def _log_vjp(xp, g, saved, node, donate):
    return (xp.divide(g, saved[0], out=g if donate else None),)


@primitive("log1p", save=(0,))
def log1p(xp, x):
    return xp.log1p(x)


@log1p.defvjp(grad_kinds=_into_g, vjp_temps=1)
def _log1p_vjp(xp, g, saved, node, donate):
    return (xp.divide(g, xp.add(saved[0], 1.0), out=g if donate else None),)


@primitive("sqrt", save=("out",))
def sqrt(xp, x):
    return xp.sqrt(x)


@sqrt.defvjp(grad_kinds=_into_g, vjp_temps=1)
def _sqrt_vjp(xp, g, saved, node, donate):
    h = xp.multiply(g, 0.5, out=g if donate else None)
    return (xp.divide(h, saved[0], out=h if donate else None),)


@primitive("abs", save=(0,))
def abs(xp, x):  # noqa: A001  (the public name is gpuad.abs, as in numpy and torch)
    return xp.abs(x)


@abs.defvjp(grad_kinds=_into_g, vjp_temps=1)
def _abs_vjp(xp, g, saved, node, donate):
    return (xp.multiply(g, xp.sign(saved[0]), out=g if donate else None),)


@primitive("sin", save=(0,))
def sin(xp, x):
    return xp.sin(x)


@sin.defvjp(grad_kinds=_into_g, vjp_temps=1)
def _sin_vjp(xp, g, saved, node, donate):
    return (xp.multiply(g, xp.cos(saved[0]), out=g if donate else None),)


@primitive("cos", save=(0,))
def cos(xp, x):
    return xp.cos(x)


@cos.defvjp(grad_kinds=_into_g, vjp_temps=2)
def _cos_vjp(xp, g, saved, node, donate):
    return (xp.multiply(g, xp.negative(xp.sin(saved[0])), out=g if donate else None),)


@primitive("sinh", save=(0,))
def sinh(xp, x):
    return xp.sinh(x)


@sinh.defvjp(grad_kinds=_into_g, vjp_temps=1)
def _sinh_vjp(xp, g, saved, node, donate):
    return (xp.multiply(g, xp.cosh(saved[0]), out=g if donate else None),)


@primitive("cosh", save=(0,))
def cosh(xp, x):
    return xp.cosh(x)


@cosh.defvjp(grad_kinds=_into_g, vjp_temps=1)
def _cosh_vjp(xp, g, saved, node, donate):
    return (xp.multiply(g, xp.sinh(saved[0]), out=g if donate else None),)


@primitive("tanh", save=("out",))
def tanh(xp, x):
    return xp.tanh(x)


@tanh.defvjp(grad_kinds=_into_g, vjp_temps=2)
def _tanh_vjp(xp, g, saved, node, donate):
    # dz = g (1 - y^2): one temporary t, then written into g (read 2N, write N).
    # t is ours, so when the arrays are large (donate) it is overwritten in place.
    y = saved[0]
    t = xp.multiply(y, y)
    t = xp.subtract(1.0, t, out=t if donate else None)
    return (xp.multiply(g, t, out=g if donate else None),)


def _sigmoid(xp, x):
    # exp(-|x|) never overflows; e/(1+e) for x<0 keeps the tiny values exact.
    e = xp.exp(xp.negative(xp.abs(x)))
    d = xp.add(e, 1.0)
    return xp.where(xp.greater_equal(x, 0), xp.divide(1.0, d), xp.divide(e, d))


@primitive("sigmoid", save=("out",))
def sigmoid(xp, x):
    """1 / (1 + exp(-x)), computed without overflow."""
    return _sigmoid(xp, x)


@sigmoid.defvjp(grad_kinds=_into_g, vjp_temps=2)
def _sigmoid_vjp(xp, g, saved, node, donate):
    y = saved[0]
    return (xp.multiply(g, xp.multiply(y, xp.subtract(1.0, y)), out=g if donate else None),)


@primitive("relu", save=("out",))
def relu(xp, x):
    """max(x, 0); the gradient at 0 is 0, as in PyTorch."""
    return xp.maximum(x, 0)


@relu.defvjp(grad_kinds=_into_g, vjp_temps=1)
def _relu_vjp(xp, g, saved, node, donate):
    return (xp.multiply(g, xp.greater(saved[0], 0), out=g if donate else None),)


_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_K = math.sqrt(2.0 / math.pi)


@primitive("gelu", save=(0,))
def gelu(xp, x, approximate="none"):
    """x * Phi(x), exact (erf) or with PyTorch's tanh approximation."""
    if approximate == "tanh":
        inner = xp.multiply(_GELU_K, xp.add(x, xp.multiply(0.044715, xp.multiply(x, xp.multiply(x, x)))))
        return xp.multiply(xp.multiply(0.5, x), xp.add(1.0, xp.tanh(inner)))
    return xp.multiply(xp.multiply(0.5, x), xp.add(1.0, xp.erf(xp.multiply(x, _SQRT1_2))))


@gelu.defvjp(grad_kinds=_into_g, vjp_temps=8)
def _gelu_vjp(xp, g, saved, node, donate):
    (x,) = saved
    if node.params and node.params.get("approximate") == "tanh":
        x2 = xp.multiply(x, x)
        t = xp.tanh(xp.multiply(_GELU_K, xp.add(x, xp.multiply(0.044715, xp.multiply(x2, x)))))
        dinner = xp.multiply(_GELU_K, xp.add(1.0, xp.multiply(3 * 0.044715, x2)))
        d = xp.add(xp.multiply(0.5, xp.add(1.0, t)),
                   xp.multiply(xp.multiply(0.5, x), xp.multiply(xp.subtract(1.0, xp.multiply(t, t)), dinner)))
    else:
        cdf = xp.multiply(0.5, xp.add(1.0, xp.erf(xp.multiply(x, _SQRT1_2))))
        pdf = xp.multiply(_INV_SQRT_2PI, xp.exp(xp.multiply(-0.5, xp.multiply(x, x))))
        d = xp.add(cdf, xp.multiply(x, pdf))
    return (xp.multiply(g, d, out=g if donate else None),)


@primitive("softplus", save=(0,))
def softplus(xp, x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (as PyTorch)."""
    bx = xp.multiply(x, beta) if beta != 1.0 else x
    soft = xp.add(xp.log1p(xp.exp(xp.negative(xp.abs(bx)))), xp.maximum(bx, 0))
    if beta != 1.0:
        soft = xp.divide(soft, beta)
    return xp.where(xp.greater(bx, threshold), x, soft)


@softplus.defvjp(grad_kinds=_into_g, vjp_temps=6)
def _softplus_vjp(xp, g, saved, node, donate):
    (x,) = saved
    params = node.params or {}
    beta, threshold = params.get("beta", 1.0), params.get("threshold", 20.0)
    bx = xp.multiply(x, beta) if beta != 1.0 else x
    d = xp.where(xp.greater(bx, threshold), 1.0, _sigmoid(xp, bx))
    return (xp.multiply(g, d, out=g if donate else None),)


@primitive("erf", save=(0,))
def erf(xp, x):
    """The error function; d/dx erf = 2/sqrt(pi) exp(-x^2)."""
    return xp.erf(x)


@erf.defvjp(grad_kinds=_into_g, vjp_temps=4)
def _erf_vjp(xp, g, saved, node, donate):
    (x,) = saved
    d = xp.multiply(2.0 / math.sqrt(math.pi), xp.exp(xp.negative(xp.multiply(x, x))))
    return (xp.multiply(g, d, out=g if donate else None),)


@primitive("astype", save=())
def astype(xp, x, dtype):
    """Cast; the gradient is cast back to the input's dtype by the engine."""
    return xp.astype(x, dtype)


@astype.defvjp(grad_kinds=lambda node, donate: ("g",))
def _astype_vjp(xp, g, saved, node, donate):
    return (g,)


# --- no gradient: comparisons and sign ----------------------------------------

def _nondiff(name, fn):
    return primitive(name, nin=2 if name != "sign" else 1, differentiable=False)(fn)


less = _nondiff("less", lambda xp, x, y: xp.less(x, y))
less_equal = _nondiff("less_equal", lambda xp, x, y: xp.less_equal(x, y))
greater = _nondiff("greater", lambda xp, x, y: xp.greater(x, y))
greater_equal = _nondiff("greater_equal", lambda xp, x, y: xp.greater_equal(x, y))
equal = _nondiff("equal", lambda xp, x, y: xp.equal(x, y))
not_equal = _nondiff("not_equal", lambda xp, x, y: xp.not_equal(x, y))
sign = _nondiff("sign", lambda xp, x: xp.sign(x))

for _op in (negative, exp, log, log1p, sqrt, abs, sin, cos, sinh, cosh, tanh, sigmoid, relu, gelu,
            softplus, erf):
    _op.keeps_shape = True
for _op in (add, subtract, multiply, divide, power, maximum, minimum, where):
    _op.broadcasting = True
# Forward temporaries of the composite numpy expressions (traffic model).
sigmoid.fwd_temps, gelu.fwd_temps, softplus.fwd_temps = 6, 5, 7

