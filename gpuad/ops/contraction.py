"""matmul, batched and with numpy's 1-D rules.

For (..., M, K) @ (..., K, N): forward reads MK + KN and writes MN; the VJP
saves b only if a needs a gradient and a only if b does, and costs two more
GEMMs: dA = dC B^T (MNK) and dB = A^T dC (MNK). Transposes are views, so no
bytes move for them. Batch broadcasting is summed back by the engine.

>>> import gpuad
>>> a = gpuad.tensor([[1.0, 2.0]], requires_grad=True)
>>> b = gpuad.tensor([[3.0], [4.0]])
>>> (a @ b).backward()
>>> a.grad.numpy()
array([[3., 4.]], dtype=float32)
"""
from ..xp.subscripts import parse_einsum
from .registry import primitive, OTHER


@primitive("matmul", inputs=("a", "b"), kind=OTHER, retain={"a": "b", "b": "a"}, operator="matmul", dtypes="same")
def matmul(xp, a, b):
    """Matrix product with batch broadcasting; 1-D operands as in numpy."""
    return xp.matmul(a, b)


@matmul.defvjp
def _matmul_vjp(xp, g, saved, node, donate):
    a, b = saved
    na, nb = node.needs
    # An operand is saved only when the other needs a gradient; otherwise it is
    # BLACK itself and its node knows its shape.
    a_ndim = a.ndim if a is not None else len(node.parents[0].shape)
    b_ndim = b.ndim if b is not None else len(node.parents[1].shape)
    # Promote 1-D operands to matrices, as the forward did implicitly.
    if a_ndim == 1 and b_ndim == 1:
        g = xp.reshape(g, (1, 1))
    elif a_ndim == 1:
        g = xp.reshape(g, g.shape[:-1] + (1, g.shape[-1]))
    elif b_ndim == 1:
        g = xp.reshape(g, g.shape + (1,))
    ga = gb = None
    if na:
        b2 = xp.reshape(b, (b.shape[0], 1)) if b_ndim == 1 else b
        ga = xp.matmul(g, xp.swapaxes(b2, -1, -2))
        if a_ndim == 1:
            ga = xp.reshape(ga, ga.shape[:-2] + (ga.shape[-1],))
    if nb:
        a2 = xp.reshape(a, (1, a.shape[0])) if a_ndim == 1 else a
        gb = xp.matmul(xp.swapaxes(a2, -1, -2), g)
        if b_ndim == 1:
            gb = xp.reshape(gb, gb.shape[:-1])
    return ga, gb


# --- einsum ------------------------------------------------------------------------------
#
# numpy's einsum with optimize=True chooses the contraction order (pairwise, by
# a greedy cost model, as opt_einsum does), so a chain like "ij,jk,kl->il" runs
# as two GEMMs in the cheap order. Operand k's gradient is itself an einsum: the
# output gradient contracted with the other operands, into k's subscripts; an
# index only k has (summed out in the forward) is brought back by a ones vector.

@primitive("einsum", inputs=("*",), kind=OTHER, retain={"*": None}, vjp_temps=1)
def einsum(xp, *operands, equation):
    """The contraction `equation` of the operands (numpy's subscripts)."""
    return xp.einsum(equation, *operands, optimize=True)


@einsum.defvjp
def _einsum_vjp(xp, g, saved, node, donate):
    ops = saved
    ins, out = parse_einsum(node.params["equation"], [len(o.shape) for o in ops])
    sizes = {}
    for s, o in zip(ins, ops):
        sizes.update(zip(s, o.shape))
    grads = []
    for k, need in enumerate(node.needs):
        if not need:
            grads.append(None)
            continue
        subs_k = ins[k]
        # a repeated index (a diagonal, "ii"): the gradient is formed on the distinct letters,
        # then put back on the diagonal by one identity per repeat ("ab,ac->abc" with eye(a, c))
        mine = "".join(dict.fromkeys(subs_k))
        others = [(s, o) for i, (s, o) in enumerate(zip(ins, ops)) if i != k]
        present = set(out).union(*[set(s) for s, _ in others])
        extra = [c for c in mine if c not in present]
        subs = [out] + [s for s, _ in others] + extra
        arrays = [g] + [o for _, o in others] + [xp.ones((sizes[c],), dtype=g.dtype) for c in extra]
        r = xp.einsum(",".join(subs) + "->" + mine, *arrays, optimize=True)
        if mine != subs_k:
            r = _on_diagonal(xp, r, mine, subs_k, sizes, set(node.params["equation"]))
        # numpy may hand back a transposed view of its result: make it a buffer of its own,
        # which the engine may then own (and the planner, which sees a fresh one, predicts)
        grads.append(r if xp.name != "numpy" or r.base is None else r.copy())
    return tuple(grads)


def _on_diagonal(xp, r, mine, subs, sizes, taken):
    """r (subscripts `mine`, each letter once) placed on the diagonals `subs` repeats:
    each repeat of a letter gets a fresh letter tied to the first by an identity."""
    fresh = (c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in taken)
    seen, spelled, ties = set(), "", []
    for c in subs:
        if c in seen:
            f = next(fresh)
            ties.append(c + f)
            spelled += f
        else:
            seen.add(c)
            spelled += c
    eyes = [xp.eye(sizes[t[0]], dtype=r.dtype) for t in ties]
    return xp.einsum(",".join([mine] + ties) + "->" + spelled, r, *eyes, optimize=True)
