"""What the declaration of one xp primitive holds, and the table they live in.

An xp primitive is a call in the numpy vocabulary that forwards and VJPs are
written in (`xp.multiply`, `xp.sum`, `xp.erf`, ...): what the tracer records
and what every compiler pass and code generator reads. Each is declared once
(gpuad/xp/vocabulary.py); every pass asks its declaration rather than keeping
a table of names of its own.

>>> from gpuad.xp import lookup
>>> d = lookup("multiply")
>>> d.kind, d.identity, d.triton.format("a", "b")
('elementwise', (1, 'both'), '(a * b)')
>>> lookup("sum").row_reduce, lookup("reshape").kind
(True, 'view')
"""

ELEMENTWISE = "elementwise"     # one output element from the same element of each (broadcast) input
REDUCTION = "reduction"         # over axes: sum, mean, max, min
VIEW = "view"                   # a new shape or order over (possibly) the same buffer
CREATION = "creation"           # made from shapes and numbers alone
EFFECT = "effect"               # must run, in order, even when nothing reads its result
STRUCTURAL = "structural"       # the rest: contractions, gathers, scatters, concatenations
KINDS = (ELEMENTWISE, REDUCTION, VIEW, CREATION, EFFECT, STRUCTURAL)

# How an op writes into a buffer it is given (the planner's question):
OUT_UFUNC = "ufunc"             # out=, as numpy's ufuncs and matmul
OUT_REDUCE = "reduce"           # out= on a reduction (when no dtype= changes its result)
OUT_COPY = "copy"               # computed, then copied into it (np.where, astype, gpuad's erf)
OUT_KW = "kw"                   # out= on the CPU backend only (concatenate, attention's dropout masks)

ZERO = "zero"                   # a JVP rule: the output is piecewise constant, its tangent is 0
CAST = "cast"                   # a generator's form: a conversion to the output dtype
NUMPY_PHASE = "numpy"           # the CPU kernel's form: numpy's own ufunc between kernel phases

_TABLE = {}


class XpPrim:
    """The declaration of one xp primitive.

    kind: one of KINDS. out: how it writes into a given buffer (OUT_*; None: it
    allocates its own). identity: (unit, sides) for the fold pass: x op unit is x,
    sides "both" or "right". jvp: rule(xp, args, tans, out, params) -> the output's
    tangent (None: zero), ZERO, or None (no forward-mode rule). shape: "broadcast"
    (numpy's ufunc rule: broadcast shapes, numpy's dtype resolution) or "namespace"
    (a method of gpuad.backends.abstract's namespace). triton, cpu, math: the
    expression each generator writes for it (str.format of its operands' names;
    None: that generator leaves a group with it to numpy). cpu_operands: the dtype
    the CPU kernel reads each operand as ("out": the result's, "common": the
    operands' shared dtype, "bool"); cpu_dtypes: the result dtypes the CPU form is
    numpy's bits for. fill: a reduction's starting value in Triton. view: "always"
    (numpy never copies) or "maybe". may_alias: may hand back its argument itself
    (astype to the same dtype). fresh: uninitialised contents (never merged, folded
    or recomputed). batch: its batching rule (gpuad/xp/batching.py: how it runs on
    a batch of examples under vmap; None: vmap refuses it by name).
    """

    __slots__ = ("name", "kind", "out", "identity", "jvp", "shape", "triton", "cpu", "cpu_operands",
                 "cpu_dtypes", "math", "fill", "row_reduce", "view", "may_alias", "fresh", "batch")

    def __init__(self, name, kind, out=None, identity=None, jvp=None, shape="namespace", triton=None, cpu=None,
                 cpu_operands="out", cpu_dtypes=None, math=None, fill=None, row_reduce=False, view=None,
                 may_alias=False, fresh=False, batch=None):
        if kind not in KINDS:
            raise ValueError(f"gpuad.xp: {name}: kind must be one of {KINDS}, not {kind!r}")
        self.name, self.kind, self.out, self.identity, self.jvp = name, kind, out, identity, jvp
        self.shape, self.triton, self.cpu, self.cpu_operands = shape, triton, cpu, cpu_operands
        self.cpu_dtypes, self.math, self.fill, self.row_reduce = cpu_dtypes, math, fill, row_reduce
        self.view, self.may_alias, self.fresh, self.batch = view, may_alias, fresh, batch

    @property
    def effect(self):
        return self.kind == EFFECT

    @property
    def elementwise(self):
        return self.kind == ELEMENTWISE

    @property
    def inplace(self):
        """May its result share the buffer of a same-shape input that dies at it?"""
        return self.kind == ELEMENTWISE and self.out == OUT_UFUNC

    def __repr__(self):
        return f"XpPrim({self.name!r}, {self.kind})"


def declare(name, kind, **fields):
    """Declare xp primitive `name` (once: a second declaration is a mistake)."""
    if name in _TABLE:
        raise ValueError(f"gpuad.xp: {name!r} is declared twice")
    d = _TABLE[name] = XpPrim(name, kind, **fields)
    return d


def alias(name, of):
    """`name` is another spelling of `of` (numpy's abs for absolute): the same declaration."""
    _TABLE[name] = _TABLE[of]


def set_jvp(name, rule):
    """Attach a JVP rule to a declared primitive (the derivative table registers the
    rules of the unary ops it declares, from the same expression as their VJP)."""
    d = _TABLE.get(name)
    if d is None:
        raise KeyError(f"gpuad.xp: no declaration of {name!r} to attach a JVP rule to (gpuad/xp/vocabulary.py)")
    d.jvp = rule


def lookup(name):
    """The declaration of xp primitive `name`, or None."""
    return _TABLE.get(name)


def declared():
    """Every declared name (aliases included), sorted."""
    return sorted(_TABLE)
