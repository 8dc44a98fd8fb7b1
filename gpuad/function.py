"""gpuad.autograd.Function: an op with a forward and a backward of the user's own, as
torch.autograd.Function.

    class Exp(gpuad.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return g * y

    y = Exp.apply(x)

apply() runs forward without recording (its ops leave no graph) and, when some
tensor argument requires grad, records one node of the FUNCTION primitive. What
the node saves is the arrays of ctx.save_for_backward, as explicit data the
planner and gpuad.memory see and free at their last use, never a closure; the rest
of ctx (its attributes) travels in the node's params. Several differentiable
outputs are packed into one root (one flat copy of their values), as a
checkpoint's are. backward() runs with recording on only under create_graph=True,
where the saved inputs and outputs come back wired to the graph, so a backward
written with gpuad ops differentiates again; `once_differentiable` refuses that.
Inside gpuad.checkpoint a Function records as any op does; under gpuad.compile its
forward and backward are traced like the rest of the step.

>>> import gpuad
>>> class Cube(gpuad.autograd.Function):
...     @staticmethod
...     def forward(ctx, x):
...         ctx.save_for_backward(x)
...         return x ** 3
...     @staticmethod
...     def backward(ctx, g):
...         (x,) = ctx.saved_tensors
...         return 3 * x * x * g
>>> x = gpuad.tensor([2.0], requires_grad=True)
>>> Cube.apply(x).sum().backward(); x.grad.tolist()
[12.0]
"""
import functools

import numpy as np

from . import graph
from .backends import device_of, namespace_of
from .graph import _Mode, new_node
from .ops import composite as C
from .ops.registry import primitive
from .tensor import Tensor


class FunctionCtx:
    """What forward hands to backward: save_for_backward's tensors (kept as the node's saved
    arrays), needs_input_grad, mark_non_differentiable, and any attribute set on it."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.to_save = ()
        self.non_differentiable = set()
        self.materialize_grads = True
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        for i, t in enumerate(tensors):
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"gpuad.autograd.Function: save_for_backward takes Tensors (or None); argument "
                                f"{i} is a {type(t).__name__} (keep other values as attributes of ctx)")
        self.to_save = tensors

    def mark_non_differentiable(self, *tensors):
        self.non_differentiable.update(id(t) for t in tensors)

    def mark_dirty(self, *tensors):
        """torch's: these inputs were modified in place by forward. gpuad's version counters
        see the writes themselves; kept for torch code that calls it."""
        self.dirty = tensors

    def set_materialize_grads(self, value):
        self.materialize_grads = bool(value)


def once_differentiable(backward):
    """A backward that is not itself differentiable: it runs without recording, and
    create_graph=True through it raises instead of giving wrong second derivatives."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if graph.is_grad_enabled():          # create_graph=True: the walk records this backward
            raise RuntimeError(f"gpuad.autograd.Function: {backward.__qualname__} is once_differentiable; "
                               f"create_graph=True cannot differentiate through it")
        with graph.no_grad():
            return backward(ctx, *grads)
    return wrapper


@primitive("autograd_function", inputs=("*",))
def FUNCTION(xp, *args, **params):
    raise RuntimeError("gpuad: the autograd_function primitive is built by Function.apply(), not applied")


class Function:
    """Subclass with static forward(ctx, *args) and backward(ctx, *grad_outputs); call
    apply(*args). backward returns one gradient (or None) per forward argument."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("gpuad.autograd.Function: define forward(ctx, ...) as a staticmethod")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("gpuad.autograd.Function: define backward(ctx, ...) as a staticmethod")

    @classmethod
    def apply(cls, *args, **kwargs):
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = FunctionCtx(needs)
        with graph.no_grad():
            out = cls.forward(ctx, *args, **kwargs)
        single = not isinstance(out, (tuple, list))
        outs = [out] if single else list(out)
        for i, o in enumerate(outs):
            if not isinstance(o, Tensor) and o is not None and not np.isscalar(o):
                raise TypeError(f"gpuad.autograd.Function: {cls.__name__}.forward returned a "
                                f"{type(o).__name__} as output {i}; return Tensors")
        parents = tuple(a._node if isinstance(a, Tensor) else None for a in args)
        recording = graph.is_grad_enabled() and any(p is not None for p in parents)
        if recording and not _Mode.enabled:                   # inside gpuad.checkpoint
            parents = _Mode.checkpoint.parents(FUNCTION, parents)
            recording = parents is not None
        grads_for = [i for i, o in enumerate(outs) if isinstance(o, Tensor) and o.dtype.kind == "f"
                     and id(o) not in ctx.non_differentiable]
        if not recording or not grads_for:
            return out
        outs = [o.detach() if isinstance(o, Tensor) and o._node is not None else o for o in outs]
        return _record(cls, ctx, args, outs, grads_for, tuple(parents), single)


def _record(cls, ctx, args, outs, grads_for, parents, single):
    """One FUNCTION node for the outputs in grads_for (packed into one root if several)."""
    # where each saved tensor comes from: a forward argument, an output, or elsewhere, so
    # create_graph can hand it back wired to the graph
    pack = len(grads_for) > 1
    if pack:
        dtypes = {outs[i].dtype for i in grads_for}
        if len(dtypes) > 1:
            raise TypeError(f"gpuad.autograd.Function: {cls.__name__} returned differentiable outputs of several "
                            f"dtypes {sorted(map(str, dtypes))}; return one dtype (or mark the others "
                            f"non-differentiable)")
        xp = namespace_of(outs[grads_for[0]].data)
        root_data = xp.concatenate([outs[i].data.reshape(-1) for i in grads_for])
    else:
        root_data = outs[grads_for[0]].data
    # where each saved tensor comes from: a forward argument, an output (saved as the root,
    # which the returned outputs view: no second buffer), or elsewhere, so create_graph can
    # hand it back wired to the graph
    arg_ids = {id(a): i for i, a in enumerate(args) if isinstance(a, Tensor)}
    out_ids = {id(outs[i]): k for k, i in enumerate(grads_for)}
    sources, saved = [], []
    for t in ctx.to_save:
        if t is not None and id(t) in out_ids:
            sources.append(("out", out_ids[id(t)]))
            saved.append(root_data)
        else:
            sources.append(("arg", arg_ids[id(t)]) if t is not None and id(t) in arg_ids else ("none", None))
            saved.append(None if t is None else t.data)
    saved = tuple(saved)
    ctx.to_save = ()                                       # the node's saved arrays hold them, not ctx
    params = {"cls": cls, "ctx": ctx, "sources": sources, "n_args": len(args), "n_outs": len(outs),
              "packed": grads_for, "shapes": [tuple(outs[i].shape) for i in grads_for], "pack": pack,
              "arg_meta": [(tuple(a.shape), a.dtype) if isinstance(a, Tensor) else None for a in args]}
    node = new_node(FUNCTION, parents, saved, params, tuple(p is not None for p in parents),
                    tuple(root_data.shape), root_data.dtype)
    root = Tensor._from(root_data, node)
    if not pack:
        outs[grads_for[0]] = root
    else:
        offset = 0
        for i, shape in zip(grads_for, params["shapes"]):
            n = int(np.prod(shape))
            outs[i] = C.reshape(root[offset:offset + n], shape)
            offset += n
    return outs[0] if single else tuple(outs)


@FUNCTION.defvjp
def _function_vjp(xp, g, saved, node, donate):
    p = node.params
    cls, ctx = p["cls"], p["ctx"]
    create = xp.name == "tensor"
    # the upstream gradient per output (zeros for outputs that got none, as torch's
    # materialize_grads; None for outputs outside the graph)
    gt = g if create else Tensor._from(g)
    grads, offset = [None] * p["n_outs"], 0
    for i, shape in zip(p["packed"], p["shapes"]):
        n = int(np.prod(shape))
        grads[i] = C.reshape(gt[offset:offset + n], shape) if p["pack"] else gt
        offset += n
    ctx.saved_tensors = tuple(_saved_tensor(s, src, node, create) for s, src in zip(saved, p["sources"]))
    try:
        if create:
            result = cls.backward(ctx, *grads)
        else:
            with graph.no_grad():
                result = cls.backward(ctx, *grads)
    finally:
        ctx.saved_tensors = ()
    result = result if isinstance(result, (tuple, list)) else (result,)
    if len(result) != p["n_args"]:
        raise RuntimeError(f"gpuad.autograd.Function: {cls.__name__}.backward returned {len(result)} gradients "
                           f"for {p['n_args']} forward arguments (return None for those without one)")
    out = []
    for i, (r, parent, meta) in enumerate(zip(result, node.parents, p["arg_meta"])):
        if parent is None or r is None:
            out.append(None)
            continue
        if not isinstance(r, Tensor):
            r = Tensor(np.asarray(r, dtype=meta[1]), device=device_of(g.data if create else g))
        if tuple(r.shape) != meta[0]:
            raise RuntimeError(f"gpuad.autograd.Function: {cls.__name__}.backward returned a gradient of shape "
                               f"{tuple(r.shape)} for argument {i} of shape {meta[0]}")
        out.append(r if create else r.data)
    return tuple(out)


def _saved_tensor(arr, source, node, create):
    if arr is None:
        return None
    if isinstance(arr, Tensor):            # create_graph: the walk wraps saved arrays by operand position
        arr = arr.data
    kind, k = source
    if kind == "arg":
        return Tensor._from(arr, node.parents[k] if create else None)
    if kind == "out":
        root = Tensor._from(arr, node if create else None)
        if not node.params["pack"]:
            return root
        shapes = node.params["shapes"]
        offset = sum(int(np.prod(s)) for s in shapes[:k])
        return C.reshape(root[offset:offset + int(np.prod(shapes[k]))], shapes[k])
    return Tensor._from(arr)


def _abstract_vjp(xp, g, saved, node, donate):
    """For the planner: the user's backward run on sizes (gpuad ops on abstract arrays
    count their buffers as the real run does); a backward that needs values (.item(), its
    own numpy) gets the estimate of one fresh gradient per input instead."""
    try:
        return _function_vjp(xp, g, saved, node, donate)
    except Exception:  # noqa: BLE001  (user code that cannot run on shapes)
        return tuple(xp.empty(p.shape, p.dtype) if need else None for p, need in zip(node.parents, node.needs))


FUNCTION.register_kernel("abstract", None, _abstract_vjp)
