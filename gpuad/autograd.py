"""backward() and autograd.grad(): the public face of the engine.

These check the outputs and their seed gradients, choose the namespace the
walk runs in (the arrays' own, or the Tensor namespace when create_graph
records the backward pass), and hand over to the one reverse walk
(gpuad/engine/walk.py), which also explains the order and the memory rules.

>>> import gpuad
>>> x = gpuad.tensor(3.0, requires_grad=True)
>>> y = x * x
>>> gpuad.autograd.grad(y, x)[0].item()
6.0
"""
import numpy as np

from .backends import device_of, namespace_of
from .dtypes import grad_dtype
from .engine import anomaly
from .engine.walk import run
from .errors import BackwardError
from .ops.namespace import tensor_ns_on
from .tensor import Tensor

from .function import Function, FunctionCtx, once_differentiable  # noqa: E402  (gpuad.autograd.Function)

__all__ = ["backward", "grad", "queue_callback", "BackwardError", "Function", "FunctionCtx", "once_differentiable",
           "detect_anomaly", "set_detect_anomaly", "is_anomaly_enabled", "is_anomaly_check_nan_enabled"]


class detect_anomaly:
    """Anomaly mode in a block or a decorated function (torch.autograd.detect_anomaly):
    backward raises at the first VJP whose gradient holds a NaN or an infinity, naming
    the op and showing where its forward ran. Slow (each op records its stack, each VJP
    is checked); for debugging.

    >>> import gpuad
    >>> import warnings
    >>> with warnings.catch_warnings(), gpuad.autograd.detect_anomaly():
    ...     x = gpuad.tensor([0.0], requires_grad=True)
    ...     try:
    ...         gpuad.sqrt(x).sum().backward()
    ...     except RuntimeError as e:
    ...         print(str(e).split(" (node")[0])
    gpuad: backward of sqrt
    """

    def __init__(self, check_nan=True):
        self.check_nan = check_nan

    def __enter__(self):
        import warnings
        warnings.warn("gpuad: anomaly detection is on: it records every op's stack and checks every "
                      "gradient, so it is slow; use it only to find where a NaN comes from", UserWarning,
                      stacklevel=2)
        self.prev = anomaly.set_mode(True, self.check_nan)
        return self

    def __exit__(self, *exc):
        anomaly.set_mode(*self.prev)
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with detect_anomaly(self.check_nan):
                return fn(*args, **kwargs)
        return wrapped


class set_detect_anomaly:
    """Turn anomaly mode on or off (torch.autograd.set_detect_anomaly): a call that takes
    effect at once, or a context manager that restores the previous mode on exit."""

    def __init__(self, mode, check_nan=True):
        self.prev = anomaly.set_mode(mode, check_nan)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        anomaly.set_mode(*self.prev)
        return False


def is_anomaly_enabled():
    return anomaly.enabled()


def is_anomaly_check_nan_enabled():
    return anomaly.check_nan_enabled()


def _root_grads(tensors, grads, who):
    """Check the roots and make their seed gradients (as arrays or Tensors)."""
    roots, seeds = [], []
    for i, (t, g) in enumerate(zip(tensors, grads)):
        if not isinstance(t, Tensor):
            raise TypeError(f"gpuad.{who}: output {i} is a {type(t).__name__}, not a Tensor")
        if t._node is None:
            raise BackwardError(
                f"gpuad.{who}: output {i} does not require grad: nothing it was computed from has "
                f"requires_grad=True (it is GREY), so there is no gradient to compute")
        if g is None:
            if t.data.size != 1:
                raise BackwardError(
                    f"gpuad.{who}: output {i} has shape {t.shape}; backward needs a grad argument "
                    f"of that shape (or reduce it first, e.g. y.sum().backward())")
            xp = namespace_of(t.data)
            seeds.append((xp.ones(t.data.shape, dtype=grad_dtype(t.data.dtype)), True))
        else:
            gd = g.data if isinstance(g, Tensor) else g
            want = grad_dtype(t.data.dtype)
            if not hasattr(gd, "shape"):
                gd = np.asarray(gd, dtype=want)
            if tuple(gd.shape) != t.shape:
                raise BackwardError(f"gpuad.{who}: grad has shape {tuple(gd.shape)} but output {i} "
                                    f"has shape {t.shape}")
            if type(gd) is np.ndarray and type(t.data) is not np.ndarray and getattr(t.data, "_xp", None) is None:
                gd, g = namespace_of(t.data).asarray(gd), None      # a host grad for a device output
            if gd.dtype != want and (not isinstance(g, Tensor) or want != t.data.dtype):
                gd, g = gd.astype(want), None
            seeds.append((g if isinstance(g, Tensor) else gd, False))
        roots.append(t._node)
    return roots, seeds


def _as_list(x):
    if x is None:
        return None
    return list(x) if isinstance(x, (list, tuple)) else [x]


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """Accumulate the gradients of `tensors` into the .grad of every leaf they depend on.

    >>> import gpuad
    >>> a = gpuad.tensor(1.0, requires_grad=True)
    >>> b = a + a
    >>> c = b + b
    >>> gpuad.autograd.backward(c)
    >>> a.grad.item()
    4.0
    """
    tensors = _as_list(tensors)
    grads = _as_list(grad_tensors) or [None] * len(tensors)
    if len(grads) != len(tensors):
        raise ValueError(f"gpuad.backward: {len(tensors)} outputs but {len(grads)} grads")
    if retain_graph is None:
        retain_graph = create_graph
    roots, seeds = _root_grads(tensors, grads, "backward")
    _callbacks.append([])
    try:
        run(roots, seeds, _namespace(seeds, create_graph), retain_graph, create_graph, None)
        queued = _callbacks[-1]
        while queued:                      # a callback may queue another: run them in order until none is left
            queued.pop(0)()
    finally:
        _callbacks.pop()


# One list per backward() in progress (a hook may start a nested backward).
_callbacks = []


def queue_callback(fn):
    """Run fn() once the backward() in progress has finished its walk.

    torch's `Variable._execution_engine.queue_callback`. A gradient hook uses it to act
    when every gradient of this pass is final; DistributedDataParallel waits for its
    all-reduces there, so backward() returns with synchronised gradients.

    >>> import gpuad
    >>> w = gpuad.tensor(2.0, requires_grad=True)
    >>> seen = []
    >>> h = w.register_post_accumulate_grad_hook(
    ...     lambda t: gpuad.autograd.queue_callback(lambda: seen.append(t.grad.item())))
    >>> (w * 3).backward()
    >>> seen
    [3.0]
    """
    if not _callbacks:
        raise RuntimeError("gpuad.autograd.queue_callback: no backward() is running "
                           "(call it from a hook during backward)")
    _callbacks[-1].append(fn)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """d(outputs)/d(inputs), returned as a tuple; nothing is written to .grad.

    Inputs may be leaves or intermediates (the lecture's edge severing: the
    gradient at a node equals the gradient obtained by making it an input).

    >>> import gpuad
    >>> x = gpuad.tensor(2.0, requires_grad=True)
    >>> y = x ** 3
    >>> (dx,) = gpuad.autograd.grad(y, x, create_graph=True)
    >>> (ddx,) = gpuad.autograd.grad(dx, x)
    >>> dx.item(), ddx.item()
    (12.0, 12.0)
    """
    outputs = _as_list(outputs)
    inputs = _as_list(inputs)
    grads = _as_list(grad_outputs) or [None] * len(outputs)
    if retain_graph is None:
        retain_graph = create_graph
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor) or t._node is None:
            raise BackwardError(f"gpuad.autograd.grad: input {i} does not require grad, so no "
                                f"gradient flows to it (set requires_grad=True on it before the forward)")
    roots, seeds = _root_grads(outputs, grads, "autograd.grad")
    targets = {}
    for i, t in enumerate(inputs):
        targets.setdefault(t._node, []).append(i)
    found = run(roots, seeds, _namespace(seeds, create_graph), retain_graph, create_graph, targets)
    result = []
    for i, t in enumerate(inputs):
        g = found.get(t._node)
        if g is None:
            if not allow_unused:
                raise BackwardError(f"gpuad.autograd.grad: input {i} (shape {t.shape}) was not used to "
                                    f"compute the outputs; pass allow_unused=True to get None for it")
            result.append(None)
        else:
            result.append(g if isinstance(g, Tensor) else Tensor._from(g))
    return tuple(result)


def _namespace(seeds, create_graph):
    """The walk's xp: the seed's arrays' namespace, or, to record the backward pass
    (create_graph), the Tensor namespace whose constants land on the seed's device."""
    first = seeds[0][0]
    data = first.data if isinstance(first, Tensor) else first
    if create_graph:
        return tensor_ns_on(device_of(data))
    xp = namespace_of(data)
    return xp.base if xp.name == "batched" else xp       # vmap's values: each VJP picks its level


def tensor_backward(self, grad=None, retain_graph=False, create_graph=False):
    """Tensor.backward: accumulate d(self)/d(leaf) into every leaf's .grad (reverse mode).

    grad is required unless self has one element. retain_graph=True keeps the
    saved values so backward can run again; create_graph=True records the
    backward pass, for higher derivatives.

    >>> import gpuad
    >>> x = gpuad.tensor([1.0, 2.0], requires_grad=True)
    >>> (x * x).sum().backward(); x.grad.tolist()
    [2.0, 4.0]
    """
    backward(self, grad, retain_graph=retain_graph, create_graph=create_graph)
