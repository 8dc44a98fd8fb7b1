"""The compiler's graph: a flat SSA list of equations, printable like a jaxpr.

A Var is one value (shape, dtype), written once. An Eqn applies one `xp`
primitive (numpy's vocabulary plus gpuad's extras: add, matmul, erf,
scatter_add, ...) to Vars and literals; `view` marks a result that shares its
input's buffer (reshape, transpose, basic indexing), which costs no bytes.
Inputs are the traced call's arrays (arguments and captured state), read at
each replay; outputs are what the replay hands back.

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> g = Graph()
>>> x = g.input((3,), np.float32, "x")
>>> y = g.add_eqn("exp", (x,), {}, (3,), np.float32)
>>> g.outputs = [y]
>>> print(g)
{ lambda x:f32[3] .
  v2:f32[3] = exp x
  in ( v2 ) }
"""
import math

import numpy as np

from .. import generated


class Var:
    """One SSA value: a shape and a dtype."""

    __slots__ = ("id", "shape", "dtype", "name")

    def __init__(self, id, shape, dtype, name=None):
        self.id = id
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.name = name or f"v{id}"

    @property
    def nbytes(self):
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def size(self):
        return math.prod(self.shape)

    def __repr__(self):
        return self.name


class Literal:
    """A constant operand too large or too odd to print inline (an array, a dtype)."""

    __slots__ = ("value", "name")

    def __init__(self, value, name=None):
        self.value = value
        self.name = name or _fmt(value) if isinstance(value, (np.dtype, type)) else name or type(value).__name__

    def __repr__(self):
        return self.name


class Eqn:
    """outs = prim(*args, **params). `args` may nest Vars inside tuples and lists
    (an index tuple, the list given to concatenate)."""

    __slots__ = ("prim", "args", "params", "outs", "view")

    def __init__(self, prim, args, params, outs, view=False):
        self.prim = prim
        self.args = tuple(args)
        self.params = dict(params)
        self.outs = list(outs)
        self.view = view

    @property
    def out(self):
        return self.outs[0]

    def invars(self):
        """The Vars this equation reads, in order, each once."""
        seen, found = set(), []
        for v in iter_vars(self.args) + iter_vars(tuple(self.params.values())):
            if v.id not in seen:
                seen.add(v.id)
                found.append(v)
        return found

    def __repr__(self):
        outs = " ".join(f"{o}:{short_type(o)}" for o in self.outs)
        args = " ".join(_fmt(a) for a in self.args)
        params = "".join(f" {k}={_fmt(v)}" for k, v in self.params.items())
        return f"{outs} = {self.prim}{'[view]' if self.view else ''} {args}{params}".rstrip()


def iter_vars(tree):
    """Every Var in a nest of tuples, lists and dicts, in order."""
    found = []
    stack = [tree]
    while stack:
        t = stack.pop()
        if isinstance(t, Var):
            found.append(t)
        elif isinstance(t, (tuple, list)):
            stack.extend(reversed(t))
        elif isinstance(t, dict):
            stack.extend(reversed(list(t.values())))
        elif isinstance(t, slice):
            stack.extend(reversed([t.start, t.stop, t.step]))
    return found


def map_leaves(tree, fn):
    """tree (tuples, lists, dicts and slices, nested) with fn applied to every leaf: the
    one walk over an equation's operands, whatever the leaves become (Vars, values,
    stand-ins)."""
    if isinstance(tree, tuple):
        return tuple(map_leaves(t, fn) for t in tree)
    if isinstance(tree, list):
        return [map_leaves(t, fn) for t in tree]
    if isinstance(tree, dict):
        return {k: map_leaves(v, fn) for k, v in tree.items()}
    if isinstance(tree, slice):
        return slice(*(map_leaves(t, fn) for t in (tree.start, tree.stop, tree.step)))
    return fn(tree)


def padded(shape, nd):
    """shape with 1s in front, to nd axes (numpy's broadcasting alignment)."""
    return (1,) * (nd - len(shape)) + tuple(shape)


def map_vars(tree, fn):
    """tree with every Var v replaced by fn(v)."""
    return map_leaves(tree, lambda x: fn(x) if isinstance(x, Var) else x)


_SHORT = {"float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64", "int32": "i32",
          "bool": "bool", "uint8": "u8", "int8": "i8", "complex64": "c64", "complex128": "c128"}


def short_type(v):
    return f"{_SHORT.get(v.dtype.name, v.dtype.name)}[{','.join(map(str, v.shape))}]"


def _fmt(a):
    if isinstance(a, tuple):
        return "(" + ",".join(_fmt(x) for x in a) + ("," if len(a) == 1 else "") + ")"
    if isinstance(a, list):
        return "[" + ",".join(_fmt(x) for x in a) + "]"
    if isinstance(a, np.dtype):
        return _SHORT.get(a.name, a.name)
    if isinstance(a, type) and issubclass(a, np.generic):
        return _SHORT.get(np.dtype(a).name, np.dtype(a).name)
    if isinstance(a, slice):
        return ":".join("" if x is None else _fmt(x) for x in (a.start, a.stop)) + \
            ("" if a.step is None else ":" + _fmt(a.step))
    if isinstance(a, float):
        return repr(a)
    return repr(a) if not isinstance(a, str) else a


class Graph:
    """Inputs, equations in execution order, outputs."""

    def __init__(self):
        self.inputs = []
        self.eqns = []
        self.outputs = []
        self._next = 0

    def new_var(self, shape, dtype, name=None):
        self._next += 1
        return Var(self._next, shape, dtype, name)

    def input(self, shape, dtype, name=None):
        v = self.new_var(shape, dtype, name)
        self.inputs.append(v)
        return v

    def add_eqn(self, prim, args, params, shape, dtype, view=False):
        out = self.new_var(shape, dtype)
        self.eqns.append(Eqn(prim, args, params, [out], view))
        return out

    def copy(self):
        g = Graph()
        g.inputs, g.outputs, g._next = list(self.inputs), list(self.outputs), self._next
        g.eqns = [Eqn(e.prim, e.args, e.params, e.outs, e.view) for e in self.eqns]
        for k, v in self.__dict__.items():
            if k not in g.__dict__:
                setattr(g, k, v)
        return g

    def __str__(self):
        ins = " ".join(f"{v}:{short_type(v)}" for v in self.inputs)
        body = "\n".join(f"  {e!r}" for e in self.eqns)
        outs = " ".join(str(v) if isinstance(v, Var) else _fmt(v) for v in self.outputs)
        return f"{{ lambda {ins} .\n{body}\n  in ( {outs} ) }}"


def load(source, what, scope):
    """exec generated `source` into `scope` under a file name of its own, registered with
    linecache, so that a traceback through generated code shows its lines."""
    generated.load(source, f"compile {what}", scope)
