"""The public surface, built in one place from the declarations: gpuad.<name>, the
Tensor methods and operators, and the create_graph namespace's entries.

Declaring a primitive (gpuad/ops/registry.py) records it and nothing else.
build() runs once, when gpuad is imported, and publishes every declared
primitive; `unary` and `primitive` here are the public declaration APIs
(gpuad.unary, gpuad.primitive), which publish at once.

A primitive's public function is the hand-written one (ops/composite.py,
ops/indexing.py: argument checks, PyTorch and numpy spellings) where there is
one, else one generated from the declaration (ops/dispatch.py: unary and
binary functions on apply's fast paths, any other arity through apply()). The
declaration says which of the rest it gets:

    method=True        Tensor.<name>
    operator="mul"     Tensor.__mul__ and __rmul__, Tensor.mul, gpuad.mul
                       (comparisons: __lt__ ...; no reflected form)
    export=True        gpuad.<name>
    differentiable     an entry in the create_graph namespace (ops/namespace.py)

>>> import gpuad
>>> gpuad.mul is gpuad.multiply, gpuad.Tensor.__mul__(gpuad.tensor(2.0), 3.0).item()
(True, 6.0)
"""
import sys

from . import autograd
from .ops import composite, derivatives, indexing, methods, registry
from .ops.dispatch import apply, binary_entry, unary_entry
from .ops.namespace import TensorNamespace
from .ops.registry import REGISTRY
from .tensor import Tensor

FUNCTIONS = {}         # gpuad.<name> -> the function (gpuad/__init__.py puts them in its namespace)
_HAND_WRITTEN = {}     # name -> the hand-written (or composite-made) function of that name
_installed = {}        # primitive name -> [(owner, attribute)] set for it, so unregister can undo them

_REFLECTED = {"add", "sub", "mul", "truediv", "pow", "matmul", "and", "or", "xor", "mod", "floordiv"}
_SPELLINGS = {"truediv": ("div", "true_divide"), "matmul": (), "abs": (), "and": (), "or": (), "xor": (),
              "invert": (), "mod": (), "floordiv": ()}


def build():
    """Publish the hand-written functions, every declared primitive, the hand-written
    methods and Tensor.backward (once, from gpuad/__init__.py)."""
    for module in (composite, indexing):
        for name in module.__all__:
            _HAND_WRITTEN[name] = FUNCTIONS[name] = getattr(module, name)
    _HAND_WRITTEN.update((fn.__name__, fn) for fn in composite.ENTRIES)
    for op in list(REGISTRY.values()):
        publish(op)
    for attr, value in methods.table().items():       # after the declared ones: these win
        setattr(Tensor, attr, value)
    Tensor.backward = autograd.tensor_backward


def function_of(op):
    """The public function for op: the hand-written one, else one generated."""
    fn = _HAND_WRITTEN.get(op.name)
    if fn is not None:
        return fn
    if op.nin == 1 and not _takes_params(op):
        fn = unary_entry(op)
    elif op.nin == 2:
        fn = binary_entry(op)
    else:
        def fn(*args, **params):
            return apply(op, args, params)
    fn.__name__ = fn.__qualname__ = op.name
    fn.__doc__ = op.__doc__
    fn.__module__ = "gpuad"
    return fn


def _takes_params(op):
    code = op.fwd.__code__
    return code.co_argcount + code.co_kwonlyargcount > 2 or bool(op.fwd.__defaults__)


def publish(op):
    """gpuad.<name>, Tensor.<name>, operators and the create_graph entry for one primitive,
    as its declaration asks (none of them replaces an attribute already there)."""
    package = sys.modules.get("gpuad")
    done = []

    def put(owner, attr, value):
        if isinstance(owner, dict):
            if attr not in owner:
                owner[attr] = value
                done.append((owner, attr))
        elif attr not in owner.__dict__:
            setattr(owner, attr, value)
            done.append((owner, attr))
    fn = function_of(op)
    if op.export or op.method or op.operator:
        put(FUNCTIONS, op.name, fn)
        if package is not None and hasattr(package, "__version__"):      # published after import
            put(package, op.name, fn)
    if op.method:
        put(Tensor, op.name, fn)
    if op.operator:
        name = op.operator
        put(Tensor, f"__{name}__", fn)
        if name in _REFLECTED:
            put(Tensor, f"__r{name}__", lambda self, other: fn(other, self))
        for alias in _SPELLINGS.get(name, (name,)):         # PyTorch's short names: gpuad.mul, Tensor.mul
            put(Tensor, alias, fn)
            if op.export:
                put(FUNCTIONS, alias, fn)
                if package is not None and hasattr(package, "__version__"):
                    put(package, alias, fn)
    if op.differentiable or op.export:
        put(TensorNamespace, op.name, staticmethod(_drop_out(fn)))
    _installed[op.name] = done
    return op


def _drop_out(fn):
    """numpy's `out=` means nothing to a recorded op: it never writes in place."""
    def f(*args, out=None, **kw):
        return fn(*args, **kw)
    f.__name__ = fn.__name__
    return f


def unary(name, keep, d, **kw):
    """Declare a unary elementwise primitive from its derivative and publish it
    (gpuad/ops/derivatives.py's `unary`, with the same arguments).

    >>> import gpuad
    >>> cube = gpuad.unary("_doc_cube", "x", "xp.multiply(3.0, xp.multiply(x, x))",
    ...                    fwd=lambda xp, x: xp.multiply(x, xp.multiply(x, x)))
    >>> x = gpuad.tensor(2.0, dtype="float64", requires_grad=True)
    >>> gpuad._doc_cube(x).backward(); x.grad.item()
    12.0
    >>> gpuad.surface.unregister("_doc_cube")
    """
    return publish(derivatives.unary(name, keep, d, **kw))


def primitive(name, **kw):
    """Declare the decorated forward as a primitive and publish it (the arguments of
    gpuad/ops/registry.py's `primitive`)."""
    declare = registry.primitive(name, **kw)

    def deco(fwd):
        return publish(declare(fwd))
    return deco


def unregister(name):
    """Remove primitive `name` and everything published for it (tests and examples)."""
    REGISTRY.pop(name, None)
    for owner, attr in _installed.pop(name, ()):
        if isinstance(owner, dict):
            owner.pop(attr, None)
        elif attr in owner.__dict__:
            delattr(owner, attr)
