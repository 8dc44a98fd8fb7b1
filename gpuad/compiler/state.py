"""What a step reads and writes besides its arguments: parameters, their
gradients, optimizer state, modules' training flags.

A PyTorch-style step closes over its model and optimizer, so the compiler
finds them the way the step would: from the function's closure, its defaults
and the globals it names (and, through gpuad's own wrappers such as
value_and_grad, the function they wrap). Every array found is a Slot: where it
lives (a Tensor's .data, a Tensor's .grad, an entry of an optimizer's state)
and so how the replay reads it and writes it back. Their identities, shapes
and settings are the cache key: a change retraces.

>>> import gpuad
>>> from gpuad.compiler.state import discover
>>> lin = gpuad.nn.Linear(3, 2)
>>> step = lambda x: lin(x).sum()
>>> found = discover(step)
>>> sorted(t.shape for t in found.tensors)
[(2,), (2, 3)]
"""
import os
import types

import numpy as np

from ..precision import AUTOCAST

from ..tensor import Tensor

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


MAX_WALK = 4096     # a larger list or dict (a dataset) is not searched for state: pass what
                    # the step needs as arguments, or hold it in a Module


class Found:
    """Tensors, modules, optimizers and optimizer-state dicts reachable from a step."""

    def __init__(self):
        self.tensors = []
        self.modules = []
        self.optimizers = []
        self.state_dicts = []       # the per-parameter dicts of optimizer state
        self.generators = []
        self.leaks = []             # Tracers, and Tensors holding one, found outside a trace
        self.containers = []        # the lists and sets walked (where a leak may sit)
        self._seen = set()


def discover(fn, extra=()):
    """Everything the step `fn` can reach that holds arrays or settings."""
    from ..nn.modules import Module
    from ..optim import Optimizer
    from ..random import Generator
    from .trace import Tracer
    found = Found()
    stack = [fn, *extra]
    while stack:
        obj = stack.pop()
        if id(obj) in found._seen or obj is None or isinstance(obj, (int, float, str, bool, bytes, type,
                                                                        types.ModuleType, np.ndarray)):
            continue
        found._seen.add(id(obj))
        if isinstance(obj, Tracer):
            found.leaks.append(obj)          # a traced value kept outside the trace (see capture)
        elif isinstance(obj, Tensor):
            found.tensors.append(obj)        # (its .grad is a slot of it, not a tensor of its own:
                                             # a new gradient each step must not change the key)
            if isinstance(obj.data, Tracer):
                found.leaks.append(obj)
        elif isinstance(obj, Module):
            found.modules.append(obj)
            stack.extend(reversed(list(vars(obj).values())))
        elif isinstance(obj, Optimizer):
            found.optimizers.append(obj)
            for group in obj.param_groups:
                stack.extend(group["params"])
            for st in obj.state.values():
                found.state_dicts.append(st)
        elif isinstance(obj, Generator):
            found.generators.append(obj)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            if len(obj) <= MAX_WALK:
                stack.extend(obj)
                if isinstance(obj, (list, set)):
                    found.containers.append(obj)
        elif isinstance(obj, dict):
            if len(obj) <= MAX_WALK:
                stack.extend(obj.values())
        elif isinstance(obj, (types.FunctionType, types.MethodType)) or hasattr(obj, "__wrapped__"):
            _function_refs(obj, stack)
        elif hasattr(obj, "__dict__") and not callable(obj):
            stack.extend(vars(obj).values())           # a plain object holding a model
        elif callable(obj) and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return found


def _function_refs(fn, stack):
    if isinstance(fn, types.MethodType):
        stack.append(fn.__self__)
        fn = fn.__func__
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None:
        stack.append(wrapped)
    if not isinstance(fn, types.FunctionType):
        return
    for cell in fn.__closure__ or ():
        try:
            stack.append(cell.cell_contents)
        except ValueError:          # an empty cell
            pass
    stack.extend(fn.__defaults__ or ())
    stack.extend((fn.__kwdefaults__ or {}).values())
    if fn.__code__.co_filename.startswith(_PKG):
        return                      # gpuad's own wrappers: their closure holds the user's function
    g = fn.__globals__
    for name in _names(fn.__code__):
        if name in g:
            stack.append(g[name])


def _names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _names(c)
    return names


# -- slots: where an array lives, how the replay reads and writes it ------------

class Slot:
    """An array the step reads or writes, outside its arguments."""

    def get(self, args):
        raise NotImplementedError

    def set(self, args, value):
        raise NotImplementedError


class DataSlot(Slot):
    """A Tensor's .data; `arg` is the argument's position when the Tensor was passed in."""

    def __init__(self, tensor, arg=None):
        self.tensor, self.arg = tensor, arg

    def owner(self, args):
        return self.tensor if self.arg is None else args[self.arg]

    def get(self, args):
        return self.owner(args).data

    def set(self, args, value):
        self.owner(args).data = value

    def __repr__(self):
        return f"data{tuple(self.tensor.shape)}" if self.arg is None else f"arg{self.arg}"


class GradSlot(DataSlot):
    """A Tensor's .grad (None or a Tensor)."""

    def get(self, args):
        g = self.owner(args).grad
        return None if g is None else g.data

    def set(self, args, value):
        self.owner(args).grad = None if value is None else Tensor._from(value)

    def __repr__(self):
        return "grad" + DataSlot.__repr__(self)


class ItemSlot(Slot):
    """An entry of a dict: an optimizer's state for one parameter."""

    def __init__(self, d, key):
        self.d, self.key = d, key

    def get(self, args):
        return self.d.get(self.key)

    def set(self, args, value):
        if value is None:
            self.d.pop(self.key, None)
        else:
            self.d[self.key] = value

    def __repr__(self):
        return f"state[{self.key!r}]"


class SettingSlot(Slot):
    """A number in an optimizer's param group (lr, betas[0], eps, ...), read afresh at each
    replay as a 0-d array on the step's device: a scheduler's change takes effect at the
    next call, as in eager, without a retrace."""

    def __init__(self, group, key, index, dtype, xp):
        self.group, self.key, self.index, self.dtype, self.xp = group, key, index, dtype, xp

    def value(self):
        v = self.group[self.key]
        return v if self.index is None else v[self.index]

    def get(self, args):
        return self.xp.asarray(np.asarray(self.value(), self.dtype))

    def set(self, args, value):
        raise RuntimeError(f"gpuad.compile: the step wrote the optimizer setting {self.key!r}")

    def __repr__(self):
        return f"setting[{self.key!r}]" + ("" if self.index is None else f"[{self.index}]")


def numeric_setting(v):
    """Whether an optimizer setting is a number read at replay (not a guard key by value)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _device(a):
    return "cuda" if type(a).__module__.startswith("cupy") else "cpu"


def _abstract_key(a):
    """(shape, dtype, device) of an array. Computed for every tensor at every call: the
    dtype object and the array's type (numpy's or CuPy's) stand for their names."""
    if a is None:
        return None
    if type(a) is np.ndarray:
        return (a.shape, a.dtype, "cpu")
    if hasattr(a, "shape"):
        return (tuple(a.shape), np.dtype(a.dtype), _device(a))
    return ("py", a)


def guard_key(found, args, kwargs, grads=True):
    """What a replay assumes, as ((where, what), ...): each argument's shape, dtype and
    requires_grad (Python values by value), the identity and shape of each reachable
    Tensor and (grads=True) whether it has a gradient and its shape, modules' training
    flags, optimizers' settings (numbers by type and whether they are zero: their values
    are read at each replay) and the shape of their state. `where` names the part, so
    describe_change can say what changed."""
    items = [(("argument", i), _arg_key(a)) for i, a in enumerate(args)]
    if AUTOCAST.active:             # an autocast region changes every listed op's dtype: its own trace
        items.append((("autocast",), tuple(sorted((d, str(t)) for d, t in AUTOCAST.dtype.items()))))
    items += [(("keyword", k), _arg_key(v)) for k, v in sorted(kwargs.items(), key=lambda kv: kv[0])]
    for j, t in enumerate(found.tensors):
        items.append((("tensor", j), (id(t), _abstract_key(t.data), t.requires_grad)))
        if grads:
            items.append((("gradient", j), _abstract_key(t.grad.data) if t.grad is not None else None))
    items += [(("module", j, type(m).__name__), m.training) for j, m in enumerate(found.modules)]
    for o, opt in enumerate(found.optimizers):
        for gi, g in enumerate(opt.param_groups):
            items += [(("setting", o, gi, k), _setting(v)) for k, v in sorted(g.items(), key=lambda kv: kv[0])
                      if k not in ("params", "initial_lr")]
        items += [(("state", o, id(p)), tuple(sorted((k, _abstract_key(v)) for k, v in st.items())))
                  for p, st in opt.state.items()]
    return tuple(items)


def _setting(v):
    """A setting's part of the key: numbers are read at each replay, so only their type
    counts (an entry also checks the truth of those its step branched on: SGD's `if
    momentum:`); 0-d arrays by shape and dtype."""
    if isinstance(v, (list, tuple)):
        return tuple(_setting(x) for x in v)
    if numeric_setting(v):
        return ("number", type(v).__name__)
    if hasattr(v, "shape"):
        return ("array", tuple(v.shape), str(v.dtype), _device(v))
    return v


def _arg_key(a):
    if isinstance(a, Tensor):
        return ("T", tuple(a.shape), str(a.dtype), a.requires_grad, _device(a.data))
    if isinstance(a, np.ndarray):
        return ("A", a.shape, str(a.dtype))
    if isinstance(a, (list, tuple)):
        return (type(a).__name__,) + tuple(_arg_key(x) for x in a)
    if isinstance(a, dict):
        return ("dict",) + tuple(sorted((k, _arg_key(v)) for k, v in a.items()))
    return ("py", type(a).__name__, a)


def describe_change(old, new):
    """What differs between two guard keys, in words: the part and its two values (for
    the retrace warning and Compiled.explain())."""
    before, after = dict(old), dict(new)
    changes = []
    for where in list(after) + [w for w in before if w not in after]:
        if before.get(where, _MISSING) != after.get(where, _MISSING):
            changes.append(f"{_where(where)}: {_what(before.get(where, _MISSING))} -> "
                           f"{_what(after.get(where, _MISSING))}")
    if not changes:
        return "nothing"
    more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
    return "; ".join(changes[:3]) + more


_MISSING = object()


_WHERE = {"argument": "argument {1}", "keyword": "keyword argument {1!r}", "tensor": "reachable tensor #{1}",
          "gradient": "the gradient of reachable tensor #{1}", "module": "{2} (module #{1}).training",
          "setting": "optimizer #{1} group {2} setting {3!r}", "state": "optimizer #{1}'s state of a parameter",
          "autocast": "the autocast regions (device type, dtype)"}


def _where(w):
    """A guard key part's place, in words."""
    return _WHERE[w[0]].format(*w)


def _what(v):
    if v is _MISSING:
        return "absent"
    if isinstance(v, tuple) and v[:1] == ("number",):
        return f"a {v[1]}"
    if isinstance(v, tuple) and len(v) == 3 and isinstance(v[0], int) and isinstance(v[1], tuple):
        return f"shape {v[1][0]} {v[1][1]}" if v[1] else str(v)
    return "none" if v is None else str(v)
