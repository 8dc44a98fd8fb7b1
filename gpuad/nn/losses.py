"""torch's losses and the smaller activations, composed from primitives (their gradients
are the primitives'; nothing here has a backward of its own).

Every loss takes torch's `reduction` ('mean', 'sum', 'none'; kl_div also
'batchmean') and warns, as torch does, when target and input shapes differ
(broadcasting then gives a wrong loss silently).

>>> import gpuad, gpuad.nn.functional as F
>>> F.l1_loss(gpuad.tensor([1.0, -1.0]), gpuad.tensor([0.0, 0.0])).item()
1.0
>>> round(F.binary_cross_entropy_with_logits(gpuad.tensor([0.0]), gpuad.tensor([1.0])).item(), 4)
0.6931
"""
import warnings

from ..precision import autocast_function
from ..ops import composite as C, derivatives as D
from ..tensor import Tensor


def _t(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def _reduce(loss, reduction, name, batch=None):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "batchmean" and batch is not None:
        return loss.sum() / batch
    allowed = "'mean', 'sum', 'none'" + (" or 'batchmean'" if batch is not None else "")
    raise ValueError(f"gpuad.{name}: reduction must be {allowed}, not {reduction!r}")


def _pair(input, target, name):  # noqa: A002
    x, y = _t(input), _t(target)
    if tuple(x.shape) != tuple(y.shape):
        warnings.warn(f"gpuad.{name}: using a target size {tuple(y.shape)} that is different to the input size "
                      f"{tuple(x.shape)}; this will likely lead to incorrect results due to broadcasting "
                      f"(as torch warns)", UserWarning, stacklevel=3)
    return x, y


@autocast_function("l1_loss")
def l1_loss(input, target, reduction="mean"):  # noqa: A002
    """|input - target|, reduced."""
    x, y = _pair(input, target, "l1_loss")
    return _reduce(D.abs(x - y), reduction, "l1_loss")


@autocast_function("smooth_l1_loss")
def smooth_l1_loss(input, target, reduction="mean", beta=1.0):  # noqa: A002
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (beta = 0: l1_loss).

    >>> import gpuad, gpuad.nn.functional as F
    >>> F.smooth_l1_loss(gpuad.tensor([0.5, 3.0]), gpuad.zeros(2), reduction="none").tolist()
    [0.125, 2.5]
    """
    if beta < 0:
        raise ValueError(f"gpuad.smooth_l1_loss: beta must be non-negative, got {beta}")
    x, y = _pair(input, target, "smooth_l1_loss")
    d = D.abs(x - y)
    if beta == 0:
        return _reduce(d, reduction, "smooth_l1_loss")
    return _reduce(C.where(d < beta, d * d * (0.5 / beta), d - 0.5 * beta), reduction, "smooth_l1_loss")


@autocast_function("huber_loss")
def huber_loss(input, target, reduction="mean", delta=1.0):  # noqa: A002
    """0.5 d^2 where |d| <= delta, else delta (|d| - 0.5 delta): smooth_l1 scaled by delta."""
    if delta <= 0:
        raise ValueError(f"gpuad.huber_loss: delta must be positive, got {delta}")
    x, y = _pair(input, target, "huber_loss")
    d = D.abs(x - y)
    return _reduce(C.where(d <= delta, d * d * 0.5, (d - 0.5 * delta) * delta), reduction, "huber_loss")


@autocast_function("binary_cross_entropy")
def binary_cross_entropy(input, target, weight=None, reduction="mean"):  # noqa: A002
    """-(y log p + (1 - y) log(1 - p)) for probabilities p, each log clamped at -100 as
    torch's (a p of exactly 0 or 1 gives a finite loss)."""
    p, y = _pair(input, target, "binary_cross_entropy")
    lo = -100.0
    loss = -(y * C.maximum(C.log(p), lo) + (1 - y) * C.maximum(C.log(1 - p), lo))
    if weight is not None:
        loss = loss * _t(weight)
    return _reduce(loss, reduction, "binary_cross_entropy")


@autocast_function("binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):  # noqa: A002
    """binary cross-entropy of sigmoid(input), in the stable form
    (1 - y) x + (1 + (pw - 1) y) softplus(-x), pos_weight pw weighing the positives."""
    x, y = _pair(input, target, "binary_cross_entropy_with_logits")
    sp = C.softplus(-x)                              # log(1 + exp(-x)) = -log sigmoid(x), without overflow
    if pos_weight is None:
        loss = (1 - y) * x + sp
    else:
        loss = (1 - y) * x + (1 + (_t(pos_weight) - 1) * y) * sp
    if weight is not None:
        loss = loss * _t(weight)
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


@autocast_function("kl_div")
def kl_div(input, target, reduction="mean", log_target=False):  # noqa: A002
    """KL divergence with input as log-probabilities: target (log target - input), 0 where
    the target is 0 and NaN where it is negative (torch's xlogy); reduction 'batchmean' divides by the batch size
    (torch's 'mean' divides by every element, and warns that it is not the KL)."""
    x, y = _pair(input, target, "kl_div")
    if log_target:
        loss = C.exp(y) * (y - x)
    else:
        safe = C.where(y == 0, 1.0, y)            # a negative target gives NaN, as torch's xlogy
        loss = C.where(y == 0, 0.0, y * (C.log(safe) - x))
    return _reduce(loss, reduction, "kl_div", batch=x.shape[0] if x.ndim else 1)


# -- activations and similarities ---------------------------------------------------------------

def silu(input):  # noqa: A002
    """x sigmoid(x) (swish)."""
    x = _t(input)
    return x * C.sigmoid(x)


def leaky_relu(input, negative_slope=0.01):  # noqa: A002
    """x where x > 0, else negative_slope x."""
    x = _t(input)
    return C.where(x > 0, x, x * negative_slope)


def elu(input, alpha=1.0):  # noqa: A002
    """x where x > 0, else alpha (exp(x) - 1)."""
    x = _t(input)
    return C.where(x > 0, x, D.expm1(C.minimum(x, 0.0)) * alpha)


@autocast_function("softmin")
def softmin(input, dim=None):  # noqa: A002
    """softmax(-input) along dim."""
    if dim is None:
        raise TypeError("gpuad.softmin: give dim (torch's implicit choice is deprecated)")
    return C.softmax(-_t(input), dim=dim)


@autocast_function("normalize")
def normalize(input, p=2.0, dim=1, eps=1e-12):  # noqa: A002
    """input / max(||input||_p, eps) along dim."""
    x = _t(input)
    return x / C.maximum(C.norm(x, p, dim=dim, keepdim=True), eps)


@autocast_function("cosine_similarity")
def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """sum(x1 x2) / max(||x1|| ||x2||, eps) along dim (torch's current formula: the
    product of the norms clamped, not each).

    >>> import gpuad, gpuad.nn.functional as F
    >>> F.cosine_similarity(gpuad.tensor([[1.0, 0.0]]), gpuad.tensor([[1.0, 1.0]])).tolist()
    [0.7071067690849304]
    """
    a, b = _t(x1), _t(x2)
    dot = (a * b).sum(dim=dim)
    # clamped before the square root, as torch: a zero vector gets gradient 0, not NaN
    return dot / C.sqrt(C.maximum((a * a).sum(dim=dim) * (b * b).sum(dim=dim), eps * eps))
