"""einsum equations: parsed once, for the shape rule (backends/abstract.py), the
op's argument checks and its VJP (ops/contraction.py).

>>> parse_einsum("ij,jk", [2, 2])
(['ij', 'jk'], 'ik')
"""


def parse_einsum(equation, ndims):
    """(input subscripts, output subscripts) with the implicit output made explicit."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise NotImplementedError("gpuad.einsum: ellipsis ('...') subscripts are not supported; "
                                  "name every dimension")
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
