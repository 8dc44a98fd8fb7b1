"""gpuad.nn.functional (import as F): layers as functions.

linear, cross_entropy and dropout are fused primitives with their own
backward; mse_loss is composed from primitives.

>>> import gpuad
>>> import gpuad.nn.functional as F
>>> x = gpuad.ones((2, 3)); w = gpuad.ones((4, 3), requires_grad=True)
>>> F.linear(x, w, activation="tanh").shape
(2, 4)
"""
import numpy as np

from ..precision import AUTOCAST, autocast_args, autocast_function
from ..backends import namespace_of, refuse_any
from ..ops import composite as C, fused as N
from ..ops.dispatch import apply
from ..random import default_generator
from ..tensor import Tensor

tanh, sigmoid, gelu, softplus = C.tanh, C.sigmoid, C.gelu, C.softplus


def relu(input, inplace=False):  # noqa: A002
    """max(x, 0); inplace=True writes into input (recorded, as torch's relu_) and returns it.

    >>> import gpuad, gpuad.nn.functional as F
    >>> x = gpuad.tensor([-1.0, 2.0]); _ = F.relu(x, inplace=True); x.tolist()
    [0.0, 2.0]
    """
    return _t(input).clamp_(min=0.0) if inplace else C.relu(input)
softmax, log_softmax = C.softmax, C.log_softmax
from .spatial import (conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, pad, max_pool1d,  # noqa: E402,F401
                      max_pool2d, avg_pool1d, avg_pool2d, adaptive_avg_pool1d, adaptive_avg_pool2d, interpolate,
                      batch_norm, group_norm, unfold, fold)
from .losses import (l1_loss, smooth_l1_loss, huber_loss, binary_cross_entropy,  # noqa: E402,F401
                     binary_cross_entropy_with_logits, kl_div, silu, leaky_relu, elu, softmin, normalize,
                     cosine_similarity)


def _t(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def linear(x, weight, bias=None, activation=None, name="linear"):
    """activation(x @ weight.T + bias) as one fused primitive.

    weight is (out_features, in_features) as in PyTorch; activation is None,
    "relu", "tanh", "sigmoid" or "gelu". The backward computes dZ once and
    reuses it for dX, dW and db.

    >>> import gpuad, gpuad.nn.functional as F
    >>> F.linear(gpuad.ones((1, 2)), gpuad.ones((3, 2)), gpuad.zeros(3)).tolist()
    [[2.0, 2.0, 2.0]]
    """
    prim = N.LINEAR_PRIMITIVES.get(activation, False)
    if prim is False:
        raise ValueError(f"gpuad.{name}: unknown activation {activation!r}; choose one of "
                         f"{', '.join(repr(a) for a in N.LINEAR_ACTIVATIONS)}")
    x, weight = _t(x), _t(weight)
    if weight.ndim != 2:
        raise ValueError(f"gpuad.{name}: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"gpuad.{name}: input of shape {x.shape} does not fit weight of shape {weight.shape} "
                         f"(the input's last dimension must be in_features={weight.shape[1]})")
    if bias is not None:
        bias = _t(bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"gpuad.{name}: bias of shape {bias.shape} does not fit weight of shape "
                             f"{weight.shape} (expected ({weight.shape[0]},))")
    if AUTOCAST.active:                  # cast before the one-dtype check, as torch's autocast does
        x, weight, bias = autocast_args(prim.name, (x, weight, bias), x.device)
    dts = {t.dtype for t in (x, weight, bias) if t is not None}
    if len(dts) > 1:
        raise TypeError(f"gpuad.{name}: input, weight and bias need one dtype, got "
                        f"{x.dtype}, {weight.dtype}" + (f" and {bias.dtype}" if bias is not None else "")
                        + " (as torch: cast with .to() or .double()/.float())")
    return apply(prim, (x, weight, bias), None)


@autocast_function("mse_loss")
def mse_loss(input, target, reduction="mean"):  # noqa: A002
    """Mean (or summed) squared error, composed from primitives.

    >>> import gpuad, gpuad.nn.functional as F
    >>> F.mse_loss(gpuad.tensor([1.0, 3.0]), gpuad.tensor([0.0, 1.0])).item()
    2.5
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"gpuad.mse_loss: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    si, st = tuple(getattr(input, "shape", ())), tuple(getattr(target, "shape", ()))
    if si != st:
        import warnings
        warnings.warn(f"gpuad.mse_loss: using a target size {st} that is different to the input size {si}; "
                      f"this will likely lead to incorrect results due to broadcasting (as torch warns)",
                      UserWarning, stacklevel=2)
    d = C.subtract(input, target)
    sq = C.multiply(d, d)
    if reduction == "none":
        return sq
    return C.mean(sq) if reduction == "mean" else C.sum(sq)


@autocast_function("cross_entropy")
def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy from logits, as torch: logits (N, C) or (N, C, d1, ...) (or (C,));
    target class indices (N, d1, ...) or class probabilities of the logits' shape;
    class `weight`s, `ignore_index`, `label_smoothing`.

    The common case (N, C) logits, indices, no weight, smoothing or ignored
    targets is one fused primitive that saves the logits and the row log-sum-exp;
    the rest is composed from log_softmax, gather and sums.

    >>> import gpuad, gpuad.nn.functional as F
    >>> round(F.cross_entropy(gpuad.zeros((2, 4)), gpuad.tensor([0, 3])).item(), 4)
    1.3863
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"gpuad.cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    return _class_loss("cross_entropy", logits, target, weight, ignore_index, reduction, label_smoothing, False)


@autocast_function("nll_loss")
def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):  # noqa: A002
    """torch.nn.functional.nll_loss: the negative log-likelihood of log-probabilities
    (N, C) or (N, C, d1, ...) at integer targets (N, d1, ...), with class weights and
    ignore_index; 'mean' divides by the summed weights of the kept targets.

    >>> import gpuad, gpuad.nn.functional as F
    >>> F.nll_loss(gpuad.tensor([[-1.0, -2.0], [-3.0, -0.5]]), gpuad.tensor([1, 1])).item()
    1.25
    """
    return _class_loss("nll_loss", input, target, weight, ignore_index, reduction, 0.0, True)


def _class_loss(name, x, target, weight, ignore_index, reduction, eps, log_probs):
    """cross_entropy (from logits) and nll_loss (from log-probabilities): the user's shapes
    checked, then (N, C, d1...) as rows of classes."""
    x = _t(x)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"gpuad.{name}: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    if x.ndim == 0:
        raise ValueError(f"gpuad.{name}: the input must have a class dimension, got a 0-d tensor")
    t = target.data if isinstance(target, Tensor) else np.asarray(target)
    probs = t.dtype.kind == "f"
    if probs and log_probs:
        raise TypeError(f"gpuad.{name}: targets must be integer class indices, got dtype {t.dtype}")
    if not probs and t.dtype.kind not in "iu":
        raise TypeError(f"gpuad.{name}: targets must be integer class indices or float "
                        f"probabilities, got dtype {t.dtype}")
    batched = x.ndim > 1
    want = tuple(x.shape) if probs else ((x.shape[0],) + tuple(x.shape[2:]) if batched else ())
    if tuple(t.shape) != want:
        kind = "probability targets" if probs else "targets"
        raise ValueError(f"gpuad.{name}: {kind} of shape {tuple(t.shape)} do not fit "
                         f"{'logits' if not log_probs else 'an input'} of shape {x.shape} (expected {want})")
    if not batched:                                       # one unbatched sample: (C,)
        tt = (target if isinstance(target, Tensor) else Tensor(t)).reshape((1, -1) if probs else (1,))
        out = _class_loss(name, x.reshape(1, -1), tt, weight, ignore_index, reduction, eps, log_probs)
        return out.reshape(()) if reduction == "none" else out
    c = x.shape[1]
    if x.ndim > 2:                                        # (N, C, d1...): the class dim last, rows flattened
        perm = (0,) + tuple(range(2, x.ndim)) + (1,)
        spatial = (x.shape[0],) + x.shape[2:]
        flat = x.permute(*perm).reshape(-1, c)
        if probs:
            tt = (target if isinstance(target, Tensor) else Tensor(t)).permute(*perm).reshape(-1, c)
        else:
            tt = Tensor._from(t.reshape(-1))
        out = _class_loss(name, flat, tt, weight, ignore_index, reduction, eps, log_probs)
        return out.reshape(spatial) if reduction == "none" else out
    if probs:
        return _soft_cross_entropy(x, target, weight, reduction, eps)
    ignored = t == ignore_index
    if _traced(t):          # gpuad.compile: the values are unknown; the replay checks what this assumes
        none_ignored = weight is None and not eps and _assume_none(ignored, "a target equals ignore_index")
    else:
        valid = t[~ignored]
        if valid.size and (int(valid.min()) < 0 or int(valid.max()) >= c):
            raise ValueError(f"gpuad.{name}: targets must lie in [0, {c}) (or be ignore_index="
                             f"{ignore_index}), got values from {int(valid.min())} to {int(valid.max())}")
        none_ignored = not ignored.any()
    if not log_probs and weight is None and not eps and none_ignored:
        return apply(N.cross_entropy, (x, t), {"reduction": reduction} if reduction != "mean" else None)
    logp = x if log_probs else C.log_softmax(x, dim=1)
    return _indexed_nll(logp, t, ignored, weight, reduction, eps)


def _traced(a):
    return getattr(a, "_xp", None) is not None


def _assume_none(mask, what):
    """While tracing: take the branch for an all-False mask, and have the replay check it
    (the traced array's own namespace records the check)."""
    return mask._xp.assume_none(mask, what)


def _indexed_nll(logp, t, ignored, weight, reduction, eps):
    """torch's loss with class weights, ignored targets and label smoothing, composed from
    log-probabilities (N, C)."""
    n, c = logp.shape
    safe = np.where(ignored, 0, t)
    keep = Tensor._from((~ignored).astype(logp.dtype))
    w = _t(weight).astype(logp.dtype) if weight is not None else None
    w_rows = w[safe] * keep if w is not None else keep            # each row's weight, 0 when ignored
    nll = -logp.gather(1, Tensor._from(safe.reshape(n, 1))).reshape(n) * w_rows
    if eps:
        smooth = -(logp * w).sum(dim=1) if w is not None else -logp.sum(dim=1)
        nll = nll * (1 - eps) + smooth * keep * (eps / c)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / w_rows.sum()


def _soft_cross_entropy(logits, target, weight, reduction, eps):
    """Cross-entropy against class probabilities: -sum_c w_c p_c log softmax(x)_c."""
    n, c = logits.shape
    p = _t(target).astype(logits.dtype)
    if eps:
        p = p * (1 - eps) + eps / c
    logp = C.log_softmax(logits, dim=1)
    terms = logp * p if weight is None else logp * p * _t(weight).astype(logits.dtype)
    losses = -terms.sum(dim=1)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.sum() / n


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """torch's scaled_dot_product_attention: softmax(q k^T scale + mask) v for q (..., L, E),
    k (..., S, E), v (..., S, Ev); attn_mask boolean (True = attend) or additive, broadcast
    to (..., L, S); is_causal: key j attends query i when j <= i. One fused primitive
    (gpuad/ops/attention.py): tiled over keys with an online softmax, saving the row
    log-sum-exp instead of the L x S probabilities.

    >>> import gpuad, gpuad.nn.functional as F
    >>> q = gpuad.ones((1, 4, 8)); F.scaled_dot_product_attention(q, q, q, is_causal=True).shape
    (1, 4, 8)
    """
    from ..ops import attention as A
    q, k, v = _t(query), _t(key), _t(value)
    if enable_gqa:
        raise NotImplementedError("gpuad.scaled_dot_product_attention: enable_gqa is not supported yet")
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"gpuad.scaled_dot_product_attention: query, key and value need (..., L, E), (..., S, E), "
                         f"(..., S, Ev); got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"gpuad.scaled_dot_product_attention: query {q.shape} and key {k.shape} need one E, "
                         f"key and value {v.shape} one S")
    dts = {q.dtype, k.dtype, v.dtype}
    if len(dts) > 1:
        raise TypeError(f"gpuad.scaled_dot_product_attention: query, key and value need one dtype, got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}")
    L, S = q.shape[-2], k.shape[-2]
    mask = None
    if attn_mask is not None:
        if is_causal:
            raise ValueError("gpuad.scaled_dot_product_attention: give attn_mask or is_causal, not both (as torch)")
        if isinstance(attn_mask, Tensor) and attn_mask.requires_grad:
            raise NotImplementedError("gpuad.scaled_dot_product_attention: gradients to attn_mask are not supported")
        # on the queries' device (a host mask is copied there once, here)
        mask = namespace_of(q.data).asarray(attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask)
        if mask.ndim < 2 or mask.shape[-1] not in (1, S) or mask.shape[-2] not in (1, L):
            raise ValueError(f"gpuad.scaled_dot_product_attention: attn_mask of shape {mask.shape} does not "
                             f"broadcast to (..., {L}, {S})")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"gpuad.scaled_dot_product_attention: dropout_p must be in [0, 1), got {dropout_p}")
    params = {"mask": mask, "causal": bool(is_causal),
              "scale": float(scale) if scale is not None else A.default_scale(q.shape[-1])}
    if dropout_p:
        # the seed is drawn from gpuad's generator (a traced draw under gpuad.compile, so each
        # replay draws a new one) and kept on the node for the backward
        params.update(dropout_p=float(dropout_p), seed=default_generator.rng.integers(2 ** 63))
    return apply(A.scaled_dot_product_attention, (q, k, v), params)


def _normalized(name, x, normalized_shape, *params):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape or len(shape) > x.ndim:
        raise ValueError(f"gpuad.{name}: normalized_shape {shape} is not the trailing shape of input {x.shape}")
    for label, p in params:
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(f"gpuad.{name}: {label} of shape {tuple(p.shape)} does not match normalized_shape {shape}")
    return len(shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):  # noqa: A002
    """torch's layer_norm over the trailing normalized_shape dims: one primitive that
    saves the input and, per row, its mean and reciprocal std.

    >>> import gpuad, gpuad.nn.functional as F
    >>> F.layer_norm(gpuad.tensor([[1.0, 3.0]]), (2,)).numpy().round(4).tolist()
    [[-1.0, 1.0]]
    """
    from ..ops import norms
    x = _t(input)
    weight = _t(weight) if weight is not None else None
    bias = _t(bias) if bias is not None else None
    n = _normalized("layer_norm", x, normalized_shape, ("weight", weight), ("bias", bias))
    return apply(norms.layer_norm, (x, weight, bias), {"ndims": n, "eps": float(eps)})


def rms_norm(input, normalized_shape, weight=None, eps=None):  # noqa: A002
    """torch's rms_norm: x / sqrt(mean(x^2) + eps) * weight over the trailing dims; eps
    defaults to the dtype's machine epsilon, as in torch."""
    from ..ops import norms
    x = _t(input)
    weight = _t(weight) if weight is not None else None
    n = _normalized("rms_norm", x, normalized_shape, ("weight", weight))
    eps = float(np.finfo(x.dtype).eps) if eps is None else float(eps)
    return apply(norms.rms_norm, (x, weight), {"ndims": n, "eps": eps})


def embedding(input, weight, padding_idx=None):  # noqa: A002
    """Rows of weight at the integer ids in input (any shape): a gather, whose gradient
    adds into weight's rows, repeated ids accumulating; the padding_idx row gets none.

    >>> import gpuad, gpuad.nn.functional as F
    >>> w = gpuad.tensor([[0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    >>> F.embedding(gpuad.tensor([1, 1, 0]), w).sum().backward(); w.grad.tolist()
    [[1.0, 1.0], [2.0, 2.0]]
    """
    ids = input.data if isinstance(input, Tensor) else np.asarray(input)
    weight = _t(weight)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"gpuad.embedding: ids must be integers, got {ids.dtype}")
    if ids.size:
        refuse_any((ids < 0) | (ids >= weight.shape[0]), IndexError(
            f"gpuad.embedding: ids must lie in [0, {weight.shape[0]})"
            + ("" if _traced(ids) else f", got {int(ids.min())} to {int(ids.max())}")))
    out = weight[ids]
    if padding_idx is not None:
        pad = padding_idx % weight.shape[0]
        out = C.where(np.expand_dims(ids == pad, -1), out.detach(), out)     # no gradient to that row
    return out


def one_hot(tensor, num_classes=-1):
    """torch.nn.functional.one_hot: int64, shape tensor.shape + (num_classes,), with 1 at
    each index. num_classes=-1 takes max + 1 (a value: under gpuad.compile give it).

    >>> import gpuad, gpuad.nn.functional as F
    >>> F.one_hot(gpuad.tensor([0, 2]), 3).tolist()
    [[1, 0, 0], [0, 0, 1]]
    """
    ids = tensor.data if isinstance(tensor, Tensor) else np.asarray(tensor)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"gpuad.one_hot: class values must be integers, got {ids.dtype}")
    xp = namespace_of(ids)
    if num_classes == -1:
        if _traced(ids):
            raise TypeError("gpuad.one_hot: under gpuad.compile give num_classes (max + 1 is a value "
                            "the trace does not know)")
        num_classes = int(ids.max()) + 1 if ids.size else 0
    refuse_any((ids < 0) | (ids >= num_classes),
               ValueError(f"gpuad.one_hot: class values must lie in [0, {num_classes})"))
    return Tensor._from(xp.equal(ids[..., None], xp.arange(num_classes)).astype(np.int64))


def dropout(x, p=0.5, training=True, generator=None):
    """Zero each element with probability p and scale the rest by 1/(1-p).

    The mask comes from gpuad's seedable generator (or `generator`), so the
    same seed gives the same mask, and a checkpoint recompute replays it.

    >>> import gpuad, gpuad.nn.functional as F
    >>> _ = gpuad.manual_seed(0); a = F.dropout(gpuad.ones(6), 0.5)
    >>> _ = gpuad.manual_seed(0); b = F.dropout(gpuad.ones(6), 0.5)
    >>> a.tolist() == b.tolist()
    True
    """
    if not 0.0 <= p < 1.0:
        if p == 1.0:
            return C.multiply(x, 0.0)
        raise ValueError(f"gpuad.dropout: p must be in [0, 1], got {p}")
    x = _t(x)
    if not training or p == 0.0:
        return x
    rng = (generator or default_generator).rng
    mask = rng.random(x.shape) >= p
    if x.device != "cpu":
        from ..backends.devices import to_device
        mask = to_device(mask, x.device)
    return apply(N.dropout, (x, mask), {"p": float(p)})
