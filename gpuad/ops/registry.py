"""Primitive declarations: everything about an op, side by side, in one place.

A primitive is declared once, with its forward as the decorated function:

    @primitive("multiply", inputs=("x", "y"), kind=BINARY, retain={"y": "x", "x": "y"},
               method=True, operator="mul")
    def multiply(xp, x, y):
        return xp.multiply(x, y)

    @multiply.defvjp
    def _(xp, g, saved, node, donate): ...

What the declaration carries:

    inputs      names of the array inputs, in order ("*" at the end: any number)
    kind        UNARY (elementwise, keeps shape and dtype), BINARY (broadcasting
                elementwise), REDUCTION, SHAPE (views and index ops), FUSED
                (several ops in one kernel), OTHER
    retain      what the VJP reads, by name: {saved item: the input whose gradient
                needs it, or None for always}. Items are input names or "out".
                `saved` reaches the VJP in this order, then the forward's aux
                arrays (has_aux), with None where an item was not needed.
    fwd_temps, vjp_temps   full-size temporaries the forward and the VJP write
                and read back: the traffic model's count
    dtypes      two operands: "promote" (torch's rules, gpuad/dtypes.py) or "same"
                (mixing dtypes is an error, as torch's matmul)
    float_result   integer inputs give the default float (exp, true division)
    method, operator, export   what gpuad/surface.py publishes for it:
                a Tensor method, the operator dunders, a gpuad.<name> function
    domain      (lo, hi): where the op is smooth, for the generated gradcheck case
    kernels     per provider ("triton", "cupy"): (forward, backward) replacing the
                generic code on that provider's arrays (register_kernel); "abstract"
                is the planner's stand-in for a VJP that cannot run on sizes

The shape-and-dtype rule is the forward itself run on abstract arrays
(`Primitive.abstract`, see abstract.py): it cannot disagree with the code.

`donate` tells the VJP it may overwrite `g` (the engine owns it and nobody
reads it afterwards; see gpuad/engine/policy.py), so it writes its result there
instead of allocating. The planner learns which gradients are written into
`g`, which are views of it and which are fresh by running the same VJP on
abstract arrays: nothing about it is declared twice.

>>> from gpuad.ops.registry import REGISTRY
>>> REGISTRY["tanh"].retain
{'out': None}
>>> REGISTRY["multiply"].saves((True, False))      # only x needs a gradient: keep y
('y',)
>>> import numpy as np
>>> from gpuad.backends.abstract import AbstractArray
>>> REGISTRY["matmul"].abstract(AbstractArray((5, 3), "float32"), AbstractArray((3, 2), "float32"))
AbstractArray((5, 2), float32)
"""
from ..backends.abstract import abstract_ns
from ..generated import load
from .dispatch import apply

REGISTRY = {}

UNARY, BINARY, REDUCTION, SHAPE, FUSED, OTHER = "unary", "binary", "reduction", "shape", "fused", "other"
KINDS = (UNARY, BINARY, REDUCTION, SHAPE, FUSED, OTHER)

OUT, UNUSED = -1, -2          # saved-item sources besides input positions


class Kernel:
    """A provider's forward and backward for one primitive.

    Both take the generic code's arguments; returning None declines (an
    unsupported dtype, say), and the generic code runs instead.
    """
    __slots__ = ("forward", "backward")

    def __init__(self, forward, backward):
        self.forward, self.backward = forward, backward


class Primitive:
    """A differentiable (or explicitly non-differentiable) operation; see the module docstring."""

    __slots__ = ("name", "fwd", "vjp", "inputs", "nin", "retain", "kind", "elementwise", "differentiable",
                 "has_aux", "fwd_temps", "vjp_temps", "method", "operator", "export", "domain", "kernels",
                 "dtypes", "float_result",
                 "broadcasts", "_sources", "_conditions", "_savers", "_all_inputs",
                 "__name__", "__wrapped__", "__dict__")

    def __init__(self, name, fwd, inputs=("x",), kind=OTHER, retain=None, differentiable=True, has_aux=False,
                 fwd_temps=0, vjp_temps=0, method=False, operator=None, export=False, domain=None,
                 dtypes="promote", float_result=False):
        if name in REGISTRY:
            raise ValueError(f"gpuad: primitive {name!r} is registered twice")
        if kind not in KINDS:
            raise ValueError(f"gpuad: {name}: kind must be one of {KINDS}, not {kind!r}")
        self.name = name
        self.fwd = fwd
        self.vjp = None
        self.inputs = tuple(inputs)
        variadic = self.inputs[-1:] == ("*",)
        self.nin = -1 if variadic else len(self.inputs)
        self.retain = dict(retain or {})
        self.kind = kind
        # Unary elementwise: a gradient has its input's shape and dtype already,
        # so the engine skips the unbroadcast and cast checks (the hot path).
        self.elementwise = kind == UNARY
        self.broadcasts = kind == BINARY        # shape errors name both operands (dispatch)
        self.differentiable = differentiable
        self.has_aux = has_aux
        self.fwd_temps, self.vjp_temps = fwd_temps, vjp_temps
        self.method, self.operator, self.export, self.domain = method, operator, export, domain
        self.kernels = {}
        self.dtypes = dtypes                # two operands: "promote" (torch's rules) or "same" (else an error)
        self.float_result = float_result    # integer inputs give the default float (exp, true division)
        position = {n: i for i, n in enumerate(self.inputs) if n != "*"}
        self._all_inputs = self.retain == {"*": None}        # variadic: keep every input
        for item, cond in ({} if self._all_inputs else self.retain).items():
            for n in (item, cond):
                if n is not None and n != "out" and n not in position:
                    raise ValueError(f"gpuad: {name}: retain names {n!r}, which is not an input of {self.inputs}")
        items = {} if self._all_inputs else self.retain
        self._sources = tuple(OUT if item == "out" else position[item] for item in items)
        self._conditions = tuple(None if c is None else position[c] for c in items.values())
        self._savers = {}
        self.__doc__ = fwd.__doc__
        self.__name__ = name
        self.__wrapped__ = fwd
        REGISTRY[name] = self           # recorded, and nothing else: gpuad/surface.py publishes it

    # -- the declaration's parts --------------------------------------------------

    def defvjp(self, vjp):
        """Attach the VJP (a decorator right under the forward)."""
        self.vjp = vjp
        return vjp

    def register_kernel(self, provider, forward, backward=None):
        """Run `forward`/`backward` instead of the generic code on `provider`'s arrays.

        >>> from gpuad.ops.registry import REGISTRY
        >>> sorted(REGISTRY["linear_tanh"].kernels)
        ['cupy', 'triton']
        """
        self.kernels[provider] = Kernel(forward, backward)

    def plan(self, needs):
        """Saved-item sources for one pattern of needed gradients: an input
        position, OUT, or UNUSED (an item no needed gradient reads)."""
        if self._all_inputs:
            return tuple(range(len(needs)))
        return tuple(UNUSED if (c is not None and not needs[c]) else s
                     for s, c in zip(self._sources, self._conditions))

    def saves(self, needs):
        """The names of what a node with these needs keeps."""
        if self._all_inputs:
            return tuple(f"operand {i}" for i in range(len(needs)))
        return tuple(n for n, s in zip(self.retain, self.plan(needs)) if s != UNUSED)

    def saver(self, needs):
        """A function (arrays, out) -> the saved tuple, built once per needs pattern."""
        fn = self._savers.get(needs)
        if fn is None:
            fn = self._savers[needs] = _make_saver(self.plan(needs))
        return fn

    def abstract(self, *avals, **params):
        """The shape-and-dtype rule: the forward on abstract arrays (see abstract.py).
        Returns an AbstractArray, or (out, aux) for primitives with aux."""
        return self.fwd(abstract_ns, *avals, **params)

    def __call__(self, *args, **params):
        return apply(self, args, params)

    def __repr__(self):
        return f"<primitive {self.name}>"


def _make_saver(plan):
    """lambda arrays, out: (the saved items), spelled out for this plan: it runs on
    every recorded op, where a loop or a comprehension would cost more than the op."""
    items = ["out" if k == OUT else "None" if k == UNUSED else f"arrays[{k}]" for k in plan]
    source = f"def saver(arrays, out):\n    return ({', '.join(items)}{',' if len(items) == 1 else ''})\n"
    return load(source, "saver")["saver"]


def primitive(name, inputs=("x",), kind=OTHER, retain=None, differentiable=True, has_aux=False,
              fwd_temps=0, vjp_temps=0, method=False, operator=None, export=False, domain=None,
              dtypes="promote", float_result=False):
    """Declare the decorated forward as primitive `name` (see the module docstring)."""
    def deco(fwd):
        return Primitive(name, fwd, inputs, kind, retain, differentiable, has_aux, fwd_temps, vjp_temps,
                         method, operator, export, domain, dtypes, float_result)
    return deco


def call(op, xp, *args, **params):
    """Use a primitive inside a VJP: on arrays run its forward, on Tensors record it.

    This is how a VJP that needs more than numpy's vocabulary stays
    differentiable under create_graph=True.
    """
    if xp.name == "tensor":
        return op(*args, **params)
    out = op.fwd(xp, *args, **params)
    return out[0] if op.has_aux else out
