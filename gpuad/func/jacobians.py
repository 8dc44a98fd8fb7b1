"""Jacobians: jacfwd (jvp vmapped over the input basis), jacrev (the backward vmapped
over the output basis) and hessian (forward over reverse), as JAX's.

>>> import gpuad
>>> gpuad.jacrev(gpuad.sin)(gpuad.tensor([0.0, 0.0])).tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""
import numpy as np

from .. import autograd
from ..backends import namespace_of
from ..pytree import tree_flatten, tree_unflatten
from ..tensor import Tensor
from .forward_mode import _as_tensor, _refuse_reverse_over_forward, _z, jvp
from .reverse import grad
from .vmap import vmap


def _argnums(argnums, n, who):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not -n <= a < n:
            raise ValueError(f"gpuad.{who}: argnums {argnums!r} out of range for {n} arguments")
    return tuple(a % n for a in nums)


def _eye(n, dtype, like):
    """The n x n identity on like's device: the basis vectors, batched along axis 0."""
    return Tensor._from(namespace_of(like).eye(n, dtype=dtype))


def jacfwd(f, argnums=0, has_aux=False):
    """The Jacobian of f by forward mode (JAX's jacfwd): one jvp, vmapped over the basis
    of the inputs (every column in one batched run, not a loop). Output shape:
    out.shape + in.shape, per argnum.

    >>> import gpuad
    >>> gpuad.jacfwd(lambda x: x * x)(gpuad.tensor([1.0, 2.0])).tolist()
    [[2.0, 0.0], [0.0, 4.0]]
    """
    def wrapped(*args):
        _refuse_reverse_over_forward(args, "jacfwd")
        nums = _argnums(argnums, len(args), "jacfwd")
        args = [_as_tree_tensors(a) for a in args]
        diff = [(a, tree_flatten(args[a])) for a in nums]
        flat = [x for _, (leaves, _) in diff for x in leaves]
        sizes = [int(np.prod(x.shape)) for x in flat]
        n = sum(sizes)
        dtype = np.result_type(*(x.dtype for x in flat)) if flat else np.float32

        def column(e):
            # e: one basis vector over all differentiated leaves, cut into their tangents
            tangents, start = [], 0
            for x, k in zip(flat, sizes):
                tangents.append(e[start:start + k].reshape(x.shape).astype(x.dtype))
                start += k
            t_iter = iter(tangents)
            tangent_args = [None] * len(args)
            for a, (leaves, spec) in diff:
                tangent_args[a] = tree_unflatten(spec, [next(t_iter) for _ in leaves])
            for i in range(len(args)):
                if tangent_args[i] is None:
                    lv, sp = tree_flatten(args[i])
                    tangent_args[i] = tree_unflatten(sp, [Tensor._from(_z(x.data)) for x in lv])
            res = jvp(f, tuple(args), tuple(tangent_args), has_aux=has_aux)
            return (res[1], res[2]) if has_aux else res[1]
        # the basis along the tangents' last axis; aux is the same for every column
        res = vmap(column, out_axes=(-1, None) if has_aux else -1)(_eye(n, dtype, flat[0].data))
        tangent, aux = res if has_aux else (res, None)
        out_leaves, out_spec = tree_flatten(tangent)
        per_arg, start = [], 0
        for a, (leaves, spec) in diff:
            per_out = []
            for o in out_leaves:                 # out.shape + (n,): the basis along the last axis
                blocks, s0 = [], start
                for x in leaves:
                    k = int(np.prod(x.shape))
                    shape = tuple(o.shape[:-1]) + tuple(x.shape)
                    blocks.append(Tensor._from(o.data[..., s0:s0 + k].reshape(shape)))
                    s0 += k
                per_out.append(tree_unflatten(spec, blocks))
            start += sum(int(np.prod(x.shape)) for x in leaves)
            per_arg.append(tree_unflatten(out_spec, per_out))
        jac = per_arg[0] if isinstance(argnums, int) else tuple(per_arg)
        return (jac, aux) if has_aux else jac
    return wrapped


def jacrev(f, argnums=0, has_aux=False):
    """The Jacobian of f by reverse mode (JAX's jacrev): f runs once, and its backward
    is vmapped over the basis of the outputs (every row in one batched walk).

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
            fresh = [Tensor._from(x.data).requires_grad_(True) if not x.requires_grad else x * 1 for x in leaves]
            args[a] = tree_unflatten(spec, fresh)
            diff.append((fresh, spec))
        out = f(*args)
        aux = None
        if has_aux:
            out, aux = out
        out_leaves, out_spec = tree_flatten(out)
        flat_in = [x for fresh, _ in diff for x in fresh]
        rows = []
        for o in out_leaves:
            m = int(np.prod(o.shape))
            if o._node is None or m == 0:
                rows.append([Tensor._from(namespace_of(x.data).zeros((m,) + tuple(x.shape), x.dtype))
                             for x in flat_in])
                continue

            def row(e, o=o):
                gs = autograd.grad(o, flat_in, grad_outputs=e.reshape(o.shape), retain_graph=True,
                                   allow_unused=True)
                return [Tensor._from(_z(x.data)) if g is None else g for g, x in zip(gs, flat_in)]
            rows.append(vmap(row)(_eye(m, o.dtype, o.data)))
        per_arg = []
        offset = 0
        for fresh, spec in diff:
            per_out = []
            for k, o in enumerate(out_leaves):
                blocks = [Tensor._from(rows[k][offset + j].data.reshape(tuple(o.shape) + tuple(x.shape)))
                          for j, x in enumerate(fresh)]
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
