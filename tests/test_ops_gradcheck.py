"""Every primitive's VJP against central finite differences in float64.

CASES maps each registered primitive to the calls that exercise it,
broadcasting and keepdims variants included. Unary elementwise primitives
declared with a `domain` (the derivative table) get a generated case on an
irregular shape, so one declaration is all a new one needs.
test_every_primitive_has_a_case fails the moment someone registers an op
that has neither.
"""
import numpy as np
import pytest

import gpuad
from gpuad.gradcheck import gradcheck, gradgradcheck
from gpuad.ops import REGISTRY
from gpuad.ops import conv as conv_ops, shape as S
from gpuad.nn import functional as F
from tests.programs import mul_tanh

R = np.random.default_rng(7)


def r(*shape, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, size=shape)


def pos(*shape):
    return r(*shape, lo=0.5, hi=2.0)


def away0(*shape):
    """Values at least 0.2 from zero (kinks of abs and relu)."""
    x = r(*shape, lo=0.2, hi=2.0)
    return x * np.where(R.random(shape) < 0.5, -1.0, 1.0)


MASK = R.random((3, 4)) < 0.5
X3 = r(3)
ADDITIVE = r(1, 4)

CASES = {
    "vmap_in": [(lambda a: gpuad.vmap(lambda r: gpuad.tanh(r) * r[0])(a), (r(3, 4),)),
                (lambda a, w: gpuad.vmap(lambda r, w: w @ r, in_axes=(1, None), out_axes=1)(a, w), (r(3, 4), r(2, 3)))],
    "add": [(lambda a, b: a + b, (r(3, 4), r(4))), (lambda a, b: a + b, (r(3, 1), r(1, 4))),
            (lambda a: 2.5 + a, (r(2, 3),))],
    "subtract": [(lambda a, b: a - b, (r(3, 4), r(3, 1))), (lambda a: 1.0 - a, (r(5),))],
    "multiply": [(lambda a, b: a * b, (r(2, 3, 4), r(3, 1))), (lambda a: a * 3.0, (r(4),))],
    "divide": [(lambda a, b: a / b, (r(3, 4), pos(4))), (lambda a: 2.0 / a, (pos(3),))],
    "power": [(lambda a: a ** 3, (r(4),)), (lambda a: a ** 2.5, (pos(3, 2),)),
              (lambda a, b: a ** b, (pos(3, 2), r(2))), (lambda b: 2.0 ** b, (r(3),)),
              (lambda a: a ** 2, (r(3),))],
    "maximum": [(lambda a, b: gpuad.maximum(a, b), (r(3, 4), r(4)))],
    "minimum": [(lambda a, b: gpuad.minimum(a, b), (r(3, 4), r(3, 1)))],
    "where": [(lambda a, b: gpuad.where(gpuad.tensor(MASK), a, b), (r(3, 4), r(4))),
              (lambda a: gpuad.where(gpuad.tensor(MASK), a, 0.0), (r(3, 4),))],
    "gelu": [(gpuad.gelu, (r(6, lo=-3, hi=3),)),
             (lambda a: gpuad.gelu(a, approximate="tanh"), (r(6, lo=-3, hi=3),))],
    "softplus": [(gpuad.softplus, (r(6, lo=-5, hi=5),)),
                 (lambda a: gpuad.softplus(a, beta=2.0, threshold=3.0), (r(6, lo=-4, hi=4),))],
    # astype: through a wider float and back, so finite differences keep float64 precision
    "astype": [(lambda a: gpuad.astype(gpuad.astype(a, np.longdouble) * 3.0, "float64"), (r(3),))],
    "sum": [(lambda a: a.sum(), (r(3, 4),)), (lambda a: a.sum(axis=1), (r(3, 4),)),
            (lambda a: a.sum(axis=(0, 2), keepdims=True), (r(2, 3, 4),)),
            (lambda a: a.sum(dim=-1, keepdim=True), (r(2, 3),))],
    "max": [(lambda a: a.max(), (r(3, 4),)), (lambda a: a.amax(axis=0), (r(3, 4),)),
            (lambda a: a.amax(axis=1, keepdims=True), (r(3, 4),))],
    "min": [(lambda a: a.amin(axis=-1), (r(3, 4),)), (lambda a: a.min(), (r(5),))],
    "cumsum": [(lambda a: gpuad.cumsum(a, 1), (r(3, 4),)), (lambda a: a.cumsum(-1) * a, (r(5),))],
    "cumprod": [(lambda a: gpuad.cumprod(a, 0), (r(4, 3),)), (lambda a: a.cumprod(1),
                                                              (np.array([[1.5, 0.0, 2.0, -1.0]]),))],
    "reshape": [(lambda a: a.reshape(4, 3), (r(3, 4),)), (lambda a: a.reshape(-1), (r(2, 3),))],
    "transpose": [(lambda a: a.T, (r(3, 4),)), (lambda a: a.transpose(0, 2), (r(2, 3, 4),)),
                  (lambda a: a.permute(2, 0, 1), (r(2, 3, 4),))],
    "broadcast_to": [(lambda a: gpuad.broadcast_to(a, (2, 3, 4)), (r(3, 1),))],
    "getitem": [(lambda a: a[1:, ::2], (r(3, 4),)), (lambda a: a[[0, 2, 0]], (r(3, 4),)),
                (lambda a: a[gpuad.tensor(MASK)], (r(3, 4),)), (lambda a: a[None, ..., 1], (r(3, 4),)),
                (lambda a: a[1], (r(3, 4),)), (lambda a: a[:, [1, 1, 3]], (r(3, 4),))],
    "scatter_add": [(lambda g: S.scatter_add(g, shape=(4, 3), index=(np.array([0, 2, 0]),), unique=False),
                     (r(3, 3),)),
                    (lambda g: S.scatter_add(g, shape=(4, 3), index=(slice(1, 3),), unique=True), (r(2, 3),))],
    "setitem": [(lambda a, v: gpuad.setitem(a, (slice(None), 1), v), (r(3, 4), r(3))),
                (lambda a, v: gpuad.setitem(a, ([0, 2],), v), (r(3, 4), r(4))),
                (lambda a: gpuad.setitem(a, 0, 5.0), (r(2, 3),))],
    "einsum": [(lambda a, b: gpuad.einsum("ij,jk->ik", a, b), (r(2, 3), r(3, 4))),
               (lambda a, b, c: gpuad.einsum("bij,bjk,k->bi", a, b, c), (r(2, 3, 4), r(2, 4, 5), r(5))),
               (lambda a: gpuad.einsum("ij->j", a), (r(3, 4),)), (lambda a, b: gpuad.einsum("i,j", a, b), (r(3), r(2))),
               (lambda a, b: gpuad.einsum("iij,jk->ik", a, b), (r(3, 3, 2), r(2, 4))),             # a diagonal
               (lambda a, b: gpuad.einsum("...ij,...jk", a, b), (r(2, 3, 4), r(1, 4, 2)))],       # broadcast ellipsis
    "vector_norm": [(lambda a: gpuad.norm(a), (r(3, 4),)), (lambda a: gpuad.norm(a, p=3, dim=1), (r(3, 4),)),
                    (lambda a: gpuad.vector_norm(a, 1, dim=0, keepdim=True), (away0(3, 4),)),
                    (lambda a: gpuad.vector_norm(a, float("inf"), dim=1), (r(3, 4),))],
    "scaled_dot_product_attention": [
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), (r(2, 3, 4), r(2, 5, 4), r(2, 5, 3))),
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.7), (r(4, 3), r(5, 3), r(5, 2))),
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=MASK[:3, :4]), (r(3, 2), r(4, 2), r(4, 2))),
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=ADDITIVE), (r(3, 2), r(4, 2), r(4, 2))),
        (lambda q, k, v: _seeded_attention_dropout(q, k, v), (r(3, 2), r(4, 2), r(4, 2)))],
    "layer_norm": [(lambda x, w, b: F.layer_norm(x, (4,), w, b), (r(3, 4), r(4), r(4))),
                   (lambda x: F.layer_norm(x, (2, 3)), (r(2, 2, 3),))],
    "rms_norm": [(lambda x, w: F.rms_norm(x, (4,), w, eps=1e-3), (r(3, 4), r(4))),
                 (lambda x: F.rms_norm(x, (3,)), (r(2, 3),))],
    "conv": [(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2), (r(2, 2, 4, 4), r(4, 1, 2, 2), r(4))),
             (lambda x, w: F.conv1d(x, w, padding=1, dilation=2), (r(2, 3, 6), r(2, 3, 2)))],
    "conv_transpose": [(lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1),
                        (r(1, 2, 3, 3), r(2, 2, 2, 2)))],
    "conv_weight": [(lambda x, g: conv_ops.conv_weight(x, g, size=(5, 5), kernel=(2, 2), stride=(2, 2),
                                                       padding=((1, 0), (0, 1)), dilation=(1, 1), groups=1),
                     (r(2, 2, 5, 5), r(2, 3, 3, 3)))],
    "max_pool": [(lambda x: F.max_pool2d(x, 2, 1, 1), (r(2, 2, 3, 3),)),
                 (lambda x: F.max_pool1d(x, 3, 2, ceil_mode=True), (r(2, 2, 6),))],
    "batch_norm": [(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (r(4, 3, 2, 2), r(3), r(3))),
                   (lambda x: F.batch_norm(x, None, None, training=True, eps=1e-3), (r(5, 2),))],
    "remainder": [(lambda a, b: a % b, (r(3, 4), pos(4) + 1.0)), (lambda a: a % 0.7, (r(5),))],
    "atan2": [(lambda a, b: gpuad.atan2(a, b), (r(3, 4), r(4)))],
    "concatenate": [(lambda a, b: gpuad.concat([a, b], axis=1), (r(2, 3), r(2, 2))),
                    (lambda a, b: gpuad.concat([a, b, a]), (r(2, 3), r(1, 3)))],
    "stack": [(lambda a, b: gpuad.stack([a, b], axis=1), (r(2, 3), r(2, 3)))],
    "matmul": [(lambda a, b: a @ b, (r(3, 4), r(4, 2))), (lambda a, b: a @ b, (r(2, 3, 4), r(4, 5))),
               (lambda a, b: a @ b, (r(4), r(2, 4, 3))), (lambda a, b: a @ b, (r(3, 4), r(4))),
               (lambda a, b: a @ b, (r(4), r(4))), (lambda a, b: a @ b, (r(2, 1, 3, 4), r(5, 4, 2)))],
    "softmax": [(lambda a: gpuad.softmax(a, axis=-1), (r(3, 4),)), (lambda a: gpuad.softmax(a, dim=0), (r(3, 4),))],
    "log_softmax": [(lambda a: gpuad.log_softmax(a, axis=1), (r(3, 4),)),
                    (lambda a: gpuad.log_softmax(a, axis=0), (r(3, 4),))],
    "linear": [(lambda x, w, b: F.linear(x, w, b), (r(5, 3), r(4, 3), r(4))),
               (lambda x, w: F.linear(x, w), (r(2, 5, 3), r(4, 3))),
               (lambda w, b: F.linear(gpuad.tensor(X3), w, b), (r(4, 3), r(4)))],
    "linear_tanh": [(lambda x, w, b: F.linear(x, w, b, "tanh"), (r(5, 3), r(4, 3), r(4)))],
    "linear_sigmoid": [(lambda x, w, b: F.linear(x, w, b, "sigmoid"), (r(5, 3), r(4, 3), r(4)))],
    "linear_relu": [(lambda x, w, b: F.linear(x, w, b, "relu"), (r(5, 3), r(4, 3), r(4, lo=3, hi=4)))],
    "linear_gelu": [(lambda x, w, b: F.linear(x, w, b, "gelu"), (r(5, 3), r(4, 3), r(4))),
                    (lambda x, w: F.linear(x, w, None, "gelu"), (r(2, 5, 3), r(4, 3)))],
    "cross_entropy": [(lambda z: F.cross_entropy(z, gpuad.tensor([0, 3, 1, 3])), (r(4, 5),)),
                      (lambda z: F.cross_entropy(z, gpuad.tensor([2, 0, 1]), reduction="sum"), (r(3, 4),)),
                      (lambda z: F.cross_entropy(z, gpuad.tensor([2, 0, 1]), reduction="none"), (r(3, 4),))],
    "dropout": [(lambda x: _seeded_dropout(x), (r(4, 6),))],
    "checkpoint": [(lambda x, w: gpuad.checkpoint(lambda a: (a @ w).tanh() * a.sum(), x), (r(3, 4), r(4, 4))),
                   (lambda x, w: gpuad.checkpoint(lambda a, b: (a * w, b.sin()), x, w)[1], (r(3), r(3)))],
    "autograd_function": [(lambda x, y: mul_tanh(gpuad).apply(x, y), (r(3, 4), r(3, 4))),
                          (lambda x: sum(o.sum() for o in _ExpPair.apply(x)[:2]), (r(5),))],
}


class _ExpPair(gpuad.autograd.Function):
    """Two outputs packed into one node, one of them saved, and an integer output."""

    @staticmethod
    def forward(ctx, x):
        e = x.exp()
        ctx.save_for_backward(e)
        return e, e * 3.0, x.argmax()

    @staticmethod
    def backward(ctx, g1, g2, _):
        (e,) = ctx.saved_tensors
        return (g1 + 3.0 * g2) * e

def _sample(domain, shape):
    if domain == "away0":
        return away0(*shape)
    return r(*shape, lo=domain[0], hi=domain[1])


def table_cases():
    """Generated cases for every unary elementwise primitive with a domain (fixtures included)."""
    out = {}
    for name, p in REGISTRY.items():
        if p.kind == "unary" and p.domain is not None and p.differentiable:
            out[name] = [(getattr(gpuad, name), (_sample(p.domain, (3, 5)),))]
    return out


def all_cases():
    cases = {name: list(c) for name, c in table_cases().items()}
    for name, c in CASES.items():
        cases.setdefault(name, []).extend(c)
    return cases


# Second order through these is not supported (and says so).
NO_SECOND_ORDER = set()


def _seeded_attention_dropout(q, k, v):
    gpuad.manual_seed(6)            # the same attention mask at every probe
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)


def _seeded_dropout(x):
    gpuad.manual_seed(5)            # the same mask at every probe of the finite differences
    return F.dropout(x, 0.4)


# Primitives with no gradient at all: checked to stay GREY instead.
NONDIFF = {"less", "less_equal", "greater", "greater_equal", "equal", "not_equal", "isnan", "isfinite", "isinf",
           "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "logical_not", "logical_and", "logical_or",
           "logical_xor", "floor_divide"}


def _cases(second_order=False):
    for name, cases in all_cases().items():
        for i, (fn, inputs) in enumerate(cases):
            marks = [pytest.mark.xfail(raises=NotImplementedError, strict=True)] \
                if second_order and name in NO_SECOND_ORDER else []
            yield pytest.param(fn, inputs, id=f"{name}-{i}", marks=marks)


# Primitives only a backward makes, reached by another primitive's gradgradcheck.
REACHED_BY = {"checkpoint_input": "checkpoint (a recompute under create_graph reads through it)",
              "vmap_out": "vmap_in's case (every vmap ends with it)"}


# Cases whose graph the memory planner refuses, loudly (tests/test_vmap.py checks the refusal).
NOT_PLANNED = {"vmap_in": "a graph recorded under vmap holds batched values the planner does not model"}


def planned_params():
    """pytest params of every case, the NOT_PLANNED ones skipped with their reason."""
    for name, cases in all_cases().items():
        for i, (fn, inputs) in enumerate(cases):
            marks = [pytest.mark.skip(reason=NOT_PLANNED[name])] if name in NOT_PLANNED else []
            yield pytest.param(fn, inputs, id=f"{name}-{i}", marks=marks)


def test_every_primitive_has_a_case():
    differentiable = {n for n, p in REGISTRY.items() if p.differentiable}
    missing = differentiable - set(all_cases()) - set(REACHED_BY)
    assert not missing, f"primitives registered without a gradcheck case: {sorted(missing)}"
    assert {n for n, p in REGISTRY.items() if not p.differentiable} <= NONDIFF


@pytest.mark.parametrize("fn,inputs", list(_cases()))
def test_gradcheck(fn, inputs):
    assert gradcheck(fn, inputs)


@pytest.mark.parametrize("fn,inputs", list(_cases(second_order=True)))
def test_gradgradcheck(fn, inputs):
    """The VJPs are themselves differentiable (create_graph=True)."""
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("name", sorted(NONDIFF))
def test_nondifferentiable_ops_are_grey(name):
    x = gpuad.tensor(r(3), requires_grad=True)
    prim = REGISTRY[name]
    if name.startswith("bitwise"):                    # integers and bools only, as in torch
        with pytest.raises(TypeError):
            prim(x) if prim.nin == 1 else prim(x, x)
        return
    out = prim(x) if prim.nin == 1 else prim(x, 0.5)
    assert not out.requires_grad


def test_gradcheck_reports_the_op_and_both_numbers():
    wrong = gpuad.unary("_test_wrong_sin", "x", "2.0", fwd=lambda xp, x: xp.sin(x))
    try:
        with pytest.raises(gpuad.GradcheckError, match=r"_test_wrong_sin w\.r\.t\. input 0.*VJP gives .* finite differences give"):
            gradcheck(lambda x: wrong(x), (r(3),))
    finally:
        gpuad.surface.unregister("_test_wrong_sin")


def _weighted_backward(fn, inputs, hooked):
    """Leaves' gradients of sum(w * fn(...)) (w fixed), with post-accumulate hooks or without."""
    ts = [gpuad.tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in inputs]
    fired = []
    handles = [t.register_post_accumulate_grad_hook(lambda t, i=i: fired.append(i)) for i, t in enumerate(ts)] \
        if hooked else []
    out = fn(*ts)
    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, gpuad.Tensor)
            and o.requires_grad]
    w = np.random.default_rng(3)
    loss = sum(((o * gpuad.tensor(w.uniform(0.5, 1.5, o.shape))).sum() for o in outs), gpuad.tensor(0.0))
    loss.backward()
    for h in handles:
        h.remove()
    return [None if t.grad is None else t.grad.numpy() for t in ts], fired


@pytest.mark.parametrize("fn,inputs", list(_cases()))
def test_hooked_leaves_finish_early_with_the_same_gradients(fn, inputs):
    """A leaf with a post-accumulate hook is finished right after its last consumer
    (gpuad/autograd.py's `early`): through every primitive, the gradients are bitwise
    those of the plain walk, and the hook fires once per leaf that got a gradient."""
    plain, _ = _weighted_backward(fn, inputs, hooked=False)
    early, fired = _weighted_backward(fn, inputs, hooked=True)
    assert sorted(fired) == [i for i, g in enumerate(plain) if g is not None]
    for a, b in zip(plain, early):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
