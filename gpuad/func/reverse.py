"""JAX-style function transforms: grad, value_and_grad, vjp (on pytrees: dicts, lists
and tuples of Tensors, as JAX); forward mode is in forward_mode.py.

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

from .. import autograd
from ..ops import composite as C
from ..pytree import tree_flatten, tree_unflatten
from ..tensor import Tensor


def _argnums(argnums, n):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not -n <= a < n:
            raise ValueError(f"gpuad.grad: argnums {argnums!r} out of range for {n} arguments")
    return tuple(a % n for a in nums)


def _leaf(x):
    """A fresh BLACK leaf for x (a Tensor, array or number); (leaf, whether x was BLACK)."""
    if isinstance(x, Tensor) and x.requires_grad:
        return C.multiply(x, 1), True      # a fresh node inside the outer graph (nesting)
    data = x.data if isinstance(x, Tensor) else x
    if getattr(data, "_xp", None) is not None:
        t = Tensor._from(data.copy())        # a traced array (gpuad.compile, gpuad.jvp)
    else:
        t = Tensor(data, dtype=np.float32 if isinstance(x, (float, int)) and not isinstance(x, bool) else None)
    return t.requires_grad_(True), False


def _prepare(args, nums):
    """Make the differentiated arguments BLACK, leaf by leaf of each pytree (dicts,
    lists, tuples of Tensors); report whether any was BLACK already (nesting)."""
    args = list(args)
    nested = False
    for a in nums:
        leaves, spec = tree_flatten(args[a])
        fresh = []
        for x in leaves:
            t, was = _leaf(x)
            fresh.append(t)
            nested = nested or was
        args[a] = tree_unflatten(spec, fresh)
    return args, nested


def _grads(outs, cotangents, trees, nested, retain):
    """d outs / d every leaf of the trees (weighted by cotangents; None: ones), as a
    tuple of trees of the same structure; zeros where nothing flows (allow_unused)."""
    flat, spec = tree_flatten(tuple(trees))
    live = [(o, c) for o, c in zip(outs, cotangents) if o._node is not None]
    if live:
        gs = autograd.grad([o for o, _ in live], flat, grad_outputs=[c for _, c in live],
                           create_graph=nested, retain_graph=retain, allow_unused=True)
    else:
        gs = [None] * len(flat)
    return tree_unflatten(spec, [g if g is not None else Tensor._from(np.zeros_like(x.data))
                                 for g, x in zip(gs, flat)])


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
        grads = _grads([out], [None], [prepared[a] for a in nums], nested, retain=nested)
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
    out_leaves, out_spec = tree_flatten(out)
    if not out_leaves or not all(isinstance(o, Tensor) for o in out_leaves):
        raise TypeError(f"gpuad.vjp: f must return a Tensor or a pytree of them, got {type(out).__name__}")

    def vjp_fn(cotangent):
        c_leaves, c_spec = tree_flatten(cotangent)
        if c_spec != out_spec:
            raise ValueError("gpuad.vjp: the cotangent must have the structure of f's output")
        return _grads(out_leaves, c_leaves, prepared, nested, retain=True)
    if not nested:
        out = tree_unflatten(out_spec, [o.detach() for o in out_leaves])
    return out, vjp_fn
