"""Tensor: a backend array, the node that made it, and its gradient.

A Tensor is BLACK when it has a node (it requires grad: a parameter, or the
result of an op on one) and GREY otherwise. Nothing here computes: the ops
package installs the operators and op methods onto Tensor.

>>> import gpuad
>>> x = gpuad.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> y = (x * x).sum()
>>> y.backward()
>>> x.grad
tensor([2., 4., 6.])
"""
import numpy as np

from . import graph
from .dtypes import as_dtype, default_float, is_floating
from .backends.devices import on_device
from .memory.accounting import accountant


def _counted(arr, what):
    """Every buffer gpuad allocates counts while accounting is on, leaves included
    (as data, not as activations: those are what ops compute)."""
    if accountant.active is not None:
        accountant.alloc(arr, what, activation=False)
    return arr


def _to_array(data, dtype, copy):
    """Convert user data to a backend array with gpuad's dtype defaults."""
    if isinstance(data, Tensor):
        arr = data.data
        if dtype is not None and arr.dtype != dtype:
            return arr.astype(dtype)
        return arr.copy() if copy else arr
    module = type(data).__module__
    if module.startswith("cupy"):
        return data.astype(dtype) if dtype is not None else (data.copy() if copy else data)
    if isinstance(data, (np.ndarray, np.generic)):
        arr = np.array(data, dtype=dtype, copy=copy) if copy or dtype is not None else np.asarray(data)
        return arr
    arr = np.array(data, dtype=dtype)
    if dtype is None:
        if arr.dtype == np.float64:
            arr = arr.astype(default_float)       # Python floats: float32, as in PyTorch
        elif arr.dtype == np.complex128:
            arr = arr.astype(np.complex64)
        elif arr.dtype == object:
            raise TypeError(f"gpuad.tensor: cannot make a tensor from {type(data).__name__} "
                            f"(ragged lists or non-numbers?)")
    return arr


def _stop(data):
    """data, marked where a trace records it (gpuad.compile, jvp): a forward-mode tangent
    stops there too, as the reverse gradient does. Plain arrays pass unchanged."""
    xp = getattr(data, "_xp", None)
    return data if xp is None else xp.stop_gradient(data)


class Tensor:
    """An n-dimensional array that records the ops applied to it.

    Tensor(data, dtype=None, requires_grad=False, device=None) is the same as
    gpuad.tensor(...): Python floats become float32 unless dtype says
    otherwise; numpy arrays keep their dtype (and are copied).

    >>> import gpuad
    >>> w = gpuad.Tensor([[1.0, -1.0]], requires_grad=True)
    >>> (w.relu() ** 2).sum().backward()
    >>> w.grad.numpy()
    array([[2., 0.]], dtype=float32)
    """

    __slots__ = ("data", "_node", "_grad", "__weakref__")
    __array_ufunc__ = None          # numpy defers to our reflected operators
    __array_priority__ = 1000

    def __init__(self, data, dtype=None, requires_grad=False, device=None):
        dtype = as_dtype(dtype)
        arr = on_device(_to_array(data, dtype, copy=True), device)
        self.data = _counted(arr, "tensor")
        self._node = None
        self._grad = None
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _from(cls, array, node=None):
        """Wrap a backend array without copying (internal)."""
        t = object.__new__(cls)
        t.data = array
        t._node = node
        t._grad = None
        return t

    @property
    def grad(self):
        """The gradient backward accumulated (a Tensor), or None. Reading it on a non-leaf
        that does not retain_grad() warns, as torch does: backward never fills it."""
        g = self._grad
        if g is None:
            node = self._node
            if node is not None and node.op is not None and node.ref is None:
                import warnings
                warnings.warn("gpuad: the .grad attribute of a Tensor that is not a leaf Tensor is being accessed. "
                              "Its .grad attribute won't be populated during backward(). If you indeed want the "
                              ".grad field to be populated for a non-leaf Tensor, use .retain_grad() on it (as torch "
                              "warns)", UserWarning, stacklevel=2)
        return g

    @grad.setter
    def grad(self, value):
        self._grad = value

    # -- metadata --------------------------------------------------------------

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    def size(self, dim=None):
        """The shape (torch.Size is a tuple), or its length along dim."""
        shape = tuple(self.data.shape)
        if dim is None:
            return shape
        if not -len(shape) <= dim < len(shape):
            raise IndexError(f"gpuad: dim {dim} is out of range for a tensor with {len(shape)} dims")
        return shape[dim]

    def __format__(self, spec):
        """A one-element tensor formats as its number (f"{loss:.3f}"), as in torch."""
        if self.data.ndim == 0 or (spec and self.data.size == 1):
            return format(self.item(), spec)
        return format(repr(self), spec)

    def numel(self):
        return int(self.data.size)

    def dim(self):
        return self.data.ndim

    @property
    def nbytes(self):
        return int(self.data.nbytes)

    @property
    def device(self):
        from .backends import device_of
        return device_of(self.data)

    @property
    def requires_grad(self):
        return self._node is not None

    @requires_grad.setter
    def requires_grad(self, flag):
        self.requires_grad_(flag)

    def requires_grad_(self, flag=True):
        """Make this tensor a parameter (BLACK) or a fixed input (GREY), in place."""
        if flag:
            if self._node is not None:
                return self
            if not is_floating(self.data.dtype):
                raise TypeError(f"gpuad: only floating-point tensors can require gradients; "
                                f"this one is {self.data.dtype} (cast it with .astype('float32') first)")
            self._node = graph.leaf_node(self)
        else:
            if self._node is not None and self._node.op is not None:
                raise RuntimeError("gpuad: requires_grad can only be switched off on a leaf; "
                                   "use .detach() to get a GREY copy of an intermediate")
            self._node = None
        return self

    @property
    def is_leaf(self):
        return self._node is None or self._node.op is None

    @property
    def grad_fn(self):
        """The node that made this tensor (None for leaves and GREY tensors)."""
        node = self._node
        return node if node is not None and node.op is not None else None

    # -- conversion ------------------------------------------------------------

    def numpy(self):
        """The data as a numpy array (shared with the tensor on the CPU, copied from a GPU)."""
        data = self.data
        if type(data) is np.ndarray:
            return data
        return data.get() if hasattr(data, "get") else np.asarray(data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"gpuad: item() needs a tensor with one element, this one has shape {self.shape}")
        return self.data.reshape(-1)[0].item()

    def tolist(self):
        return self.numpy().tolist()

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr.astype(dtype) if dtype is not None else arr

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"gpuad: the truth value of a tensor of shape {self.shape} is ambiguous; "
                             f"use .any() or .all()")
        return bool(self.item())

    def __index__(self):
        if self.data.dtype.kind not in "iu" or self.data.size != 1:
            raise TypeError("gpuad: only one-element integer tensors can be used as an index")
        return int(self.item())

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("gpuad: len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("gpuad: iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extras = []
        if self.data.dtype not in (np.dtype("float32"), np.dtype("int64"), np.dtype("bool")):
            extras.append(f"dtype={self.data.dtype}")
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self._node is not None:
            extras.append("requires_grad=True" if self._node.op is None else f"grad_fn={self._node.op.name}")
        return f"tensor({body}{''.join(', ' + e for e in extras)})"

    __hash__ = object.__hash__

    # -- autograd --------------------------------------------------------------

    def detach(self):
        """The same data as a GREY tensor: the lecture's stop-gradient."""
        return Tensor._from(_stop(self.data))

    def detach_(self):
        if self._node is not None and self._node.op is None:
            raise RuntimeError("gpuad: detach_() on a leaf; use requires_grad_(False)")
        self._node = None
        self.data = _stop(self.data)
        return self

    def retain_grad(self):
        """Keep this intermediate's gradient in .grad after backward (leaves always do)."""
        node = self._node
        if node is None:
            raise RuntimeError("gpuad: retain_grad() on a tensor that does not require grad")
        if node.op is not None and node.ref is None:
            import weakref
            node.ref = weakref.ref(self)
        return self

    @property
    def retains_grad(self):
        node = self._node
        return node is not None and node.op is not None and node.ref is not None

    def register_hook(self, fn):
        """Call fn(grad) when this tensor's gradient is complete; a returned tensor replaces it."""
        return self._add_hook("grad", fn)

    def register_post_accumulate_grad_hook(self, fn):
        """Call fn(tensor) after a leaf's .grad is final for this backward pass.

        This is the moment a data-parallel trainer can start its all-reduce.
        """
        if not self.is_leaf or self._node is None:
            raise RuntimeError("gpuad: post-accumulate hooks are for leaves that require grad")
        from .graph import _Mode
        _Mode.post_hooks += 1
        return self._add_hook("post", fn)

    def _add_hook(self, kind, fn):
        node = self._node
        if node is None:
            raise RuntimeError("gpuad: cannot register a hook on a tensor that does not require grad")
        if node.hooks is None:
            node.hooks = []
        entry = (kind, fn)
        node.hooks.append(entry)
        return _HookHandle(node, entry)

    # -- interop: DLPack and numpy, zero-copy ------------------------------------------

    def __dlpack__(self, stream=None, **kwargs):
        """The data as a DLPack capsule, shared (torch.from_dlpack(t), np.from_dlpack(t))."""
        return self.data.__dlpack__(**({"stream": stream} if stream is not None else {}), **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    @property
    def __array_interface__(self):
        """numpy's view of a CPU tensor's buffer (np.asarray(t), torch.as_tensor(t): no copy)."""
        if type(self.data) is not np.ndarray:
            raise AttributeError("__array_interface__: the tensor is not in host memory (use .cpu())")
        return self.data.__array_interface__

    # -- copy and pickle (as torch) -------------------------------------------------

    def __deepcopy__(self, memo):
        """A leaf's copy is a new leaf (data, requires_grad and .grad copied): its
        gradients never reach the original. Tensors made by ops cannot be deep-copied."""
        if self._node is not None and self._node.op is not None:
            raise RuntimeError("gpuad: only tensors created by the user (graph leaves) can be deep-copied, "
                               "as in torch; detach() it first, or deep-copy the leaves it came from")
        import copy
        t = object.__new__(type(self))
        t.data = _counted(self.data.copy(), "deepcopy")
        t._node = None
        t.grad = None
        memo[id(self)] = t
        if self._node is not None:
            t.requires_grad_(True)
        if self.grad is not None:
            t.grad = copy.deepcopy(self.grad, memo)
        return t

    def __reduce_ex__(self, protocol):
        """Pickles the data (host memory), the device, requires_grad and the class;
        the graph never travels (a non-leaf arrives as a leaf, as in torch)."""
        return (_rebuild, (type(self), self.numpy(), self.device, self._node is not None))

    # -- devices ------------------------------------------------------------------

    def _to_device(self, target):
        """A GREY copy on device `target` ('cpu' or 'cuda'), or self when already there."""
        from .backends.devices import to_device
        if self.device == target.split(":")[0]:
            return self
        return Tensor._from(_counted(to_device(self.data, target), "to"))

    def cpu(self): return self.to("cpu")
    def cuda(self): return self.to("cuda")

    def any(self, dim=None, keepdim=False):
        """Whether any element (along dim) is true: a bool tensor, as torch."""
        return Tensor._from(_as_array(self.data.any(axis=dim, keepdims=keepdim)))

    def all(self, dim=None, keepdim=False):
        """Whether every element (along dim) is true: a bool tensor, as torch."""
        return Tensor._from(_as_array(self.data.all(axis=dim, keepdims=keepdim)))

    # Operators, op methods (+, *, .sum(), .reshape(), ...) and backward() are
    # installed by gpuad/surface.py (from the primitives' declarations, and
    # ops/methods.py for the hand-written ones): this module imports no op.


def _as_array(v):
    return np.asarray(v) if isinstance(v, (np.generic, bool)) else v


def _rebuild(cls, array, device, requires_grad):
    t = object.__new__(cls)
    t.data = array
    t._node = t.grad = None
    if device != "cpu":
        t.data = t._to_device(device).data
    if requires_grad:
        t.requires_grad_(True)
    return t


class _HookHandle:
    def __init__(self, node, entry):
        self._node, self._entry = node, entry

    def remove(self):
        if self._node.hooks and self._entry in self._node.hooks:
            self._node.hooks.remove(self._entry)
            if self._entry[0] == "post":
                from .graph import _Mode
                _Mode.post_hooks -= 1


def tensor(data, dtype=None, requires_grad=False, device=None):
    """Make a tensor (a copy of data).

    >>> import gpuad
    >>> gpuad.tensor([1, 2]).dtype, gpuad.tensor(1.0).dtype, gpuad.tensor(1.0, dtype="float64").dtype
    (dtype('int64'), dtype('float32'), dtype('float64'))
    """
    return Tensor(data, dtype=dtype, requires_grad=requires_grad, device=device)
