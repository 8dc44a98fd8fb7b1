"""Tracing: run a step once on Tracers (shapes and dtypes only) and record every
array operation it performs into a Graph.

The whole engine already speaks one vocabulary, `xp` (numpy's names plus a few
extras), in every forward, every VJP, the gradient accumulation and the
optimizers. So tracing needs no second copy of any op: a Tracer is an
AbstractArray (gpuad.backends.abstract, the declarations' shape-and-dtype rules)
whose namespace records each call before computing its shape. What the step
does with Tensors, autograd and in-place updates all arrives here as `xp`
calls, numpy ufuncs on Tracers (`__array_ufunc__`) or numpy functions
(`__array_function__`).

In-place writes are recorded as new SSA values: `out=` (with or without
`where=`), `+=`, `copyto`, `x[i] = v`, `ufunc.at`, `fill`, and gpuad's own
`zero_where` (a VJP writing into the gradient it was donated). The Tracer
object is rebound to the newest value, so every Python reference to it (a
parameter's `.data`, an optimizer's state, a VJP's donated gradient) sees the
update, as numpy's in-place semantics promise. A view of a written array is
derived again from the new value when next read, and a write into a view
(`x[0] += 1`) becomes a functional write into the array it views. A write the
tracer cannot express as a value (np.put, ndarray.sort, a view whose
aliasing numpy decides at run time) raises TraceError: never a graph that
silently misses a write (the DCE pass would drop what fed it).

Values a trace cannot know (`bool(t)`, `int(t)`, `.numpy()`) raise TraceError
naming the user's line; under fallback="eager" they are the traced call's own values
(gpuad.compiler.concrete), and each replay checks them. `.item()` is a traced number.

>>> import numpy as np
>>> from gpuad.compiler.trace import Trace
>>> tr = Trace()
>>> x = tr.new_input((2, 3), np.float32, "x")
>>> y = (x * 2.0).sum(axis=1)
>>> print(tr.graph.eqns[-1])
v3:f32[2] = sum v2 axis=1
"""
import contextlib
import os
import traceback

import numpy as np

from ..errors import GuardError, TraceError
from ..backends.abstract import AbstractArray, abstract_ns
from ..backends.batched import LIVE, batched_xp
from .ir import Eqn, Graph, Literal, map_leaves
from .prims import as_python
from ..xp import lookup


_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_line():
    """'file:line: code' of the innermost frame outside gpuad (what the user wrote)."""
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_PKG):
            return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return "<unknown>"


_active = []        # the Trace running now (one at a time)


def active():
    return _active[-1] if _active else None


def _dummy(a):
    """A zero-stride stand-in for an abstract array, or a device array: numpy can run on
    it without its bytes (used for shape rules the abstract namespace does not spell)."""
    if isinstance(a, AbstractArray) or (not isinstance(a, np.ndarray) and is_real_array(a)):
        return np.broadcast_to(np.zeros((), a.dtype), a.shape)
    return a


def is_real_array(x):
    """A numpy or CuPy array (not a Tracer): what a trace captures by reference."""
    return isinstance(x, np.ndarray) or (type(x).__module__.startswith("cupy") and hasattr(x, "shape"))


class Trace:
    """One tracing run: the graph being built, the arrays lifted into it, and the
    random draws (so a checkpoint's replay of a draw is the same value)."""

    def __init__(self):
        self.graph = Graph()
        self.ns = TracingNamespace(self)
        self.external = {}      # id(real array) -> (array, its current Var)
        self.ext_inputs = []    # (array, Var) in order of first use: captured by reference
        self.draws = []         # (kind, shape, dtype, Tracer) per random draw, in order
        self.branches = []      # (SettingSlot, truth): optimizer settings the step branched on
        self.draw_pos = 0
        self.concrete = None    # a Concrete when the step may branch on values (fallback="eager")

    # -- values ------------------------------------------------------------------

    def new_input(self, shape, dtype, name=None):
        return Tracer(self, self.graph.input(shape, dtype, name))

    def lift(self, x):
        """The IR operand for a Python value (nested in tuples, lists, dicts, slices): a
        Var for each array, a Literal for objects, the value for the rest."""
        return map_leaves(x, self._lift_leaf)

    def _lift_leaf(self, x):
        if isinstance(x, Tracer):
            if x.trace is not self:
                raise TraceError("gpuad.compile: a Tracer from another trace leaked into this one")
            return x.var
        if is_real_array(x):
            known = self.external.get(id(x))
            if known is None:
                # an array the step reads but did not make and that is not discovered state
                # (a constant, a mask built with numpy, a device constant made from host data):
                # captured by reference, read at each replay
                v = self.graph.input(x.shape, x.dtype, f"k{len(self.ext_inputs)}")
                known = self.external[id(x)] = [x, v]
                self.ext_inputs.append((x, v))
                if self.concrete is not None:
                    self.concrete.bind(v, x)
            return known[1]
        if isinstance(x, (np.dtype, type)) or not isinstance(x, (int, float, bool, complex, str, type(None),
                                                                  type(Ellipsis), np.generic)):
            return Literal(x, None)
        return x

    def adopt(self, arr):
        """A Tracer of a real array's traced value once the step has written into it, else
        None. A Tensor whose numpy buffer the step wrote holds this from then on: numpy
        code reading the buffer itself would read values from before the write."""
        known = self.external.get(id(arr))
        if known is None or known[0] is not arr:
            return None
        if any(a is arr and v is known[1] for a, v in self.ext_inputs):
            return None                 # read, never written
        return Tracer(self, known[1])

    def write(self, out, var):
        """An in-place write of `var` into `out` (a Tracer, or a real array read by reference)."""
        if var.dtype != np.dtype(out.dtype):
            var = self.graph.add_eqn("astype", (var, np.dtype(out.dtype)), {}, var.shape, out.dtype)
        if tuple(var.shape) != tuple(out.shape):
            var = self.graph.add_eqn("broadcast_copy", (var, tuple(out.shape)), {}, out.shape, out.dtype)
        if isinstance(out, Tracer):
            if out.base is not None:
                self.write(out.source[1][0], _write_through(self, out, var))
                return out          # its value is derived again from the written base when read
            out.var = var
            out.version += 1        # views of it are stale: derived again when next read
            return out
        if is_real_array(out):
            self.lift(out)
            self.external[id(out)][1] = var
            return out
        raise TraceError(f"gpuad.compile: cannot write into {type(out).__name__}")

    # -- recording ---------------------------------------------------------------

    def call(self, prim, args, kw):
        if LIVE[0]:
            top = batched_xp(None, None, (args, kw))
            if top is not None:             # a vmap's value among them: its rule, recording its calls
                return top.call(prim, args, kw)
        ufunc = _UFUNCS.get(prim)
        out = kw.pop("out", None)
        if out is None and ufunc is not None and len(args) > ufunc.nin:
            args, out = args[:ufunc.nin], args[ufunc.nin:]     # np.add(a, b, c): c is out
        if isinstance(out, tuple):
            if len(out) != 1:
                raise TraceError(f"gpuad.compile: {prim} with several out= arrays")
            out = out[0]
        where = kw.pop("where", True) if ufunc is not None else True
        if where is not True:
            # out= with where=: out keeps its old values where the mask is False
            if out is None:
                raise TraceError(f"gpuad.compile: {prim}(where=...) without out= leaves the masked-out "
                                 f"entries uninitialised; pass out= or use where()\n  at {user_line()}")
            full = self.call(prim, args, kw)
            return self.write(out, self.call("where", (where, full, out), {}).var)
        if prim in _WRITES_ARG:
            raise TraceError(f"gpuad.compile: xp.{prim} writes into its argument and has no traced form\n"
                             f"  at {user_line()}")
        if ufunc is not None and any(isinstance(a, WeakNumber) for a in args):
            weak = self._weak_call(ufunc, prim, args, kw)
            if weak is not None:
                return weak if out is None else self.write(out, weak.var)
            args = self._weak_cast(args, ufunc.nin)
        aval = self._aval(prim, args, kw)
        if (isinstance(aval, Tracer) or is_real_array(aval)) and any(aval is a for a in args):
            # a shape rule that hands back its argument: an alias (astype to the same dtype,
            # asarray of an array: declared may_alias) costs nothing; anything else may be a
            # write the graph would not see
            if not getattr(lookup(prim), "may_alias", False):
                raise TraceError(f"gpuad.compile: xp.{prim} returns its own argument, so it may write into "
                                 f"it, and the tracer has no pure form for it\n  at {user_line()}")
            result = aval
        elif isinstance(aval, AbstractArray):
            view = aval.base is not None
            var = self.graph.add_eqn(prim, self.lift(args), self.lift(kw), aval.shape, aval.dtype, view)
            result = Tracer(self, var, base=self._root_of(args) if view else None)
            if result.base is not None:
                result.source = (prim, args, kw)
                result.version = result.base.version
        elif isinstance(aval, (tuple, list)) and all(isinstance(a, AbstractArray) for a in aval):
            outs = [self.graph.new_var(a.shape, a.dtype) for a in aval]
            self.graph.eqns.append(Eqn(prim, self.lift(args), self.lift(kw), outs))
            return type(aval)(Tracer(self, v) for v in outs)
        else:
            raise TraceError(f"gpuad.compile: {prim} gives {type(aval).__name__}, not an array\n"
                             f"  at {user_line()}")
        if out is not None:
            return self.write(out, result.var)
        return result

    def _weak_call(self, ufunc, prim, args, kw):
        """A ufunc of numbers only (settings and Python numbers): a weak number again, as
        Python's arithmetic on floats gives a float; None when an array takes part."""
        if any(hasattr(a, "dtype") and not isinstance(a, WeakNumber) for a in args[:ufunc.nin]) or kw:
            return None
        t = self.call(prim, tuple(a.strong() if isinstance(a, WeakNumber) else a for a in args), {})
        known = ufunc(*(a.known if isinstance(a, WeakNumber) else a for a in args[:ufunc.nin]))
        return WeakNumber(self, t.var, known.item() if hasattr(known, "item") else known)   # (no slot: a
                                                                    # branch on it is on a value, refused)

    def _weak_cast(self, args, nin):
        """A weak number met with arrays takes their dtype (NEP 50: lr * a float32
        gradient is float32, as with a Python float), cast here, as numpy casts it."""
        arrays = [a.dtype for a in args[:nin] if hasattr(a, "dtype") and not isinstance(a, WeakNumber)]
        dt = np.result_type(*arrays, *(a.known for a in args[:nin] if isinstance(a, WeakNumber)))
        return tuple(self.call("astype", (a.strong(), dt), {}) if isinstance(a, WeakNumber) else a
                     for a in args)

    @staticmethod
    def _root_of(args):
        for a in args:
            if isinstance(a, Tracer):
                return a.base if a.base is not None else a
        return None

    def derive(self, view):
        """view's value again, from the current value of what it views (that array was
        written in place since). Only views numpy always makes share memory: a reshape
        that moves elements between axes may have copied in eager, and then the write
        did not reach it, so reading it raises."""
        prim, args, kw = view.source
        if not _always_view(prim, args, kw, view.shape):
            raise TraceError(
                f"gpuad.compile: a {prim} (shape {view.shape}) of an array that was written in place "
                f"afterwards is read; numpy may or may not have made it a copy (it depends on memory "
                f"layout), so the trace cannot know its value. Take the {prim} after the write, or "
                f"copy it first (.clone())\n  at {user_line()}")
        view._var = self.call(prim, args, kw).var
        view.version = view.base.version

    def _aval(self, prim, args, kw):
        rule = getattr(abstract_ns, prim, None) if "." not in prim else None
        if rule is not None:
            try:
                return rule(*args, **kw)
            except TypeError:
                pass            # a keyword the abstract rule does not spell: run numpy on stand-ins
        fn = resolve(prim)
        dummies = map_leaves(args, _dummy)
        res = fn(*dummies, **map_leaves(kw, _dummy))

        def wrap(r):
            if not hasattr(r, "shape"):
                return r
            r = np.asarray(r)
            is_view = any(isinstance(d, np.ndarray) and np.may_share_memory(r, d)
                          for d in _flat(dummies) if getattr(d, "size", 0))
            return AbstractArray(r.shape, r.dtype, base=self._root_of(args) if is_view else None)
        return tuple(wrap(r) for r in res) if isinstance(res, tuple) else wrap(res)

    def value(self, t, what, how):
        """What Python asks of a traced value (bool(), int(), float(), the array): computed
        on this call's arrays (gpuad.compiler.concrete), and checked by every replay."""
        if self.concrete is None:
            _refuse(what)(t)
        site = f"{what} at {user_line()}"
        value = as_python(self.concrete.value(t.var), how)
        self.graph.add_eqn("check_value", (t.var, Literal(value, "expected") if how == "array" else value, how,
                                           site), {}, (), np.bool_)
        return value

    def callback(self, fn, args, kwargs):
        """fn(*args, **kwargs), run at each replay on the step's values, in the step's
        order (gpuad.compiler.disable): recorded as an effect with the values as inputs."""
        from ..tensor import Tensor
        from .prims import TENSOR

        def mark(x):
            if isinstance(x, Tensor):
                return (TENSOR, x.data)
            if isinstance(x, (tuple, list)):
                return type(x)(mark(v) for v in x)
            if isinstance(x, dict):
                return {k: mark(v) for k, v in x.items()}
            return x
        self.graph.add_eqn("host_callback", self.lift((fn, (mark(tuple(args)), mark(dict(kwargs))))), {},
                           (), np.bool_)

    # -- random draws ------------------------------------------------------------

    def draw(self, kind, shape, dtype, args):
        """A draw from gpuad's generator: the k-th draw after a restore is the k-th
        draw recorded after that state (a checkpoint's recompute sees its mask again)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if self.draw_pos < len(self.draws):
            k, s, d, a, t = self.draws[self.draw_pos]
            if (k, s, a) != (kind, shape, args):
                raise TraceError("gpuad.compile: a generator state was restored and the draws that "
                                 "followed differ from the first ones")
            self.draw_pos += 1
            return t
        var = self.graph.add_eqn("random_draw", (kind, shape) + tuple(args), {}, shape, dtype)
        t = Tracer(self, var)
        self.draws.append((kind, shape, dtype, args, t))
        self.draw_pos += 1
        return t


# numpy functions and ndarray methods that write into an argument and have no traced form
_WRITES_ARG = frozenset({"put", "putmask", "place", "fill_diagonal", "put_along_axis", "_add_at"})

_UFUNCS = {n: f for n, f in vars(np).items() if isinstance(f, np.ufunc)}

def _always_view(prim, args, kw, shape):
    """A view numpy makes without ever copying (its declaration's view="always"): a write
    into it is a write into its base."""
    d = lookup(prim)
    if d is None or d.view != "always":
        return False
    if prim == "reshape":
        # only length-1 axes come and go: a view whatever the strides
        return [n for n in args[0].shape if n != 1] == [n for n in shape if n != 1]
    return True


def _write_through(trace, view, var):
    """The new value of the array `view` views, after writing `var` into the view
    (a functional scatter: read and write the base's N, plus the view's n)."""
    prim, args, kw = view.source
    parent = args[0]
    if not _always_view(prim, args, kw, view.shape) or prim == "broadcast_to":
        raise TraceError(f"gpuad.compile: an in-place write into a {prim} view (shape {view.shape}) "
                         f"cannot be traced; write into the whole array\n  at {user_line()}")
    val = Tracer(trace, var)
    if prim == "getitem":
        return trace.call("setitem", (parent, args[1], val), {}).var
    if prim == "stop_gradient":
        return var                      # detach() shares its buffer: a write reaches the original
    if prim in ("reshape", "squeeze", "expand_dims"):
        return trace.call("reshape", (val, tuple(parent.shape)), {}).var
    if prim == "flip":
        return trace.call("flip", (val,) + tuple(args[1:]), dict(kw)).var
    if prim == "swapaxes":
        return trace.call("swapaxes", (val,) + tuple(args[1:3]), dict(kw)).var
    axes = args[1] if len(args) > 1 else kw.get("axes")
    inverse = None if axes is None else tuple(int(i) for i in np.argsort([a % parent.ndim for a in axes]))
    return trace.call("transpose", (val, inverse), {}).var


def assume_none(mask, what):
    """While tracing: assume `mask` is all False (so the caller takes that branch) and
    record a check that the replay makes, raising GuardError naming `what`."""
    tr = mask.trace
    tr.graph.add_eqn("check_none", (mask.var, f"{what} ({user_line()})"), {}, (), np.bool_)
    return True


def flag_any(mask, what):
    """check_none on a device: the flag, for the caller to read after the replay."""
    return mask.any()


def check_none(mask, what):
    if mask.any():
        raise GuardError(f"gpuad.compile: the trace assumed otherwise, but {what}")
    return False


def _flat(x):
    if isinstance(x, (tuple, list)):
        return [y for t in x for y in _flat(t)]
    return [x]


def resolve(prim, xp=None):
    """The executable behind a primitive's name on namespace xp (numpy_ns by default):
    its method (numpy's or CuPy's function, or gpuad's extra), `ufunc.method`, or a
    helper in gpuad.compiler.prims."""
    import functools
    from ..backends import numpy_ns
    from . import prims
    xp = numpy_ns if xp is None else xp
    if prim == "check_none":
        return check_none if xp is numpy_ns else flag_any
    helper = prim.replace(".", "_")
    if helper in prims.HELPERS:
        fn = getattr(prims, helper)
        return fn if xp is numpy_ns else functools.partial(fn, xp=xp)
    if "." in prim:
        head, _, tail = prim.rpartition(".")
        if head.startswith("numpy."):
            head = head[len("numpy."):]
        mod = xp.module
        for part in head.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                import importlib
                mod = importlib.import_module(prim.rpartition(".")[0])
                break
        return getattr(mod, tail)
    return getattr(xp, prim)


class TracingNamespace:
    """The `xp` of Tracers: every attribute records a call of that name."""

    name = "trace"
    device = "cpu"
    module = np

    def __init__(self, trace):
        self.trace = trace

    def __getattr__(self, prim):
        if prim.startswith("__"):
            raise AttributeError(prim)
        trace = self.trace

        def record(*args, **kw):
            return trace.call(prim, args, kw)
        record.__name__ = prim
        setattr(self, prim, record)
        return record

    def copyto(self, dst, src, casting="same_kind", where=True):
        if where is not True:
            src = self.where(where, src, dst)
        self.trace.write(dst, self.trace.lift(src) if isinstance(src, (Tracer, np.ndarray)) else
                         self.trace.graph.add_eqn("full", (tuple(dst.shape), src, np.dtype(dst.dtype)), {},
                                                  dst.shape, dst.dtype))
        return None

    def stop_gradient(self, a):
        """Tensor.detach() of a traced value: a view of it that forward mode gives no tangent."""
        return self.trace.call("stop_gradient", (a,), {})

    def assume_none(self, mask, what):
        """Take the branch for an all-False mask; the replay checks it (see assume_none)."""
        return assume_none(mask, what)

    def zero_where(self, a, drop):
        # eager writes zeros into a (a donated gradient); the trace selects, as the
        # undonated VJP does, and rebinds a to the result
        return self.trace.write(a, self.trace.call("where", (drop, 0.0, a), {}).var)

    def buffer(self, shape, dtype):
        return self.empty(tuple(shape), np.dtype(dtype))


def _binary(prim, reflected=False):
    def op(self, other):
        args = (other, self) if reflected else (self, other)
        return self.trace.call(prim, args, {})
    return op


def _inplace(prim):
    def op(self, other):
        return self.trace.call(prim, (self, other), {"out": self})
    return op


def _refuse(what):
    def op(self, *args, **kw):
        raise TraceError(f"gpuad.compile: {what} needs the value of a traced array, which a trace of "
                         f"shapes does not have; compute it outside the compiled function, or pass "
                         f"fallback='eager'\n  at {user_line()}")
    return op


def _value(what, how, then=None):
    """A conversion that needs the value: refused on shapes alone; with fallback="eager",
    the value of this call, checked at each replay (Trace.value)."""
    def op(self, *args, **kw):
        v = self.trace.value(self, what, how)
        return v if then is None else then(v, *args, **kw)
    return op


def _refuse_write():
    def op(self, *args, **kw):
        raise TraceError(f"gpuad.compile: an ndarray method that writes into the array in place has no "
                         f"traced form; use the function (np.sort(a), ...)\n  at {user_line()}")
    return op


def _method(name):
    def m(self, *args, **kw):
        return self.trace.call(name, (self,) + args, kw)
    m.__name__ = name
    return m


class Tracer(AbstractArray):
    """An array of the step being traced: its Var now, and for views the root Tracer."""

    __slots__ = ("trace", "_var", "version", "source")
    __array_priority__ = 2000

    def __init__(self, trace, var, base=None):
        AbstractArray.__init__(self, var.shape, var.dtype, base)
        self.trace = trace
        self._var = var
        self.version = 0        # a root: its in-place writes so far; a view: its root's, when derived
        self.source = None      # a view: (prim, args, kw) it was made by

    @property
    def var(self):
        """The current value: a view of an array written in place since is derived again."""
        if self.source is not None and self.version != self.base.version:
            self.trace.derive(self)
        return self._var

    @var.setter
    def var(self, v):
        self._var = v

    @property
    def _xp(self):
        return self.trace.ns

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        if method == "__call__":
            return self.trace.call(ufunc.__name__, inputs, kw)
        if method == "at":
            a = inputs[0]
            return self.trace.write(a, self.trace.call("ufunc_at", (ufunc.__name__,) + tuple(inputs), {}).var)
        return self.trace.call(f"{ufunc.__name__}.{method}", inputs, kw)

    def __array_function__(self, func, types, args, kwargs):
        if func is np.copyto:
            return self.trace.ns.copyto(*args, **kwargs)
        if func.__name__ in _WRITES_ARG:
            raise TraceError(f"gpuad.compile: np.{func.__name__} writes into its argument and has no "
                             f"traced form; use where() or an indexed assignment\n  at {user_line()}")
        mod = func.__module__ or "numpy"
        name = func.__name__ if mod == "numpy" or mod.startswith("numpy._core") or mod.startswith(
            "numpy.core") or mod.startswith("numpy.lib") else f"{mod}.{func.__name__}"
        return self.trace.call(name, args, dict(kwargs))

    __array__ = _value("converting to a numpy array", "array",
                       lambda v, dtype=None, copy=None: v if dtype is None else v.astype(dtype))

    def item(self):
        """The value as a Python number, known after the replay: an ItemValue the step can
        compute with and return (it comes back a number); branching on it is refused."""
        if int(np.prod(self.shape)) != 1:
            raise ValueError(f"can only convert an array of size 1 to a Python scalar, not shape {self.shape}")
        kind = np.dtype(self.dtype).kind
        dt = np.bool_ if kind == "b" else np.int64 if kind in "iu" else np.float64   # Python's bool, int, float
        v = self.trace.call("reshape", (self, ()), {})
        return ItemValue(self.trace, self.trace.call("astype", (v, np.dtype(dt)), {}).var)

    tolist = _value(".tolist()", "array", lambda v: v.tolist())
    __bool__ = _value("bool() of a tensor (an `if` or `while` on a value)", "bool")
    sort = partition = put = resize = itemset = byteswap = setfield = _refuse_write()
    __float__ = _value("float() of a tensor", "float")
    __int__ = _value("int() of a tensor", "int")
    __index__ = _value("using a tensor as an index", "int")

    __add__, __radd__, __iadd__ = _binary("add"), _binary("add", True), _inplace("add")
    __sub__, __rsub__, __isub__ = _binary("subtract"), _binary("subtract", True), _inplace("subtract")
    __mul__, __rmul__, __imul__ = _binary("multiply"), _binary("multiply", True), _inplace("multiply")
    __truediv__, __rtruediv__, __itruediv__ = _binary("divide"), _binary("divide", True), _inplace("divide")
    __pow__, __rpow__, __ipow__ = _binary("power"), _binary("power", True), _inplace("power")
    __matmul__, __rmatmul__ = _binary("matmul"), _binary("matmul", True)
    __lt__, __le__, __gt__, __ge__ = _binary("less"), _binary("less_equal"), _binary("greater"), _binary("greater_equal")
    __eq__, __ne__ = _binary("equal"), _binary("not_equal")
    __and__, __or__, __xor__ = _binary("logical_and"), _binary("logical_or"), _binary("logical_xor")
    __hash__ = object.__hash__

    def __neg__(self):
        return self.trace.call("negative", (self,), {})

    def __abs__(self):
        return self.trace.call("absolute", (self,), {})

    def __invert__(self):
        return self.trace.call("logical_not" if self.dtype == np.bool_ else "invert", (self,), {})

    def __getitem__(self, index):
        return self.trace.call("getitem", (self, index), {})

    def __setitem__(self, index, value):
        self.trace.write(self, self.trace.call("setitem", (self, index, value), {}).var)

    def astype(self, dtype, copy=True):
        if np.dtype(dtype) == self.dtype and not copy:
            return self
        return self.trace.call("astype", (self, np.dtype(dtype)), {})

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self.trace.call("reshape", (self, tuple(shape)), {})

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None)
        return self.trace.call("transpose", (self, axes), {})

    T = property(lambda self: self.transpose())

    sum, mean, max, min, copy, ravel, swapaxes, squeeze, any, all, clip, cumsum, prod, argmax, argmin = (
        _method(n) for n in ("sum", "mean", "max", "min", "copy", "ravel", "swapaxes", "squeeze", "any",
                             "all", "clip", "cumsum", "prod", "argmax", "argmin"))

    def fill(self, value):
        self.trace.ns.copyto(self, value)

    def __repr__(self):
        return f"Tracer({self.var}:{self.dtype}{list(self.shape)})"


def _number_op(name, reflected=False):
    def op(self, other):
        if hasattr(other, "shape") and not isinstance(other, ItemValue):
            return NotImplemented if not isinstance(other, Tracer) else \
                self.trace.call(name, (other, Tracer(self.trace, self.var)) if reflected
                                else (Tracer(self.trace, self.var), other), {})
        a, b = (other, self) if reflected else (self, other)
        a, b = (Tracer(x.trace, x.var) if isinstance(x, ItemValue) else x for x in (a, b))
        return ItemValue(self.trace, self.trace.call(name, (a, b), {}).var)
    return op


class ItemValue(Tracer):
    """A Python number the step took from a traced array (.item()): float64, int64 or bool
    as Python's float, int and bool, so arithmetic with it is Python's. Returned from the
    step it comes back a number after each replay; an `if` on it, float() or formatting
    it needs the value while tracing, and is refused (return it, and log it outside)."""

    __slots__ = ()

    __add__, __radd__ = _number_op("add"), _number_op("add", True)
    __sub__, __rsub__ = _number_op("subtract"), _number_op("subtract", True)
    __mul__, __rmul__ = _number_op("multiply"), _number_op("multiply", True)
    __truediv__, __rtruediv__ = _number_op("divide"), _number_op("divide", True)
    __pow__, __rpow__ = _number_op("power"), _number_op("power", True)

    def __neg__(self):
        return ItemValue(self.trace, self.trace.call("negative", (Tracer(self.trace, self.var),), {}).var)

    def __format__(self, spec):
        return format(self.trace.value(self, "formatting a .item() value (to log it)", "float" if np.dtype(
            self.dtype).kind == "f" else "int" if np.dtype(self.dtype).kind in "iu" else "bool"), spec)

    def __str__(self):
        return self.__format__("")


class WeakNumber(Tracer):
    """A number the step reads from an optimizer's settings (lr, betas, eps, momentum,
    weight_decay), traced as a 0-d input that each replay reads afresh: a scheduler's
    new lr takes effect at the next call, with no retrace. It keeps a Python number's
    rules: met with arrays it takes their dtype (weak, NEP 50), arithmetic among such
    numbers gives one again, and its truthiness (`if momentum:`) is the value it had
    when traced: the trace records that it branched on it (`trace.branches`), and a call
    whose setting has the other truthiness traces again."""

    __slots__ = ("known", "slot")

    def __init__(self, trace, var, known, slot=None):
        Tracer.__init__(self, trace, var)
        self.known = known
        self.slot = slot                 # where it was read (a SettingSlot), for the branch record

    def strong(self):
        """The same value as a plain 0-d traced array."""
        return Tracer(self.trace, self.var)

    def __bool__(self):
        if self.slot is None:             # arithmetic on settings: its truth is a value
            return self.trace.value(self, "bool() of a number computed from optimizer settings", "bool")
        self.trace.branches.append((self.slot, bool(self.known)))
        return bool(self.known)


class DrawingRNG:
    """Stands in for a numpy Generator while tracing: each draw becomes a recorded
    `random_draw` that the replay takes from the real generator, in order."""

    def __init__(self, trace, generator):
        self.trace = trace
        self.generator = generator
        self.bit_generator = _StateToken(self)

    def _draw(self, kind, size, dtype, extra=()):
        for v in extra:
            if hasattr(v, "shape") or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TraceError(f"gpuad.compile: a {kind}() draw with array or traced parameters is not "
                                 f"traced; give it numbers\n  at {user_line()}")
        dtype = np.dtype(dtype)
        return self.trace.draw(kind, () if size is None else size, dtype,
                               (dtype, self.generator, tuple(v.item() if hasattr(v, "item") else v for v in extra)))

    def random(self, size=None, dtype=np.float64):
        return self._draw("random", size, dtype)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._draw("standard_normal", size, dtype)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        if high is None:
            low, high = 0, low
        return self._draw("integers", size, dtype, (low, high + 1 if endpoint else high))

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._draw("uniform", size, np.float64, (low, high))

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._draw("normal", size, np.float64, (loc, scale))

    def binomial(self, n, p, size=None):
        return self._draw("binomial", size, np.int64, (n, p))

    def __getattr__(self, name):
        raise TraceError(f"gpuad.compile: the generator's {name}() is not traced (random, standard_normal, "
                         f"integers, uniform, normal and binomial draws are); draw outside the compiled "
                         f"function\n  at {user_line()}")


class _StateToken:
    """get_state/set_state while tracing: a position in the list of draws."""

    def __init__(self, rng):
        self._rng = rng

    @property
    def state(self):
        return ("gpuad.compile draw", self._rng.trace.draw_pos)

    @state.setter
    def state(self, token):
        if not (isinstance(token, tuple) and token[:1] == ("gpuad.compile draw",)):
            raise TraceError("gpuad.compile: set_rng_state inside a compiled function takes only a state "
                             "read inside it")
        self._rng.trace.draw_pos = token[1]


@contextlib.contextmanager
def tracing(trace):
    """`trace` records while the block runs."""
    from ..backends import TRACING
    _active.append(trace)
    TRACING.append(trace)
    try:
        yield trace
    finally:
        _active.pop()
        TRACING.pop()
