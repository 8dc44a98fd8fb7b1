"""einsum equations: parsed once, for the shape rule (backends/abstract.py), the
op's argument checks and its VJP (ops/contraction.py), and einsum's batching rule
(xp/batching.py): part of the xp vocabulary, so every layer above can read them.

>>> parse_einsum("ij,jk", [2, 2])
(['ij', 'jk'], 'ik')
"""
import numpy as np


def parse_einsum(equation, ndims):
    """(input subscripts, output subscripts) with the implicit output made explicit."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise ValueError("gpuad.einsum: expand the ellipsis first (expand_ellipsis)")
    ins, _, out = eq.partition("->")
    ins = ins.split(",")
    if len(ins) != len(ndims):
        raise ValueError(f"gpuad.einsum: {equation!r} names {len(ins)} operands, got {len(ndims)}")
    for s, n in zip(ins, ndims):
        if len(s) != n:
            raise ValueError(f"gpuad.einsum: subscripts {s!r} for an operand with {n} dims")
    if not _:
        letters = "".join(ins)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return ins, out


def expand_ellipsis(equation, shapes):
    """(equation with every '...' replaced by letters of its own, the broadcast shape of
    the ellipsis dims or None): each operand's '...' covers its dims the letters do not
    name, aligned from the right as numpy and torch broadcast them; an implicit output
    is those dims first, then the letters used once, sorted (torch's rule).

    >>> expand_ellipsis("...ij,...jk->...ik", [(2, 3, 4), (4, 5)])
    ('Aij,jk->Aik', (2,))
    """
    eq = equation.replace(" ", "")
    if "..." not in eq:
        return eq, None
    ins, arrow, out = eq.partition("->")
    ins = ins.split(",")
    if len(ins) != len(shapes):
        raise ValueError(f"gpuad.einsum: {equation!r} names {len(ins)} operands, got {len(shapes)}")
    used = set(eq) - {".", ",", "-", ">"}
    free = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in used]
    widths = [len(shape) - len(s.replace("...", "")) if "..." in s else 0 for s, shape in zip(ins, shapes)]
    if any(w < 0 for w in widths):
        raise ValueError(f"gpuad.einsum: {equation!r} names more dims than an operand of shapes {shapes} has")
    width = max(widths, default=0)
    letters = "".join(free[:width])
    dims = []
    for s, shape, w in zip(ins, shapes, widths):
        if "..." in s:
            start = s.index("...")
            dims.append(tuple(shape[start:start + w]))
    try:
        ell_shape = tuple(np.broadcast_shapes(*dims)) if dims else ()
    except ValueError:
        raise ValueError(f"gpuad.einsum: the ellipsis dims of operands with shapes {shapes} do not "
                         f"broadcast") from None
    new_ins = [s.replace("...", letters[width - w:]) for s, w in zip(ins, widths)]
    if arrow:
        new_out = out.replace("...", letters)
    else:
        named = "".join(s.replace("...", "") for s in ins)
        new_out = letters + "".join(sorted(c for c in set(named) if named.count(c) == 1))
    return ",".join(new_ins) + "->" + new_out, ell_shape
