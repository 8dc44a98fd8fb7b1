"""vmap: a function of one example, run on a batch at once (JAX's vmap, torch.func.vmap).

The arguments' batch axes (in_axes) become hidden leading axes of their
values (gpuad/backends/batched.py); f runs once, and each xp call inside it
runs its primitive's batching rule (gpuad/xp/batching.py) on the whole batch:
no Python loop over examples. Autograd records as usual, so grad inside vmap
(per-example gradients) and grad through vmap both work; vmaps nest, and jvp,
jacfwd, jacrev, hessian and gpuad.compile compose with it.

>>> import gpuad
>>> x = gpuad.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> gpuad.vmap(lambda r: (r * r).sum())(x).tolist()
[5.0, 25.0]
>>> gpuad.vmap(gpuad.grad(lambda r: (r * r).sum()))(x).tolist()
[[2.0, 4.0], [6.0, 8.0]]
"""
import contextlib
import functools

import numpy as np

from ..backends import namespace_of
from ..backends.batched import RECORDED_SUM, BatchedArray, BatchedNamespace, bottom_namespace
from ..graph import _next_index
from ..ops.registry import call, primitive
from ..pytree import tree_flatten, tree_unflatten
from ..random import DRAW_FILTERS
from ..tensor import Tensor

_levels = []            # the vmaps running now, outermost first


# -- the batch axis in and out: primitives, so gradients flow through vmap -----------

@primitive("vmap_in", inputs=("x",))
def VMAP_IN(xp, x, ns, axis):
    """One example's view of x, batched along `axis` (a view: no bytes move)."""
    return BatchedArray(xp.moveaxis(x, axis, 0) if axis else x, ns)


@VMAP_IN.defvjp
def _vmap_in_vjp(xp, g, saved, node, donate):
    p = node.params
    return (call(VMAP_OUT, xp, g, ns=p["ns"], axis=p["axis"]),)


@primitive("vmap_out", inputs=("x",))
def VMAP_OUT(xp, x, ns, axis):
    """The batch as an array again, its batch axis at `axis` (an unbatched x is broadcast
    along it: the same value for every example)."""
    if isinstance(x, BatchedArray) and x.ns is ns:
        v = x.value
    else:
        x = x if hasattr(x, "shape") else xp.asarray(x)
        v = namespace_of(x).broadcast_to(x, (ns.size,) + tuple(x.shape))
    return namespace_of(v).moveaxis(v, 0, axis) if axis else v


@VMAP_OUT.defvjp
def _vmap_out_vjp(xp, g, saved, node, donate):
    p = node.params
    return (call(VMAP_IN, xp, g, ns=p["ns"], axis=p["axis"]),)


def _recorded_sum(t, ns):
    """A create_graph gradient summed over the batch of `ns` (reduce_for), recorded."""
    from ..ops import composite as C
    return C.sum(VMAP_OUT(t, ns=ns, axis=0), axis=0)


RECORDED_SUM[0] = _recorded_sum


# -- in_axes and out_axes ------------------------------------------------------------------

def _broadcast_axes(axes, tree, what):
    """One axis (or None) per leaf of tree: axes is an int, None, or a prefix of tree."""
    if axes is None or isinstance(axes, int):
        return [axes] * len(tree_flatten(tree)[0])
    if isinstance(tree, (tuple, list)) and isinstance(axes, (tuple, list)):
        if len(axes) != len(tree):
            raise ValueError(f"gpuad.vmap: {what} has {len(axes)} entries for {len(tree)} values")
        return [a for sub, ax in zip(tree, axes) for a in _broadcast_axes(ax, sub, what)]
    if isinstance(tree, dict) and isinstance(axes, dict):
        if set(axes) != set(tree):
            raise ValueError(f"gpuad.vmap: {what} has keys {sorted(axes)} for {sorted(tree)}")
        return [a for k in sorted(tree) for a in _broadcast_axes(axes[k], tree[k], what)]
    raise ValueError(f"gpuad.vmap: {what} must be an int, None, or a tuple/list/dict matching the "
                     f"arguments' structure; got {axes!r}")


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _batch_size(leaves, axes):
    sizes = {}
    for x, a in zip(leaves, axes):
        if a is None:
            continue
        shape = tuple(getattr(_data(x), "shape", ()))
        if not -len(shape) <= a < max(len(shape), 1) or not shape:
            raise ValueError(f"gpuad.vmap: in_axes {a} for an argument of shape {shape}: out of range")
        sizes.setdefault(shape[a], []).append(shape)
    if not sizes:
        raise ValueError("gpuad.vmap: in_axes batches no argument (at least one must not be None)")
    if len(sizes) > 1:
        raise ValueError("gpuad.vmap: the batched arguments have different batch sizes: " +
                         ", ".join(f"{n} (shapes {shapes})" for n, shapes in sizes.items()))
    return next(iter(sizes))


# -- randomness -----------------------------------------------------------------------------

_SIZE_AT = {"random": 0, "standard_normal": 0, "integers": 2, "uniform": 2, "normal": 2, "binomial": 2,
            "exponential": 1, "standard_exponential": 0, "bernoulli": 1}    # where a draw's size= goes


class _BatchedRNG:
    """The generator's draws inside vmap: "error" refuses them, "same" draws one for
    every example, "different" draws a batch of them."""

    def __init__(self, rng, mode, ns):
        self.rng, self.mode, self.ns = rng, mode, ns
        self.bit_generator = rng.bit_generator

    def __getattr__(self, name):
        fn = getattr(self.rng, name)
        if not callable(fn):
            return fn
        if self.mode == "error":
            raise RuntimeError(f"gpuad.vmap: a random draw ({name}) inside vmap with randomness='error'; "
                               f"pass randomness='different' (each example its own draw) or 'same'")
        if self.mode == "same":
            return fn

        where = _SIZE_AT.get(name)
        if where is None:
            raise NotImplementedError(f"gpuad.vmap: the generator's {name}() with randomness='different'")

        @functools.wraps(fn)
        def draw(*args, **kw):
            args = list(args)
            size = args.pop(where) if len(args) > where else kw.pop("size", None)
            if size is None:
                raise NotImplementedError(f"gpuad.vmap: a {name}() draw of one number with "
                                          f"randomness='different' (an attention dropout seed); use 'same'")
            size = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
            drawn = fn(*args, size=(self.ns.size,) + size, **kw)     # on the host: to the batch's device
            return BatchedArray(bottom_namespace(self.ns).asarray(drawn), self.ns)
        return draw


@contextlib.contextmanager
def _randomness(mode, ns):
    wrap = lambda rng: _BatchedRNG(rng, mode, ns)       # noqa: E731
    DRAW_FILTERS.append(wrap)
    try:
        yield
    finally:
        DRAW_FILTERS.remove(wrap)


# -- the transform ----------------------------------------------------------------------------

def vmap(func, in_axes=0, out_axes=0, randomness="error", *, chunk_size=None, in_dims=None, out_dims=None):
    """func mapped over a batch axis of its arguments (JAX's and torch.func's vmap).

    in_axes (torch.func: in_dims): per argument, an int, None for not batched, or a
    pytree prefix; out_axes (out_dims): where the batch axis goes in each output. randomness: "error" (a random draw
    inside raises), "different" (each example its own draw) or "same" (one draw for
    all). chunk_size: run that many examples at a time (bounds the peak memory of
    the batched values), then concatenate.

    >>> import gpuad
    >>> w = gpuad.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> gpuad.vmap(lambda x, w: w @ x, in_axes=(0, None))(gpuad.ones(3, 2), w).tolist()
    [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
    """
    in_axes = in_axes if in_dims is None else in_dims
    out_axes = out_axes if out_dims is None else out_dims
    if randomness not in ("error", "different", "same"):
        raise ValueError(f"gpuad.vmap: randomness must be 'error', 'different' or 'same', got {randomness!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"gpuad.vmap: chunk_size must be a positive int or None, got {chunk_size!r}")

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        if isinstance(in_axes, (tuple, list)) and len(in_axes) != len(args):
            raise ValueError(f"gpuad.vmap: in_axes has {len(in_axes)} entries for {len(args)} positional "
                             f"arguments")
        leaves, spec = tree_flatten(tuple(args))
        axes = _broadcast_axes(tuple(in_axes) if isinstance(in_axes, list) else in_axes, tuple(args), "in_axes")
        n = _batch_size(leaves, axes)
        if chunk_size is None or chunk_size >= n:
            return _run(func, leaves, spec, axes, n, kwargs, out_axes, randomness)
        parts = []
        for s in range(0, n, chunk_size):
            part = [x if a is None else _slice(x, a, s, min(n, s + chunk_size)) for x, a in zip(leaves, axes)]
            parts.append(_run(func, part, spec, axes, min(n, s + chunk_size) - s, kwargs, out_axes, randomness))
        return _concat(parts, out_axes)
    return wrapped


def _slice(x, axis, lo, hi):
    index = (slice(None),) * (axis % len(_data(x).shape)) + (slice(lo, hi),)
    return x[index] if isinstance(x, Tensor) else _data(x)[index]


def _concat(parts, out_axes):
    from ..ops import composite as C
    leaves0, spec = tree_flatten(parts[0])
    axes = _broadcast_axes(out_axes, parts[0], "out_axes")
    cols = [tree_flatten(p)[0] for p in parts]
    return tree_unflatten(spec, [C.concatenate([c[k] for c in cols], axes[k] or 0) for k in range(len(leaves0))])


def _run(func, leaves, spec, axes, n, kwargs, out_axes, randomness):
    base = next((namespace_of(_data(x)) for x, a in zip(leaves, axes) if a is not None), None)
    ns = BatchedNamespace(len(_levels) + 1, n, base, start=_next_index())
    inner = []
    for x, a in zip(leaves, axes):
        if a is None:
            inner.append(x)
            continue
        t = x if isinstance(x, Tensor) else Tensor._from(_data(x) if hasattr(_data(x), "shape") else np.asarray(x))
        inner.append(VMAP_IN(t, ns=ns, axis=a % len(t.shape)))
    _levels.append(ns)
    try:
        with _randomness(randomness, ns):
            out = func(*tree_unflatten(spec, inner), **kwargs)
    finally:
        _levels.pop()
    out_leaves, out_spec = tree_flatten(out)
    o_axes = _broadcast_axes(out_axes, out, "out_axes")
    res = []
    for o, a in zip(out_leaves, o_axes):
        if a is None:
            if isinstance(o, Tensor) and isinstance(o.data, BatchedArray) and o.data.ns is ns:
                raise ValueError("gpuad.vmap: out_axes None for an output that differs per example")
            res.append(o)
            continue
        if not isinstance(o, Tensor):
            if isinstance(o, (int, float, bool)) or hasattr(o, "shape"):
                o = Tensor._from(np.asarray(o) if not hasattr(o, "shape") else o)
            else:
                raise TypeError(f"gpuad.vmap: f returned a {type(o).__name__}; vmap returns Tensors "
                                f"(or pytrees of them)")
        rank = len(o.shape) + 1
        if not -rank <= a < rank:
            raise ValueError(f"gpuad.vmap: out_axes {a} for an output of shape {o.shape} (rank {rank} batched)")
        res.append(VMAP_OUT(o, ns=ns, axis=a % rank))
    return tree_unflatten(out_spec, res)
