"""Modules: parameter containers with PyTorch's names and init.

>>> import gpuad
>>> from gpuad import nn
>>> net = nn.MLP([3, 8, 1], activation="tanh")
>>> [name for name, _ in net.named_parameters()]
['0.weight', '0.bias', '1.weight', '1.bias']
>>> net(gpuad.ones((5, 3))).shape
(5, 1)
"""
import math
from collections import OrderedDict

import numpy as np

from ..dtypes import as_dtype, default_float
from ..graph import is_grad_enabled
from ..ops import composite as C
from ..random import default_generator
from ..backends import namespace_of
from ..tensor import Tensor
from . import functional as F


class Parameter(Tensor):
    """A Tensor that a Module registers as a parameter; requires grad by default.

    >>> import gpuad
    >>> gpuad.nn.Parameter(gpuad.zeros(2)).requires_grad
    True
    """
    __slots__ = ()

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data, dtype=dtype, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter(" + super().__repr__()[len("tensor("):]


class IncompatibleKeys(tuple):
    """load_state_dict's result: (missing_keys, unexpected_keys), as torch's named tuple."""

    def __new__(cls, missing_keys, unexpected_keys):
        return super().__new__(cls, (missing_keys, unexpected_keys))

    missing_keys = property(lambda self: self[0])
    unexpected_keys = property(lambda self: self[1])

    def __repr__(self):
        return "<All keys matched successfully>" if not self[0] and not self[1] else \
            f"IncompatibleKeys(missing_keys={self[0]}, unexpected_keys={self[1]})"


class StateDictError(RuntimeError, KeyError):
    """A strict load_state_dict whose keys do not match the module's (torch's RuntimeError,
    and a KeyError too)."""

    def __init__(self, module, missing, unexpected):
        lines = [f"Error(s) in loading state_dict for {module}:"]
        if missing:
            lines.append("\tMissing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
        if unexpected:
            lines.append("\tUnexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
        super().__init__("\n".join(lines))
        self.missing_keys, self.unexpected_keys = missing, unexpected

    def __str__(self):
        return self.args[0]


def _holds_modules(value):
    items = value.values() if isinstance(value, dict) else value
    return any(isinstance(v, (Module, Parameter)) for v in items)


class Module:
    """Base class: assign Parameters and Modules as attributes; they are found by name.

    >>> import gpuad
    >>> class Scale(gpuad.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.s = gpuad.nn.Parameter(gpuad.ones(1))
    ...     def forward(self, x):
    ...         return x * self.s
    >>> Scale()(gpuad.tensor([2.0])).tolist()
    [2.0]
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setstate__(self, state):
        # modules pickled before buffers existed get empty ones
        self.__dict__.update(state)
        self.__dict__.setdefault("_buffers", OrderedDict())
        self.__dict__.setdefault("_non_persistent", set())

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"gpuad.nn: call super().__init__() in {type(self).__name__}.__init__ "
                               f"before assigning attributes")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"gpuad.nn: cannot assign {type(value).__name__} to buffer {name!r} of "
                                f"{type(self).__name__} (a Tensor or None)")
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        self._non_persistent.discard(name)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif isinstance(value, (list, tuple, dict)) and _holds_modules(value):
            import warnings
            warnings.warn(f"gpuad.nn: {type(self).__name__}.{name} is a plain {type(value).__name__} of modules "
                          f"or parameters, which registers none of them (parameters() will not see them); "
                          f"use nn.ModuleList / nn.ModuleDict (or nn.ParameterList)", UserWarning, stacklevel=2)
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal -------------------------------------------------------------

    def named_parameters(self, prefix=""):
        seen = set()
        for mod_prefix, mod in self.named_modules(prefix=prefix):
            for name, p in mod._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def register_buffer(self, name, tensor, persistent=True):
        """Keep `tensor` as state that is not a parameter (batch norm's running statistics):
        found by buffers(), moved by .to(), saved in state_dict() when persistent, as torch.

        >>> import gpuad
        >>> m = gpuad.nn.Module()
        >>> m.register_buffer("steps", gpuad.zeros((), dtype="int64"))
        >>> [n for n, _ in m.named_buffers()], list(m.state_dict())
        (['steps'], ['steps'])
        """
        if "_buffers" not in self.__dict__:
            raise RuntimeError(f"gpuad.nn: call super().__init__() in {type(self).__name__}.__init__ "
                               f"before register_buffer")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"gpuad.nn.register_buffer: the name must be a non-empty string without '.', "
                           f"got {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"gpuad.nn.register_buffer: {name!r} must be a Tensor or None, "
                            f"not {type(tensor).__name__}")
        if name in self._parameters or name in self._modules or (hasattr(self, name) and name not in self._buffers):
            raise KeyError(f"gpuad.nn.register_buffer: attribute {name!r} already exists on {type(self).__name__}")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        object.__setattr__(self, name, tensor)

    def named_buffers(self, prefix="", recurse=True):
        """(name, buffer) pairs, submodules' included (recurse), each buffer once."""
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for name, b in mod._buffers.items():
                if b is None or id(b) in seen:
                    continue
                seen.add(id(b))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(name, module) for self and every submodule, depth first, each module once
        (remove_duplicate, torch's default) even where it is shared."""
        seen = set() if memo is None else memo
        stack = [(prefix, self)]
        while stack:                       # no recursion: deep Sequentials are fine
            name, mod = stack.pop()
            if remove_duplicate:
                if id(mod) in seen:
                    continue
                seen.add(id(mod))
            yield name, mod
            children = [((f"{name}.{n}" if name else n), m) for n, m in mod._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """(name, module) of the direct submodules, each once."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def apply(self, fn):
        """fn(module) on every submodule, children before their parent, then self (torch's
        order: how custom initialisation is written); returns self.

        >>> import gpuad
        >>> net = gpuad.nn.Sequential(gpuad.nn.Linear(2, 2), gpuad.nn.Linear(2, 1))
        >>> seen = []
        >>> _ = net.apply(lambda m: seen.append(type(m).__name__)); seen
        ['Linear', 'Linear', 'Sequential']
        """
        order, stack = [], [(self, False)]
        while stack:                       # a post-order walk without recursion
            mod, done = stack.pop()
            if done:
                order.append(mod)
                continue
            stack.append((mod, True))
            stack.extend((m, False) for m in reversed(list(mod.children())))
        for mod in order:
            fn(mod)
        return self

    def requires_grad_(self, requires_grad=True):
        """Set requires_grad on every parameter (freezing or unfreezing the module); returns self."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    # -- modes and state -------------------------------------------------------

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def _state_items(self):
        """(key, tensor, is a buffer) in torch's order: module by module, its parameters then
        its persistent buffers (each parameter once)."""
        seen = set()
        for mod_prefix, mod in self.named_modules():
            for name, p in mod._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), p, False
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b, True

    def state_dict(self):
        """name -> Tensor sharing the parameter's or buffer's data (copy it to keep a snapshot)."""
        return OrderedDict((n, Tensor._from(t.data)) for n, t, _ in self._state_items())

    def load_state_dict(self, state, strict=True):
        """Copy values into the parameters and persistent buffers, in place; shapes must match.
        strict: a missing or unexpected key is an error (torch's report); else they are
        skipped. Returns (missing_keys, unexpected_keys), as torch."""
        own = {n: t for n, t, _ in self._state_items()}
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise StateDictError(type(self).__name__, missing, unexpected)
        for k, p in own.items():
            if k not in state:
                continue
            v = state[k]
            arr = v.data if isinstance(v, Tensor) else v
            arr = np.asarray(arr) if not hasattr(arr, "shape") else arr
            if tuple(arr.shape) != p.shape:
                raise ValueError(f"gpuad.load_state_dict: {k} has shape {tuple(arr.shape)} in the state "
                                 f"but {p.shape} in the module")
            p.data[...] = namespace_of(p.data).asarray(arr)      # host state into a device module: copied there
        return IncompatibleKeys(missing, unexpected)

    def to(self, target):
        """Move every parameter to a device ('cpu', 'cuda') or cast it to a dtype, in
        place: the parameters stay the same objects, so optimizers keep working."""
        if isinstance(target, str) and target.split(":")[0] in ("cpu", "cuda"):
            from ..backends.devices import to_device
            for p in self.parameters():
                p.data = to_device(p.data, target)
                p.grad = None
            for b in self.buffers():
                b.data = to_device(b.data, target)
            return self
        dtype = as_dtype(target)
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            if p._node is not None:
                p._node.dtype = dtype
            p.grad = None
        for b in self.buffers():
            if b.data.dtype.kind == "f":             # counters stay integers, as in torch
                b.data = b.data.astype(dtype)
        return self

    def cuda(self):
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

    def double(self):
        return self.to("float64")

    def float(self):
        return self.to("float32")

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


def _uniform(shape, bound, dtype, generator=None):
    rng = (generator or default_generator).rng
    return rng.uniform(-bound, bound, size=shape).astype(as_dtype(dtype) or default_float)


class Linear(Module):
    """y = activation(x W^T + b), one fused primitive; PyTorch's init and names.

    weight: (out_features, in_features), U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's
    kaiming_uniform with a=sqrt(5)); bias: the same bound.

    >>> import gpuad
    >>> layer = gpuad.nn.Linear(4, 3, activation="relu")
    >>> layer.weight.shape, layer.bias.shape
    ((3, 4), (3,))
    """

    def __init__(self, in_features, out_features, bias=True, activation=None, dtype=None):
        super().__init__()
        if activation not in F.N.LINEAR_ACTIVATIONS:
            raise ValueError(f"gpuad.nn.Linear: unknown activation {activation!r}; choose one of "
                             f"{', '.join(repr(a) for a in F.N.LINEAR_ACTIVATIONS)}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.weight = Parameter(_uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform((out_features,), bound, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias, self.activation, name=repr(self))

    def flops(self, input_shape):
        """Forward FLOPs for an input of this shape (what checkpoint schedules weigh)."""
        rows = 1
        for n in input_shape[:-1]:
            rows *= n
        return 2 * rows * self.in_features * self.out_features

    def extra_repr(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{act}"


class Sequential(Module):
    """Layers applied in order, optionally with gradient checkpointing.

    checkpoint: None (store every activation), "sqrt" (ceil(sqrt(L))
    segments), an int (that many segments), or a budget in bytes for the
    activations, as gpuad.checkpoint.Budget(n) or a string like "48MiB" (the
    fastest schedule that fits, see gpuad.checkpoint_sequential).

    >>> import gpuad
    >>> net = gpuad.nn.Sequential(gpuad.nn.Linear(2, 4, activation="tanh"), gpuad.nn.Linear(4, 1))
    >>> len(net), net(gpuad.ones((3, 2))).shape
    (2, (3, 1))
    >>> deep = gpuad.nn.Sequential(*[gpuad.nn.Linear(8, 8, activation="tanh") for _ in range(9)], checkpoint="sqrt")
    >>> deep(gpuad.ones((2, 8))).shape
    (2, 8)
    """

    def __init__(self, *layers, checkpoint=None):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"gpuad.nn.Sequential: layer {i} ({type(layer).__name__}) is not callable")
            if isinstance(layer, Module):
                setattr(self, str(i), layer)
        object.__setattr__(self, "layers", list(layers))
        object.__setattr__(self, "checkpoint", _checkpoint_option(checkpoint, len(layers)))

    def forward(self, x):
        mode = self.checkpoint
        if mode is not None and is_grad_enabled():
            from ..checkpoint import checkpoint_sequential
            kind, value = mode
            if kind == "budget":
                return checkpoint_sequential(self.layers, x, budget_bytes=value)
            return checkpoint_sequential(self.layers, x, segments=value)
        for layer in self.layers:
            x = layer(x)
        return x

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(*self.layers[i])
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)


def _checkpoint_option(option, n_layers):
    """None, ("segments", k) or ("budget", bytes) from Sequential's checkpoint argument."""
    from ..checkpoint import Budget, parse_bytes
    from ..schedule import sqrt_segments
    if option is None:
        return None
    if option == "sqrt":
        return ("segments", sqrt_segments(max(n_layers, 1)))
    if isinstance(option, Budget):
        return ("budget", int(option))
    if isinstance(option, str):
        return ("budget", parse_bytes(option))
    if isinstance(option, int) and not isinstance(option, bool):
        if not 1 <= option <= max(n_layers, 1):
            raise ValueError(f"gpuad.nn.Sequential: checkpoint={option} segments, but there are {n_layers} layers; "
                             f"for a budget in bytes pass gpuad.checkpoint.Budget({option}) or a string like '48MiB'")
        return ("segments", option)
    raise TypeError(f"gpuad.nn.Sequential: checkpoint must be None, 'sqrt', a number of segments, or a budget "
                    f"(Budget(n) or '48MiB'), not {option!r}")


class MLP(Sequential):
    """Linear layers of the given sizes: activation on every hidden layer, and
    `output_activation` (default none) on the last.

    >>> import gpuad
    >>> gpuad.nn.MLP([4, 16, 16, 2], activation="relu")[1].activation
    'relu'
    """

    def __init__(self, sizes, activation="tanh", output_activation=None, bias=True, dtype=None, checkpoint=None):
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"gpuad.nn.MLP: sizes needs at least two entries, got {sizes}")
        layers = [Linear(a, b, bias=bias, activation=activation if i < len(sizes) - 2 else output_activation,
                         dtype=dtype) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
        super().__init__(*layers, checkpoint=checkpoint)


class ResidualBlock(Module):
    """The lecture's ResNet block: h = g(h) + h with g a fused Linear + activation.

    >>> import gpuad
    >>> gpuad.nn.ResidualBlock(4)(gpuad.zeros((2, 4))).shape
    (2, 4)
    """

    def __init__(self, width, activation="tanh", dtype=None):
        super().__init__()
        self.body = Linear(width, width, activation=activation, dtype=dtype)

    def forward(self, h):
        return C.add(self.body(h), h)


class ResNet(Sequential):
    """Linear(in, width) -> depth ResidualBlocks -> Linear(width, out)."""

    def __init__(self, in_features, width, depth, out_features, activation="tanh", dtype=None):
        super().__init__(Linear(in_features, width, activation=activation, dtype=dtype),
                         *[ResidualBlock(width, activation, dtype=dtype) for _ in range(depth)],
                         Linear(width, out_features, dtype=dtype))


class RNN(Module):
    """Elman RNN unrolled over time with shared parameters (backprop through time):
    h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh). Input (T, batch,
    input_size); returns (all h_t as (T, batch, hidden_size), h_T). Names and
    init as torch.nn.RNN (one layer).

    >>> import gpuad
    >>> out, h = gpuad.nn.RNN(3, 5)(gpuad.ones((7, 2, 3)))
    >>> out.shape, h.shape
    ((7, 2, 5), (2, 5))
    """

    def __init__(self, input_size, hidden_size, bias=True, activation="tanh", dtype=None):
        super().__init__()
        if activation not in ("tanh", "relu"):
            raise ValueError(f"gpuad.nn.RNN: activation must be 'tanh' or 'relu', not {activation!r}")
        self.input_size, self.hidden_size, self.activation = input_size, hidden_size, activation
        k = 1.0 / math.sqrt(hidden_size)
        self.weight_ih_l0 = Parameter(_uniform((hidden_size, input_size), k, dtype))
        self.weight_hh_l0 = Parameter(_uniform((hidden_size, hidden_size), k, dtype))
        self.bias_ih_l0 = Parameter(_uniform((hidden_size,), k, dtype)) if bias else None
        self.bias_hh_l0 = Parameter(_uniform((hidden_size,), k, dtype)) if bias else None

    def forward(self, x, h0=None):
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"gpuad.nn.RNN: input must be (T, batch, {self.input_size}), got shape {x.shape}")
        T, B = x.shape[0], x.shape[1]
        # All input projections in one GEMM; the recurrence is T small GEMMs.
        u = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)
        h = h0 if h0 is not None else Tensor._from(
            namespace_of(x.data).zeros((B, self.hidden_size), dtype=self.weight_hh_l0.dtype))
        act = C.tanh if self.activation == "tanh" else C.relu
        outs = []
        for t in range(T):
            h = act(C.add(u[t], F.linear(h, self.weight_hh_l0, self.bias_hh_l0)))
            outs.append(h)
        return C.stack(outs), h

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}"


class Dropout(Module):
    """Dropout that is active in train() mode and the identity in eval()."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class _Activation(Module):
    fn = None

    def forward(self, x):
        return type(self).fn(x)


class Tanh(_Activation):
    fn = staticmethod(C.tanh)


class ReLU(Module):
    """max(x, 0); inplace=True writes into its input, as torch's."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return x.clamp_(min=0.0) if self.inplace else C.relu(x)


class Sigmoid(_Activation):
    fn = staticmethod(C.sigmoid)


class GELU(Module):
    """gelu(x), exact (approximate="none") or torch's tanh form (approximate="tanh")."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gpuad.nn.GELU: approximate must be 'none' or 'tanh', not {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return C.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class ModuleList(Module):
    """A list of modules, registered (their parameters are found), as torch.nn.ModuleList.

    >>> import gpuad
    >>> layers = gpuad.nn.ModuleList([gpuad.nn.Linear(2, 2) for _ in range(3)])
    >>> len(layers), len(list(layers.parameters()))
    (3, 6)
    """

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"gpuad.nn.ModuleList: {type(module).__name__} is not a Module")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        items = list(self._modules.values())
        items.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(items):
            setattr(self, str(i), m)

    def __getitem__(self, i):
        items = list(self._modules.values())
        return ModuleList(items[i]) if isinstance(i, slice) else items[i]

    def __setitem__(self, i, module):
        setattr(self, str(range(len(self))[i]), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def forward(self, *args, **kwargs):
        raise NotImplementedError("gpuad.nn.ModuleList has no forward: iterate over it")


class ParameterList(Module):
    """A list of parameters, registered under "0", "1", ... (torch.nn.ParameterList); a
    plain tensor put in becomes a Parameter.

    >>> import gpuad
    >>> ps = gpuad.nn.ParameterList([gpuad.zeros(2), gpuad.ones(3)])
    >>> len(ps), [k for k, _ in ps.named_parameters()], ps[1].requires_grad
    (2, ['0', '1'], True)
    """

    def __init__(self, values=None):
        super().__init__()
        for v in values or ():
            self.append(v)

    @staticmethod
    def _param(value, who):
        if isinstance(value, Parameter):
            return value
        if isinstance(value, Tensor):
            return Parameter(value.data)
        raise TypeError(f"gpuad.nn.{who}: {type(value).__name__} is not a Tensor")

    def append(self, value):
        setattr(self, str(len(self._parameters)), self._param(value, "ParameterList"))
        return self

    def extend(self, values):
        for v in values:
            self.append(v)
        return self

    def __getitem__(self, i):
        items = list(self._parameters.values())
        return ParameterList(items[i]) if isinstance(i, slice) else items[i]

    def __setitem__(self, i, value):
        setattr(self, str(range(len(self))[i]), self._param(value, "ParameterList"))

    def __len__(self):
        return len(self._parameters)

    def __iter__(self):
        return iter(list(self._parameters.values()))

    def forward(self, *args, **kwargs):
        raise NotImplementedError("gpuad.nn.ParameterList has no forward: index or iterate over it")


class _Keyed(Module):
    """A dict over one of a module's registries (`_STORE`: "_parameters" or "_modules"): the
    mapping methods ParameterDict and ModuleDict share, as torch's do."""

    _STORE = None

    def _items(self):
        return self.__dict__[self._STORE]

    def __getitem__(self, key):
        return self._items()[key]

    def __delitem__(self, key):
        del self._items()[key]
        object.__delattr__(self, key)

    def __contains__(self, key):
        return key in self._items()

    def __len__(self):
        return len(self._items())

    def __iter__(self):
        return iter(list(self._items()))

    def keys(self):
        return self._items().keys()

    def values(self):
        return self._items().values()

    def items(self):
        return self._items().items()

    def update(self, entries):
        for k, v in (entries.items() if hasattr(entries, "items") else entries):
            self[k] = v

    def pop(self, key):
        v = self._items()[key]
        del self[key]
        return v

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"gpuad.nn.{type(self).__name__} has no forward: index it")


class ParameterDict(_Keyed):
    """A dict of parameters, registered under their keys (torch.nn.ParameterDict).

    >>> import gpuad
    >>> pd = gpuad.nn.ParameterDict({"scale": gpuad.ones(2)})
    >>> pd["shift"] = gpuad.zeros(2)
    >>> list(pd.keys()), sorted(k for k, _ in pd.named_parameters())
    (['scale', 'shift'], ['scale', 'shift'])
    """

    _STORE = "_parameters"

    def __init__(self, parameters=None):
        super().__init__()
        if parameters is not None:
            self.update(parameters)

    def __setitem__(self, key, value):
        setattr(self, key, ParameterList._param(value, "ParameterDict"))


class ModuleDict(_Keyed):
    """A dict of modules, registered, as torch.nn.ModuleDict."""

    _STORE = "_modules"

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __setitem__(self, key, module):
        if not isinstance(module, Module):
            raise TypeError(f"gpuad.nn.ModuleDict: {type(module).__name__} is not a Module")
        setattr(self, key, module)
