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

from ..ops import api, fused as N
from ..ops.dispatch import apply
from ..random import default_generator
from ..tensor import Tensor

relu, tanh, sigmoid, gelu, softplus = api.relu, api.tanh, api.sigmoid, api.gelu, api.softplus
softmax, log_softmax = api.softmax, api.log_softmax


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
    dts = {t.dtype for t in (x, weight, bias) if t is not None}
    if len(dts) > 1:
        raise TypeError(f"gpuad.{name}: input, weight and bias need one dtype, got "
                        f"{x.dtype}, {weight.dtype}" + (f" and {bias.dtype}" if bias is not None else "")
                        + " (as torch: cast with .to() or .double()/.float())")
    return apply(prim, (x, weight, bias), None)


def mse_loss(input, target, reduction="mean"):  # noqa: A002
    """Mean (or summed) squared error, composed from primitives.

    >>> import gpuad, gpuad.nn.functional as F
    >>> F.mse_loss(gpuad.tensor([1.0, 3.0]), gpuad.tensor([0.0, 1.0])).item()
    2.5
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"gpuad.mse_loss: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    d = api.subtract(input, target)
    sq = api.multiply(d, d)
    if reduction == "none":
        return sq
    return api.mean(sq) if reduction == "mean" else api.sum(sq)


def cross_entropy(logits, target, reduction="mean"):
    """Softmax cross-entropy from logits (N, C) and integer class targets (N,), stable.

    >>> import gpuad, gpuad.nn.functional as F
    >>> round(F.cross_entropy(gpuad.zeros((2, 4)), gpuad.tensor([0, 3])).item(), 4)
    1.3863
    """
    logits = _t(logits)
    t = target.data if isinstance(target, Tensor) else np.asarray(target)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"gpuad.cross_entropy: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    if logits.ndim != 2:
        raise ValueError(f"gpuad.cross_entropy: logits must be (N, C), got shape {logits.shape}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"gpuad.cross_entropy: targets must be integer class indices, got dtype {t.dtype} "
                        f"(for probabilities, use -(p * log_softmax(logits)).sum(-1))")
    if t.shape != (logits.shape[0],):
        raise ValueError(f"gpuad.cross_entropy: targets of shape {tuple(t.shape)} do not fit logits of "
                         f"shape {logits.shape} (expected ({logits.shape[0]},))")
    c = logits.shape[1]
    if t.size and (int(t.min()) < 0 or int(t.max()) >= c):
        raise ValueError(f"gpuad.cross_entropy: targets must lie in [0, {c}), got values from "
                         f"{int(t.min())} to {int(t.max())}")
    return apply(N.cross_entropy, (logits, t), {"reduction": reduction} if reduction != "mean" else None)


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
            return api.multiply(x, 0.0)
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
