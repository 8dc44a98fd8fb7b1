"""GEMM epilogues: a matmul whose only reader is an elementwise group of its shape
(a bias add, an activation, a residual add: `gelu(x @ W.T + b) + r`) becomes one
group that forms the product and applies the group to it, tile by tile.

On a GPU that group is one Triton kernel (gpuad/compiler/codegen/triton_groups.py,
gemm_source): the product lives in registers and never goes to memory, which
saves writing and reading its M x N elements (8MN bytes in float32) and a launch.
The numpy executor has no kernel to put the epilogue in: it forms the product in
the group's output array and runs the group over it in place, so the product
costs no buffer of its own there either; which is what the buffer planner already
arranged for the two ops apart. So the pass runs where groups run as Triton
kernels (a device, or gpuad.set_kernels('triton') on the CPU).

Legality: the matmul's second operand is 2-D (a weight), its first has at least
two axes, all three are float32, float16 or bfloat16 of one dtype, and nothing
but the group reads the product (nor is it returned). The group must not reduce.
The combined group sits where the group sat: the matmul's operands live until
then (SSA: they are not written in between).

>>> import numpy as np
>>> from gpuad.compiler.ir import Graph
>>> from gpuad.compiler.passes import epilogue, fuse
>>> g = Graph(); x = g.input((4, 3), np.float32, "x"); w = g.input((3, 5), np.float32, "w")
>>> b = g.input((5,), np.float32, "b")
>>> y = g.add_eqn("matmul", (x, w), {}, (4, 5), np.float32)
>>> g.outputs = [g.add_eqn("tanh", (g.add_eqn("add", (y, b), {}, (4, 5), np.float32),), {}, (4, 5), np.float32)]
>>> print(epilogue.run(fuse.run(g)).eqns[0])
v6:f32[4,5] = fused x w b kernel=matmul{add,tanh}
>>> k = epilogue.run(fuse.run(g)).eqns[0].params["kernel"].value
>>> xs, ws, bs = (np.ones(s, np.float32) for s in ((4, 3), (3, 5), (5,)))
>>> bool(np.allclose(k(xs, ws, bs)[0], np.tanh(xs @ ws + bs)))
True
"""
import numpy as np

from ..ir import Eqn, Literal, iter_vars
from .fuse import FusedKernel, fusible

_DTYPES = {"float32", "float16", "bfloat16"}


class GemmEpilogue:
    """A matmul and the elementwise group that consumes it, run as one group:
    `kernel(a, b, *rest, outs=None)`, rest being the group's other inputs in order."""

    reduces = False
    inplace_ok = False          # the product's operands are read across whole rows and columns
                                # of the output: an output written over one of them is a race

    def __init__(self, mm, group):
        self.mm, self.group = mm, group
        self.rest = [v for v in group.ins if v is not mm.out]
        self.ins = list(mm.args[:2]) + self.rest
        self.outs, self.shape = group.outs, group.shape
        self.members = [mm] + list(group.members)

    @property
    def scratch(self):
        return self.group.scratch

    @property
    def source(self):
        return f"# the product {self.mm}, then:\n{self.group.source}"

    def _group_args(self, product, rest):
        rest = iter(rest)
        return [product if v is self.mm.out else next(rest) for v in self.group.ins]

    def __call__(self, a, b, *rest, outs=None):
        # the product is formed in the group's output array and the group runs over it in
        # place (an elementwise group may: each chunk reads its inputs before writing)
        dst = outs[0] if outs is not None and self.group.inplace_ok else None
        product = np.matmul(a, b, out=dst) if dst is not None else np.matmul(a, b)
        return self.group(*self._group_args(product, rest), outs=outs)

    def unfused(self, xp):
        """The product on xp, then the group op by op (a device without Triton)."""
        run = self.group.unfused(xp)

        def call(a, b, *rest, outs=None):
            return run(*self._group_args(xp.matmul(a, b), rest), outs=outs)
        return call


def _group_of(e):
    """The FusedKernel of a fused group eqn, or of a single elementwise eqn; else None."""
    if e.prim == "fused":
        k = e.params["kernel"].value
        return k if isinstance(k, FusedKernel) and not k.reduces else None
    if fusible(e) and len(e.outs) == 1:
        ins = []
        for v in e.invars():
            if all(v is not i for i in ins):
                ins.append(v)
        return FusedKernel([e], ins, [e.out], e.out.shape)
    return None


def _gemm(e):
    if e.prim != "matmul" or e.params or len(e.args) != 2:
        return False
    a, b = e.args
    return (hasattr(a, "shape") and hasattr(b, "shape") and len(b.shape) == 2 and len(a.shape) >= 2
            and {np.dtype(a.dtype).name, np.dtype(b.dtype).name, e.out.dtype.name} <= _DTYPES
            and a.dtype == b.dtype == e.out.dtype)


def run(graph):
    readers = {}
    for e in graph.eqns:
        for v in {v.id: v for v in e.invars()}.values():
            readers.setdefault(v.id, []).append(e)
    returned = {v.id for v in iter_vars(graph.outputs)}
    merged = {}             # id(consumer eqn) -> the combined eqn; id(matmul eqn) -> None (dropped)
    for e in graph.eqns:
        if not _gemm(e) or e.out.id in returned or len(readers.get(e.out.id, ())) != 1:
            continue
        c = readers[e.out.id][0]
        if id(c) in merged:
            continue
        group = _group_of(c)
        if group is None or tuple(group.shape) != e.out.shape:
            continue
        k = GemmEpilogue(e, group)
        name = "matmul{" + ",".join(m.prim for m in group.members) + "}"
        merged[id(c)] = Eqn("fused", tuple(k.ins), {"kernel": Literal(k, name)}, c.outs)
        merged[id(e)] = None
    g = graph.copy()
    g.eqns = [merged.get(id(e), e) for e in graph.eqns if merged.get(id(e), e) is not None]
    return g
