"""JAX-style function transforms: grad, value_and_grad, vjp.

They wrap the engine: arguments become fresh BLACK leaves, f runs once, and
autograd.grad differentiates it. If an argument is already BLACK (a transform
inside a transform), the result stays in its graph, so grad(grad(f)) works.

>>> import gpuad
>>> f = lambda x: (x ** 3).sum()
>>> gpuad.grad(f)(gpuad.tensor(2.0)).item()
12.0
>>> gpuad.grad(gpuad.grad(f))(gpuad.tensor(2.0)).item()
12.0
"""
import numpy as np

from . import autograd
from .ops import api
from .tensor import Tensor


def _argnums(argnums, n):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not -n <= a < n:
            raise ValueError(f"gpuad.grad: argnums {argnums!r} out of range for {n} arguments")
    return tuple(a % n for a in nums)


def _prepare(args, nums):
    """Make the differentiated arguments BLACK; report whether any was already (nesting)."""
    args = list(args)
    nested = False
    for a in nums:
        x = args[a]
        if isinstance(x, Tensor) and x.requires_grad:
            nested = True
            args[a] = api.multiply(x, 1)     # a fresh node inside the outer graph
        else:
            data = x.data if isinstance(x, Tensor) else x
            t = Tensor(data, dtype=np.float32 if isinstance(x, (float, int)) and not isinstance(x, bool) else None)
            args[a] = t.requires_grad_(True)
    return args, nested


def _scalar(out, who):
    if not isinstance(out, Tensor):
        raise TypeError(f"gpuad.{who}: f must return a Tensor, got {type(out).__name__}")
    if out.data.size != 1:
        raise ValueError(f"gpuad.{who}: f must return a scalar, got shape {out.shape} (use vjp for others)")
    return out


def value_and_grad(f, argnums=0, has_aux=False):
    """Return a function giving (f(*args), df/d args[argnums]).

    >>> import gpuad
    >>> v, g = gpuad.value_and_grad(lambda x: (x * x).sum())(gpuad.tensor([1.0, 2.0]))
    >>> v.item(), g.numpy().tolist()
    (5.0, [2.0, 4.0])
    """
    def wrapped(*args, **kwargs):
        nums = _argnums(argnums, len(args))
        prepared, nested = _prepare(args, nums)
        out = f(*prepared, **kwargs)
        aux = None
        if has_aux:
            out, aux = out
        out = _scalar(out, "grad")
        if out._node is None:
            grads = tuple(Tensor._from(np.zeros_like(prepared[a].data)) for a in nums)
        else:
            grads = autograd.grad(out, [prepared[a] for a in nums], create_graph=nested,
                                  retain_graph=nested, allow_unused=True)
            grads = tuple(g if g is not None else Tensor._from(np.zeros_like(prepared[a].data))
                          for g, a in zip(grads, nums))
        g = grads[0] if isinstance(argnums, int) else grads
        value = out if nested else out.detach()
        return ((value, aux), g) if has_aux else (value, g)
    return wrapped


def grad(f, argnums=0, has_aux=False):
    """Return a function computing the gradient of scalar f w.r.t. args[argnums].

    >>> import gpuad
    >>> gpuad.grad(lambda x, y: (x * y).sum(), argnums=(0, 1))(gpuad.tensor(3.0), gpuad.tensor(4.0))
    (tensor(4.), tensor(3.))
    """
    vg = value_and_grad(f, argnums, has_aux)

    def wrapped(*args, **kwargs):
        value, g = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g
    return wrapped


def vjp(f, *primals):
    """Return (f(*primals), vjp_fn); vjp_fn(cotangent) gives one gradient per primal.

    >>> import gpuad
    >>> y, back = gpuad.vjp(lambda x: x * 2, gpuad.tensor([1.0, 2.0]))
    >>> back(gpuad.tensor([1.0, 10.0]))[0].numpy()
    array([ 2., 20.], dtype=float32)
    """
    prepared, nested = _prepare(primals, range(len(primals)))
    out = f(*prepared)
    if not isinstance(out, Tensor):
        raise TypeError(f"gpuad.vjp: f must return a Tensor, got {type(out).__name__}")

    def vjp_fn(cotangent):
        if out._node is None:
            return tuple(Tensor._from(np.zeros_like(p.data)) for p in prepared)
        gs = autograd.grad(out, prepared, grad_outputs=cotangent, retain_graph=True,
                           create_graph=nested, allow_unused=True)
        return tuple(g if g is not None else Tensor._from(np.zeros_like(p.data)) for g, p in zip(gs, prepared))
    return (out if nested else out.detach()), vjp_fn
