"""Jacobians: jacfwd (one jvp per input element), jacrev (one vjp per output element)
and hessian (forward over reverse), as JAX's.

>>> import gpuad
>>> gpuad.jacrev(gpuad.sin)(gpuad.tensor([0.0, 0.0])).tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""
import numpy as np

from .. import autograd
from ..backends import namespace_of
from ..pytree import tree_flatten, tree_unflatten
from ..tensor import Tensor
from .forward_mode import (_as_tensor, _input_values, _refuse_reverse_over_forward, _results, _tangent_inputs,
                           _traced, _z, run)
from .reverse import grad


def _argnums(argnums, n, who):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not -n <= a < n:
            raise ValueError(f"gpuad.{who}: argnums {argnums!r} out of range for {n} arguments")
    return tuple(a % n for a in nums)


def _basis(shape, dtype):
    n = int(np.prod(shape))
    for i in range(n):
        e = np.zeros(n, dtype)
        e[i] = 1
        yield e.reshape(shape)


def jacfwd(f, argnums=0, has_aux=False):
    """The Jacobian of f by forward mode: one jvp per input element (JAX's jacfwd).
    Output shape: out.shape + in.shape, per argnum.

    >>> import gpuad
    >>> gpuad.jacfwd(lambda x: x * x)(gpuad.tensor([1.0, 2.0])).tolist()
    [[2.0, 0.0], [0.0, 4.0]]
    """
    def wrapped(*args):
        _refuse_reverse_over_forward(args, "jacfwd")
        nums = _argnums(argnums, len(args), "jacfwd")
        cap, leaves, spec, targs = _traced(f, args)
        values = _input_values(cap, targs)
        outs, aux = None, None
        per_arg = []
        for a in nums:
            sub_leaves, _ = tree_flatten(targs[a])
            cols = []
            for x in sub_leaves:
                for e in _basis(x.shape, x.dtype):
                    t_leaves = [e if y is x else None for y in leaves]
                    env, tan = run(cap.graph, values, _tangent_inputs(cap, spec, t_leaves), cap.device)
                    value, tangent = _results(cap, env, tan)
                    if has_aux:
                        value, aux = value
                        tangent = tangent[0]
                    outs = value
                    cols.append(tangent)
            per_arg.append(_stack_columns(cols, outs, targs[a]))
        jac = per_arg[0] if isinstance(argnums, int) else tuple(per_arg)
        return (jac, aux) if has_aux else jac
    return wrapped


def _stack_columns(cols, out, arg):
    """Columns (one output pytree per input element) as out.shape + arg.shape."""
    arg_leaves, arg_spec = tree_flatten(arg)
    out_leaves, out_spec = tree_flatten(out)
    per_out = []
    for k, o in enumerate(out_leaves):
        blocks, start = [], 0
        for x in arg_leaves:
            n = int(np.prod(x.shape))
            cs = [tree_flatten(c)[0][k].data for c in cols[start:start + n]]
            start += n
            m = np.stack(cs, axis=-1).reshape(tuple(o.shape) + tuple(x.shape)) if cs else \
                namespace_of(o.data).zeros(tuple(o.shape) + tuple(x.shape), o.dtype)
            blocks.append(Tensor._from(m))
        per_out.append(tree_unflatten(arg_spec, blocks))
    return tree_unflatten(out_spec, per_out)


def jacrev(f, argnums=0, has_aux=False):
    """The Jacobian of f by reverse mode: one vjp per output element (JAX's jacrev).

    >>> import gpuad
    >>> gpuad.jacrev(lambda x: x * x)(gpuad.tensor([1.0, 2.0])).tolist()
    [[2.0, 0.0], [0.0, 4.0]]
    """
    def wrapped(*args):
        nums = _argnums(argnums, len(args), "jacrev")
        args = [_as_tree_tensors(a) for a in args]
        diff = []
        for a in nums:
            leaves, spec = tree_flatten(args[a])
            fresh = [Tensor(x.data).requires_grad_(True) if not x.requires_grad else x * 1 for x in leaves]
            args[a] = tree_unflatten(spec, fresh)
            diff.append((fresh, spec))
        out = f(*args)
        aux = None
        if has_aux:
            out, aux = out
        out_leaves, out_spec = tree_flatten(out)
        flat_in = [x for fresh, _ in diff for x in fresh]
        rows = {i: [] for i in range(len(out_leaves))}
        for k, o in enumerate(out_leaves):
            for e in _basis(o.shape, o.dtype):
                if o._node is None:
                    gs = [None] * len(flat_in)
                else:
                    gs = autograd.grad(o, flat_in, grad_outputs=Tensor(e, device=o.device), retain_graph=True,
                                       allow_unused=True)
                rows[k].append([_z(x.data) if g is None else g.data for g, x in zip(gs, flat_in)])
        per_arg = []
        offset = 0
        for fresh, spec in diff:
            per_out = []
            for k, o in enumerate(out_leaves):
                blocks = []
                for j, x in enumerate(fresh):
                    m = np.stack([r[offset + j] for r in rows[k]], axis=0) if rows[k] else \
                        namespace_of(x.data).zeros((0,) + x.shape, x.dtype)
                    blocks.append(Tensor._from(m.reshape(tuple(o.shape) + tuple(x.shape))))
                per_out.append(tree_unflatten(spec, blocks))
            per_arg.append(tree_unflatten(out_spec, per_out))
            offset += len(fresh)
        jac = per_arg[0] if isinstance(argnums, int) else tuple(per_arg)
        return (jac, aux) if has_aux else jac
    return wrapped


def _as_tree_tensors(a):
    leaves, spec = tree_flatten(a)
    return tree_unflatten(spec, [_as_tensor(x) for x in leaves])


def hessian(f, argnums=0):
    """Forward over reverse: jacfwd(jacrev(f)) (JAX's hessian).

    >>> import gpuad
    >>> gpuad.hessian(lambda x: (x ** 3).sum())(gpuad.tensor([1.0, 2.0])).tolist()
    [[6.0, 0.0], [0.0, 12.0]]
    """
    return jacfwd(grad(f, argnums), argnums)
