"""The xp vocabulary: one declaration per primitive, read by every pass and
code generator (fusion, buffer planning, fold, dce, cse, remat, the tracer's
view rules, the abstract shape rules, forward mode, and the Python, CPU-kernel
and Triton generators).

Columns: the kind, how it writes into a given buffer (`out`), the fold rule
(`identity`), the JVP rule (the unary maps' come from gpuad/ops/derivatives.py,
from the same expression as their VJP), and each generator's expression
(`{0}`, `{1}`: the operands). A generator with no expression for a member
leaves that group to numpy's chunked code. A new primitive is a line here;
tests/test_declarations.py fails when a traced forward, VJP, JVP or optimizer
update reaches a call with no line.

>>> from gpuad.xp import lookup
>>> lookup("tanh").triton, lookup("tanh").cpu
('_tanh({0})', 'numpy')
"""
from . import batching as b, tangents as t
from .entry import (CAST, CREATION, EFFECT, ELEMENTWISE, NUMPY_PHASE, OUT_COPY, OUT_KW, OUT_REDUCE, OUT_UFUNC,
                     REDUCTION, STRUCTURAL, VIEW, ZERO, alias, declare)


def _ufunc(name, jvp=None, **forms):
    """An elementwise numpy ufunc: out=, broadcast shapes, numpy's dtype resolution."""
    return declare(name, ELEMENTWISE, out=OUT_UFUNC, shape="broadcast", jvp=jvp, batch=b.elementwise, **forms)


def _arith(name, op, identity, jvp):
    e = f"({{0}} {op} {{1}})"
    return _ufunc(name, jvp, identity=identity, triton=e, cpu=e, math=e)


# -- arithmetic ---------------------------------------------------------------------
_arith("add", "+", (0, "both"), t.add)
_arith("subtract", "-", (0, "right"), t.subtract)
_arith("multiply", "*", (1, "both"), t.multiply)
_arith("divide", "/", (1, "right"), t.divide)
alias("true_divide", "divide")
_ufunc("power", t.power, cpu=NUMPY_PHASE)            # by a constant exponent only, between phases
# numpy's maximum/minimum: a NaN in either gives NaN; equal values (signed zeros too) give b
_ufunc("maximum", t.select("greater"), triton="tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
       cpu="_pick({0}, {1}, {0} > {1})")
_ufunc("minimum", t.select("less"), triton="tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
       cpu="_pick({0}, {1}, {0} < {1})")
_ufunc("arctan2", t.arctan2)
_ufunc("remainder", t.remainder)
_ufunc("floor_divide", ZERO)
_ufunc("negative", triton="(-{0})", cpu="(-{0})", math="(-{0})")
_ufunc("absolute", triton="tl.abs({0})", cpu="abs({0})", math="abs({0})")
alias("abs", "absolute")
_ufunc("square", t.unary(t.square_d), triton="({0} * {0})", cpu="({0} * {0})", math="({0} * {0})")
_ufunc("reciprocal", t.unary(t.reciprocal_d), triton="(1.0 / {0})")
_ufunc("sqrt", triton="tl.sqrt({0})", cpu="np.sqrt({0})", cpu_dtypes=("float32", "float64"), math="sqrt({0})")

# -- transcendental maps: the CPU kernel calls numpy's own SIMD ufunc between phases
# (libm's versions differ from numpy's in last bits); Python floats use math's
_ufunc("exp", triton="tl.exp({0})", cpu=NUMPY_PHASE, math="exp({0})")
_ufunc("log", triton="tl.log({0})", cpu=NUMPY_PHASE, math="log({0})")
_ufunc("sin", triton="tl.sin({0})", cpu=NUMPY_PHASE, math="sin({0})")
_ufunc("cos", triton="tl.cos({0})", cpu=NUMPY_PHASE, math="cos({0})")
_ufunc("tanh", triton="_tanh({0})", cpu=NUMPY_PHASE, math="tanh({0})")
for _name in ("tan", "sinh", "cosh", "log1p", "expm1"):
    _ufunc(_name, cpu=NUMPY_PHASE, math=f"{_name}({{0}})")
_ufunc("arctan", cpu=NUMPY_PHASE, math="atan({0})")
alias("atan", "arctan")
_ufunc("log2", cpu=NUMPY_PHASE)
_ufunc("log10", cpu=NUMPY_PHASE)
_ufunc("exp2", t.unary(t.exp2_d), cpu=NUMPY_PHASE)
_ufunc("arcsin", t.unary(t.arcsin_d))
_ufunc("arccos", t.unary(t.arccos_d))
# gpuad's erf (numpy has none): float32 through the vectorisable kernel, bitwise the table's
declare("erf", ELEMENTWISE, out=OUT_COPY, triton="tl.math.erf({0})",
        cpu="_erf({0}, erf_c0, erf_c1, erf_c2, erf_c3, erf_last)", cpu_dtypes=("float32",), batch=b.elementwise)

# -- piecewise constant: the tangent is zero ---------------------------------------------
for _name in ("floor", "ceil", "rint", "trunc", "sign", "isfinite", "isnan", "isinf", "bitwise_and",
              "bitwise_or", "bitwise_xor", "invert", "logical_xor"):
    _ufunc(_name, ZERO)
for _name, _op in (("greater", ">"), ("less", "<"), ("greater_equal", ">="), ("less_equal", "<="),
                   ("equal", "=="), ("not_equal", "!=")):
    _ufunc(_name, ZERO, triton=f"({{0}} {_op} {{1}})", cpu=f"({{0}} {_op} {{1}})", cpu_operands="common")
_ufunc("logical_and", ZERO, triton="({0} & {1})", cpu="({0} and {1})", cpu_operands="bool")
_ufunc("logical_or", ZERO, triton="({0} | {1})", cpu="({0} or {1})", cpu_operands="bool")
_ufunc("logical_not", ZERO, triton="({0} == 0)", cpu="(not {0})", cpu_operands="bool")
declare("round", ELEMENTWISE, jvp=ZERO, batch=b.elementwise)

# -- elementwise, but not ufuncs: computed, then copied into a planned buffer --------------
declare("where", ELEMENTWISE, out=OUT_COPY, jvp=t.where, triton="tl.where({0} != 0, {1}, {2})",
        cpu="({1} if {0} else {2})", cpu_operands=("bool", "out", "out"), batch=b.elementwise)
declare("astype", ELEMENTWISE, out=OUT_COPY, jvp=t.linear("astype"), triton=CAST, cpu=CAST, may_alias=True,
        batch=b.elementwise)
declare("clip", ELEMENTWISE, jvp=t.clip, batch=b.elementwise)
declare("copy", ELEMENTWISE, jvp=t.linear("copy"), batch=b.same)
declare("zero_where", STRUCTURAL, jvp=t.zero_where, batch=b.zero_where)       # writes into its first argument (a donated g)

# -- reductions: a row reduction closes a fused group ------------------------------------
declare("sum", REDUCTION, out=OUT_REDUCE, jvp=t.linear("sum"), triton="tl.sum({0}, axis=0)", fill="0.0",
        row_reduce=True, batch=b.reduction)
declare("mean", REDUCTION, out=OUT_REDUCE, jvp=t.linear("mean"), triton="(tl.sum({0}, axis=0) / {n})",
        fill="0.0", row_reduce=True, batch=b.reduction)
declare("max", REDUCTION, out=OUT_REDUCE, jvp=t.extreme("max"), triton="tl.max({0}, axis=0)",
        fill="float('-inf')", row_reduce=True, batch=b.reduction)
declare("min", REDUCTION, out=OUT_REDUCE, jvp=t.extreme("min"), triton="tl.min({0}, axis=0)",
        fill="float('inf')", row_reduce=True, batch=b.reduction)
alias("amax", "max")
alias("amin", "min")
declare("any", REDUCTION, jvp=ZERO, batch=b.reduction)
declare("all", REDUCTION, jvp=ZERO, batch=b.reduction)
declare("cumsum", STRUCTURAL, jvp=t.linear("cumsum"), batch=b.along_axis)
declare("cumprod", STRUCTURAL, jvp=t.cumprod, batch=b.along_axis)
for _name in ("argmax", "argmin", "argsort"):
    declare(_name, STRUCTURAL, jvp=ZERO, batch=b.along_axis)

# -- views: numpy never copies for the "always" ones, so a write into one is a write
# into its base
_VIEWS = {"getitem": b.getitem, "transpose": b.transpose, "swapaxes": b.axes_args(1, 2),
          "broadcast_to": b.shape_of, "reshape": b.shape_of, "flip": b.axes_args(1), "squeeze": b.axes_args(1),
          "expand_dims": b.axes_args(1, rank_plus=1)}
for _name, _rule in _VIEWS.items():
    declare(_name, VIEW, jvp=t.linear(_name), view="always", batch=_rule)
declare("stop_gradient", VIEW, jvp=ZERO, view="always", batch=b.stop_gradient)
for _name, _rule in (("moveaxis", b.axes_args(1, 2)), ("ravel", b.ravel), ("diagonal", b.diagonal)):
    declare(_name, VIEW, jvp=t.linear(_name), view="maybe", batch=_rule)
declare("asarray", VIEW, jvp=t.linear("asarray"), may_alias=True, batch=b.same)
declare("ascontiguousarray", VIEW, jvp=t.linear("ascontiguousarray"), may_alias=True, batch=b.same)

# -- structural -----------------------------------------------------------------------------
declare("matmul", STRUCTURAL, out=OUT_UFUNC, jvp=t.matmul, batch=b.matmul)
declare("einsum", STRUCTURAL, jvp=t.einsum, batch=b.einsum)
declare("concatenate", STRUCTURAL, out=OUT_KW, jvp=t.concat("concatenate"), batch=b.concatenate)
declare("stack", STRUCTURAL, jvp=t.concat("stack"), batch=b.concatenate)
for _name, _rule in (("take_along_axis", b.take_along_axis), ("take", b.take), ("tril", b.same), ("triu", b.same),
                     ("roll", b.roll), ("tile", b.tile), ("repeat", b.repeat), ("broadcast_copy", None)):
    declare(_name, STRUCTURAL, jvp=t.linear(_name), batch=_rule)
declare("pad", STRUCTURAL, jvp=t.pad, batch=b.pad)
declare("scatter_add", STRUCTURAL, out=OUT_COPY, jvp=t.scatter_add, batch=b.scatter_add)
declare("setitem", STRUCTURAL, jvp=t.setitem, batch=b.setitem)
declare("ufunc_at", STRUCTURAL)

# -- creation: from shapes and numbers ----------------------------------------------------------
for _name in ("arange", "zeros", "ones", "full", "eye"):
    declare(_name, CREATION, jvp=ZERO)
for _name in ("zeros_like", "ones_like"):
    declare(_name, CREATION, jvp=ZERO, batch=b.like)
declare("empty", CREATION, jvp=ZERO, fresh=True)                # contents undefined
declare("buffer", CREATION, jvp=ZERO, fresh=True)
declare("empty_like", CREATION, jvp=ZERO, fresh=True, batch=b.like)
declare("dropout_keep", CREATION, out=OUT_KW, jvp=ZERO)       # attention's mask, from its seed and tile

# -- effects: kept, in order, even when nothing reads them ---------------------------------------
for _name in ("random_draw", "check_none", "check_value", "host_callback"):
    declare(_name, EFFECT, jvp=ZERO, batch=b.random_effect)
