"""The derivative table: simple unary elementwise ops, one line each.

Each line declares a primitive completely: its name (its forward is
`xp.<name>` unless given), what its VJP keeps ("x", "out" or nothing), its
derivative as an expression of that kept value, and how the incoming
gradient meets it: dx = g * d ("multiply"), g / d ("divide"), or 0 where
the mask d holds and g elsewhere ("select": never g * mask, which turns an
infinite g into NaN), written into g when the engine donates it (one pass:
read 2N, write N). `domain` is
where the op is smooth (the generated gradcheck case samples it; "away0"
keeps 0.2 away from a kink at 0); `temps` counts the full-size temporaries
the derivative writes and reads back (the traffic model).

This is PyTorch's derivatives.yaml and HIPS autograd's defvjp lines in
Python: adding such an op is one line here plus nothing else (the function
gpuad.<name>, the Tensor method, the create_graph namespace entry and the
gradcheck and peak-prediction tests follow from it; see CONTRIBUTING in the
README).

>>> import gpuad
>>> x = gpuad.tensor([0.5, 1.0], dtype="float64", requires_grad=True)
>>> gpuad.log(x).sum().backward()
>>> x.grad.numpy()
array([2., 1.])
"""
import math

import numpy as np

from ..generated import load
from ..xp import ZERO, lookup, set_jvp
from ..xp.tangents import finite_zero
from .elementwise import _tmp
from .registry import call, primitive, UNARY

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_K = math.sqrt(2.0 / math.pi)


def unary(name, keep, d, via="multiply", domain=(-2.0, 2.0), temps=1, fwd=None, fwd_temps=0, method=True,
          operator=None, doc=None, float_result=True):
    """Declare unary elementwise primitive `name` from its derivative `d`: an
    expression of the kept value (named `x` or `out`), `xp` and `params`.
    This records the declaration; gpuad.unary also publishes it (gpuad.<name>,
    the Tensor method: gpuad/surface.py).

    >>> from gpuad.ops.derivatives import unary
    >>> cube = unary("_doc_cube", "x", "xp.multiply(3.0, xp.multiply(x, x))",
    ...              fwd=lambda xp, x: xp.multiply(x, xp.multiply(x, x)))
    >>> import gpuad
    >>> x = gpuad.tensor(2.0, dtype="float64", requires_grad=True)
    >>> cube(x).backward(); x.grad.item()
    12.0
    >>> gpuad.surface.unregister("_doc_cube")
    """
    forward = fwd if fwd is not None else _xp_function(name)
    forward.__doc__ = doc or forward.__doc__ or f"{name}(x), elementwise."
    op = primitive(name, inputs=("x",), kind=UNARY, retain={keep: None} if keep else None,
                   vjp_temps=temps, fwd_temps=fwd_temps, method=method, operator=operator, export=True,
                   domain=domain, float_result=float_result)(forward)
    op.defvjp(_vjp_from(name, keep, d, via))
    op.derivative = d
    if fwd is None and lookup(name) is not None:
        # its forward is the xp primitive of the same name: forward mode's rule for that
        # primitive comes from this same expression
        set_jvp(name, _jvp_from(name, keep, d, via))
    return op


def _vjp_from(name, keep, d, via):
    """The VJP g -> (g via d,), written into g when donated, compiled from the table's
    expression: one function per op, as if written by hand (this runs on every node)."""
    if via not in ("multiply", "divide", "select"):
        raise ValueError(f"gpuad.unary: {name}: via must be 'multiply', 'divide' or 'select', not {via!r}")
    if via == "select" and d == "True":     # 0 everywhere (floor, sign, ...): made on g's device
        result = "(xp.copyto(g, 0), g)[1] if donate else xp.zeros_like(g)"
    elif via == "select":   # d is the mask of where the gradient is 0: chosen, never multiplied
        result = f"xp.zero_where(g, {d}) if donate else xp.where({d}, 0.0, g)"
    else:
        result = f"xp.{via}(g, {d}, out=g if donate else None)"
    source = (f"def {name}_vjp(xp, g, saved, node, donate):\n"
              + (f"    {keep} = saved[0]\n" if keep else "")
              + ("    params = node.params or {}\n" if "params" in d else "")
              + f"    return ({result},)\n")
    return load(source, f"derivative of {name}", dict(_DERIVATIVE_SCOPE))[f"{name}_vjp"]


def _jvp_from(name, keep, d, via):
    """The JVP rule (gpuad/xp/tangents.py's signature) of the xp primitive `name`, from the
    derivative expression its VJP is compiled from: tangent via d."""
    if via == "select" and d == "True":
        return ZERO
    if via == "select":
        result = f"xp.where({d}, 0.0, tan)"
    else:
        result = f"finite_zero(xp, tan, xp.{via}(tan, {d}))"
    source = (f"def {name}_jvp(xp, args, tans, out, params):\n"
              "    tan = tans[0]\n"
              "    if tan is None:\n"
              "        return None\n"
              + ("    x = args[0]\n" if keep == "x" else "")
              + "    with np.errstate(divide='ignore', invalid='ignore'):\n"
              + f"        return {result}\n")
    scope = dict(_DERIVATIVE_SCOPE, np=np, finite_zero=finite_zero)
    return load(source, f"tangent of {name}", scope)[f"{name}_jvp"]


def _erf_d(xp, x):
    # each step writes into the temporary the one before made (_tmp): one scratch buffer
    t = xp.multiply(x, x)
    t = xp.negative(t, out=_tmp(t))
    t = xp.exp(t, out=_tmp(t))
    return xp.multiply(2.0 / math.sqrt(math.pi), t, out=_tmp(t))      # 2/sqrt(pi) exp(-x^2)


def _xp_function(name):
    """lambda xp, x: xp.<name>(x), with the attribute spelled out (no getattr per call:
    forwards run on every op)."""
    return load(f"def {name}(xp, x):\n    return xp.{name}(x)\n", f"forward of {name}")[name]   # an identifier from this table


def _sigmoid(xp, x):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) never overflows, and e/(1+e)
    for x < 0 keeps the tiny values exact."""
    e = xp.exp(xp.negative(xp.abs(x)))
    d = xp.add(e, 1.0)
    return xp.where(xp.greater_equal(x, 0), xp.divide(1.0, d), xp.divide(e, d))


def _gelu(xp, x, approximate="none"):
    """x * Phi(x), exact (erf) or with PyTorch's tanh approximation."""
    if approximate == "tanh":
        inner = xp.multiply(_GELU_K, xp.add(x, xp.multiply(0.044715, xp.multiply(x, xp.multiply(x, x)))))
        return xp.multiply(xp.multiply(0.5, x), xp.add(1.0, xp.tanh(inner)))
    return xp.multiply(xp.multiply(0.5, x), xp.add(1.0, xp.erf(xp.multiply(x, _SQRT1_2))))


def _gelu_d(xp, x, approximate="none"):
    if approximate == "tanh":
        x2 = xp.multiply(x, x)
        t = xp.tanh(xp.multiply(_GELU_K, xp.add(x, xp.multiply(0.044715, xp.multiply(x2, x)))))
        dinner = xp.multiply(_GELU_K, xp.add(1.0, xp.multiply(3 * 0.044715, x2)))
        return xp.add(xp.multiply(0.5, xp.add(1.0, t)),
                      xp.multiply(xp.multiply(0.5, x), xp.multiply(xp.subtract(1.0, xp.multiply(t, t)), dinner)))
    cdf = xp.multiply(0.5, xp.add(1.0, xp.erf(xp.multiply(x, _SQRT1_2))))
    pdf = xp.multiply(_INV_SQRT_2PI, xp.exp(xp.multiply(-0.5, xp.multiply(x, x))))
    return xp.add(cdf, xp.multiply(x, pdf))


def _softplus(xp, x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (as PyTorch)."""
    bx = xp.multiply(x, beta) if beta != 1.0 else x
    soft = xp.add(xp.log1p(xp.exp(xp.negative(xp.abs(bx)))), xp.maximum(bx, 0))
    if beta != 1.0:
        soft = xp.divide(soft, beta)
    return xp.where(xp.greater(bx, threshold), x, soft)


def _softplus_d(xp, x, beta=1.0, threshold=20.0):
    bx = xp.multiply(x, beta) if beta != 1.0 else x
    # the sigmoid primitive (call: recorded under create_graph), whose own VJP is right at 0:
    # the overflow-safe formula goes through |x|, whose derivative at 0 is 0
    return xp.where(xp.greater(bx, threshold), 1.0, call(sigmoid, xp, bx))


# What the derivative expressions may use besides xp, x, out and params. `(t := ...)`
# names a temporary the expression made itself, which `out=_tmp(t)` may then
# overwrite when it is large enough to pay: one scratch buffer instead of two.
_DERIVATIVE_SCOPE = {"_tmp": _tmp, "_erf_d": _erf_d, "_gelu_d": _gelu_d, "_softplus_d": _softplus_d,
                     "_LN2": math.log(2.0), "_LN10": math.log(10.0)}

# name                keep   derivative (an expression)                     via, domain, temporaries
negative = unary("negative", None, "-1.0", temps=0, operator="neg", float_result=False)
exp = unary("exp", "out", "out", temps=0)
log = unary("log", "x", "x", via="divide", domain=(0.5, 2.0), temps=0)
log1p = unary("log1p", "x", "xp.add(x, 1.0)", via="divide", domain=(-0.5, 2.0))
sqrt = unary("sqrt", "out", "xp.multiply(out, 2.0)", via="divide", domain=(0.5, 2.0))
abs = unary("abs", "x", "xp.sign(x)", domain="away0", operator="abs", float_result=False)  # noqa: A001  (gpuad.abs, as numpy and torch)
sin = unary("sin", "x", "xp.cos(x)")
cos = unary("cos", "x", "xp.negative(t := xp.sin(x), out=_tmp(t))", temps=2)
sinh = unary("sinh", "x", "xp.cosh(x)")
cosh = unary("cosh", "x", "xp.sinh(x)")
tanh = unary("tanh", "out", "xp.subtract(1.0, t := xp.multiply(out, out), out=_tmp(t))", temps=2)
sigmoid = unary("sigmoid", "out", "xp.multiply(out, t := xp.subtract(1.0, out), out=_tmp(t))", domain=(-8, 8),
                temps=2, fwd=_sigmoid, fwd_temps=6)
relu = unary("relu", "out", "xp.less_equal(out, 0)", via="select", domain="away0", float_result=False,
             fwd=lambda xp, x: xp.maximum(x, 0), doc="max(x, 0); the gradient at 0 is 0, as in PyTorch.")
erf = unary("erf", "x", "_erf_d(xp, x)", temps=4, doc="The error function; d/dx erf = 2/sqrt(pi) exp(-x^2).")
gelu = unary("gelu", "x", "_gelu_d(xp, x, **params)", domain=(-3, 3), temps=8, fwd=_gelu, fwd_temps=5)
softplus = unary("softplus", "x", "_softplus_d(xp, x, **params)", domain=(-5, 5), temps=6, fwd=_softplus,
                 fwd_temps=7)
tan = unary("tan", "out", "xp.add(1.0, t := xp.multiply(out, out), out=_tmp(t))", domain=(-1.2, 1.2))
reciprocal = unary("reciprocal", "out", "xp.negative(t := xp.multiply(out, out), out=_tmp(t))",
                   domain=(0.5, 2.0), fwd=lambda xp, x: xp.divide(1.0, x))
rsqrt = unary("rsqrt", "out", "xp.multiply(-0.5, t := xp.multiply(out, xp.multiply(out, out)), out=_tmp(t))",
              domain=(0.5, 2.0), temps=2, fwd=lambda xp, x: xp.divide(1.0, xp.sqrt(x)))
expm1 = unary("expm1", "out", "xp.add(out, 1.0)")
log2 = unary("log2", "x", "xp.multiply(x, _LN2)", via="divide", domain=(0.5, 2.0))
log10 = unary("log10", "x", "xp.multiply(x, _LN10)", via="divide", domain=(0.5, 2.0))
atan = unary("atan", "x", "xp.add(1.0, t := xp.multiply(x, x), out=_tmp(t))", via="divide")
asin = unary("asin", "x", "xp.sqrt(xp.subtract(1.0, xp.multiply(x, x)))", via="divide", domain=(-0.9, 0.9),
             fwd=lambda xp, x: xp.arcsin(x))
acos = unary("acos", "x", "xp.negative(xp.sqrt(xp.subtract(1.0, xp.multiply(x, x))))", via="divide",
             domain=(-0.9, 0.9), fwd=lambda xp, x: xp.arccos(x))
# piecewise constant: the gradient is 0 everywhere (torch's zeros, selected: never 0 * inf)
floor = unary("floor", None, "True", via="select", float_result=False, temps=0)
ceil = unary("ceil", None, "True", via="select", float_result=False, temps=0)
trunc = unary("trunc", None, "True", via="select", float_result=False, temps=0)
sign = unary("sign", None, "True", via="select", float_result=False, temps=0)
round_ = unary("round", None, "True", via="select", float_result=False, temps=0,  # noqa: A001
              fwd=lambda xp, x, decimals=0: xp.round(x, decimals) if decimals else xp.rint(x))
