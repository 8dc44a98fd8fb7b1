"""From each declaration, the entry points: gpuad.<name>, the Tensor method and
operators, and the create_graph namespace entry.

A primitive's public function is the hand-written one in api.py where there
is one (argument checks, PyTorch and numpy spellings), else one generated
here: unary and binary functions on the apply fast paths, any other arity
through apply(). The declaration says which of the rest it gets:

    method=True        Tensor.<name>
    operator="mul"     Tensor.__mul__ and __rmul__, Tensor.mul, gpuad.mul
                       (comparisons: __lt__ ...; no reflected form)
    export=True        gpuad.<name>

Primitives declared before the package finishes importing are installed by
install_all() (gpuad/ops/__init__.py); later ones, a test fixture say, at once.

>>> import gpuad
>>> gpuad.mul is gpuad.multiply, gpuad.Tensor.__mul__(gpuad.tensor(2.0), 3.0).item()
(True, 6.0)
"""
import sys

from .dispatch import apply, binary_entry, unary_entry
from .registry import REGISTRY
from ..tensor import Tensor

_ready = False
_REFLECTED = {"add", "sub", "mul", "truediv", "pow", "matmul", "and", "or", "xor", "mod", "floordiv"}
_SPELLINGS = {"truediv": ("div", "true_divide"), "matmul": (), "abs": (), "and": (), "or": (), "xor": (),
              "invert": (), "mod": (), "floordiv": ()}
_installed = {}          # primitive name -> the attributes set for it, so unregister can undo them


def announce(op):
    """Called by every new Primitive: install now if the package is ready."""
    if _ready:
        _install(op)


def install_all():
    global _ready
    for op in list(REGISTRY.values()):
        _install(op)
    _ready = True


def function_of(op):
    """The public function for op: api's hand-written one, else a generated one."""
    from . import api
    fn = api.__dict__.get(op.name)
    if fn is not None and not isinstance(fn, type(api)):
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


def _install(op):
    from . import api
    from .namespace import TensorNamespace
    package = sys.modules.get("gpuad")
    done = []

    def put(owner, attr, value):
        if attr not in owner.__dict__:
            setattr(owner, attr, value)
            done.append((owner, attr))
    fn = function_of(op)
    if op.export or op.method or op.operator:
        put(api, op.name, fn)
        if op.name not in api.__all__:
            api.__all__.append(op.name)
    if op.export and package is not None:
        put(package, op.name, fn)
    if op.method:
        put(Tensor, op.name, fn)
    if op.operator:
        _install_operator(op, fn, put, package)
    if op.differentiable or op.export:
        put(TensorNamespace, op.name, staticmethod(_drop_out(fn)))
    _installed[op.name] = done


def _install_operator(op, fn, put, package):
    from . import api
    name = op.operator
    put(Tensor, f"__{name}__", fn)
    if name in _REFLECTED:
        put(Tensor, f"__r{name}__", lambda self, other: fn(other, self))
    for alias in _SPELLINGS.get(name, (name,)):         # PyTorch's short names: gpuad.mul, Tensor.mul
        put(api, alias, fn)
        put(Tensor, alias, fn)
        if package is not None and op.export:
            put(package, alias, fn)


def _drop_out(fn):
    """numpy's `out=` means nothing to a recorded op: it never writes in place."""
    def f(*args, out=None, **kw):
        return fn(*args, **kw)
    f.__name__ = fn.__name__
    return f


def unregister(name):
    """Remove primitive `name` and everything installed for it (tests and examples)."""
    REGISTRY.pop(name, None)
    for owner, attr in _installed.pop(name, ()):
        if attr in owner.__dict__:
            delattr(owner, attr)
