"""Scaled dot-product attention as one primitive, FlashAttention-style, in generic xp code.

softmax(q k^T * scale + mask) v, for q (..., L, E), k (..., S, E), v (..., S, Ev).
The forward walks the keys in tiles of TILE columns with an online softmax (a
running row max m and row sum l, rescaled as each tile arrives), so the L x S
score matrix never exists at once: one L x TILE tile at a time, a BLAS call
each. It saves q, k, v, the output and the row log-sum-exp (L floats per row),
nothing of size L x S. The backward (FlashAttention-2) forms D = rowsum(dO * O)
once, then recomputes each tile's probabilities from q, k and the log-sum-exp:
    dV += P^T dO,  dP = dO V^T,  dS = P (dP - D),  dQ += dS K scale,  dK += dS^T Q scale.
Memory: O(L (E + Ev) + L TILE) beside the inputs, against O(L S) for the naive
matmul-softmax-matmul, which also moves the score matrix through memory four times.

Dropout on the attention weights draws each tile's mask from the generator
state saved at the forward, so the backward replays the very same masks.

The mask is a constant: boolean (True = attend) or additive, broadcast to
(..., L, S); is_causal is torch's top-left causal mask (key j <= query i). A
query every key is masked from gets 0, as in torch.

>>> import gpuad, numpy as np
>>> q = gpuad.tensor(np.ones((2, 3, 4)), requires_grad=True)
>>> out = gpuad.nn.functional.scaled_dot_product_attention(q, q, q)
>>> out.shape, [s.shape for s in out._node.saved if hasattr(s, "shape")]
((2, 3, 4), [(2, 3, 4), (2, 3, 4), (2, 3, 4), (2, 3, 4), (2, 3, 1)])
"""
import math

import numpy as np

from .elementwise import _tmp
from .registry import primitive, FUSED

TILE = 128       # key columns per tile (`python -m bench attention`: 128 ran fastest of 32 to 1024 here)


def _tiles(s):
    return [(s0, min(s0 + TILE, s)) for s0 in range(0, s, TILE)]


def _keys(xp, a, s0, s1):
    return xp.getitem(a, (Ellipsis, slice(s0, s1), slice(None)))


def _masked(xp, scores, mask, causal, s0, s1, length, keys):
    """The tile's scores with the mask applied (boolean: -inf where False; else added)."""
    if mask is not None:
        m = mask[..., s0:s1] if mask.shape[-1] == keys else mask
        scores = xp.where(m, scores, -np.inf) if m.dtype == np.bool_ else xp.add(scores, m.astype(scores.dtype))
    if causal:
        # key j <= query i: made on the host, put on the scores' device (L x tile bytes)
        allowed = xp.asarray(np.arange(length)[:, None] >= np.arange(s0, s1)[None, :])
        scores = xp.where(allowed, scores, -np.inf)
    return scores


def _dropout_masks(xp, seed, shape_of_tile, p, tiles):
    """Per tile, the keep mask scaled by 1/(1-p), from the node's own seed (drawn from gpuad's
    generator at the forward: under gpuad.compile a traced draw) and the tile's number, so
    the backward and every replay draw the same ones (xp.dropout_keep)."""
    return [xp.dropout_keep(seed, k, shape_of_tile(s0, s1), p) for k, (s0, s1) in enumerate(tiles)]


@primitive("scaled_dot_product_attention", inputs=("q", "k", "v"), kind=FUSED,
           retain={"q": None, "k": None, "v": None, "out": None}, has_aux=True, vjp_temps=4)
def scaled_dot_product_attention(xp, q, k, v, mask=None, causal=False, scale=1.0, dropout_p=0.0, seed=None):
    """softmax(q k^T scale + mask) v, tiled over the keys with an online softmax; aux: the row
    log-sum-exp (..., L, 1)."""
    length, keys = q.shape[-2], k.shape[-2]
    tiles = _tiles(keys)
    drops = _dropout_masks(xp, seed, lambda s0, s1: tuple(q.shape[:-1]) + (s1 - s0,), dropout_p, tiles) \
        if dropout_p else [None] * len(tiles)
    m = row_sum = acc = None
    qs = xp.multiply(q, scale)                       # the scale folded into q once (L E), not into each tile (L S)
    for (s0, s1), drop in zip(tiles, drops):
        sc = xp.matmul(qs, xp.swapaxes(_keys(xp, k, s0, s1), -1, -2))
        sc = _masked(xp, sc, mask, causal, s0, s1, length, keys)
        tile_max = xp.max(sc, axis=-1, keepdims=True)
        m_new = tile_max if m is None else xp.maximum(m, tile_max)
        safe = xp.where(xp.isfinite(m_new), m_new, 0.0)                  # a row masked so far: nothing to shift
        p = xp.subtract(sc, safe, out=_tmp(sc))                           # the tile's scratch, reused in place
        p = xp.exp(p, out=_tmp(p))
        pv = p if drop is None else xp.multiply(p, drop.astype(p.dtype))
        if m is None:
            row_sum, acc = xp.sum(p, axis=-1, keepdims=True), xp.matmul(pv, _keys(xp, v, s0, s1))
        else:
            corr = xp.exp(xp.subtract(xp.where(xp.isfinite(m), m, 0.0), safe))
            corr = xp.where(xp.isfinite(m), corr, 0.0)
            row_sum = xp.add(xp.multiply(row_sum, corr), xp.sum(p, axis=-1, keepdims=True))
            acc = xp.add(xp.multiply(acc, corr), xp.matmul(pv, _keys(xp, v, s0, s1)))
        m = m_new
    # A row every key is masked from gives 0 (and 0 gradients), as torch: its log-sum-exp
    # is +inf, so the backward's exp(score - lse) is 0 across it. Only a max of -inf means
    # that: a NaN (or +inf) score gives NaN, as torch's softmax does.
    with np.errstate(divide="ignore", invalid="ignore"):
        seen = xp.not_equal(m, -np.inf)
        out = xp.where(seen, xp.divide(acc, xp.where(seen, row_sum, 1.0)), 0.0)
        lse = xp.where(seen, xp.add(xp.where(seen, m, 0.0), xp.log(xp.where(seen, row_sum, 1.0))), np.inf)
    return out, (lse,)


@scaled_dot_product_attention.defvjp
def _attention_vjp(xp, g, saved, node, donate):
    q, k, v, out, lse = saved
    p_ = node.params or {}
    mask, causal, scale = p_.get("mask"), p_.get("causal", False), p_.get("scale", 1.0)
    dropout_p, seed = p_.get("dropout_p", 0.0), p_.get("seed")
    length, keys = q.shape[-2], k.shape[-2]
    if xp.name == "tensor":
        # create_graph: the saved log-sum-exp is a constant, but it depends on q and k;
        # recompute it from the wired inputs so second derivatives see that
        _, (lse,) = scaled_dot_product_attention.fwd(xp, q, k, v, **p_)
    tiles = _tiles(keys)
    drops = _dropout_masks(xp, seed, lambda s0, s1: tuple(q.shape[:-1]) + (s1 - s0,), dropout_p, tiles) \
        if dropout_p else [None] * len(tiles)
    big_d = xp.sum(xp.multiply(g, out), axis=-1, keepdims=True)          # D = rowsum(dO * O), once
    nq, nk, nv = node.needs
    dq, dks, dvs = None, [], []
    qs = xp.multiply(q, scale)
    for (s0, s1), drop in zip(tiles, drops):
        kt, vt = _keys(xp, k, s0, s1), _keys(xp, v, s0, s1)
        sc = xp.matmul(qs, xp.swapaxes(kt, -1, -2))
        sc = _masked(xp, sc, mask, causal, s0, s1, length, keys)
        p = xp.subtract(sc, lse, out=_tmp(sc))                            # the tile's probabilities, recomputed
        p = xp.exp(p, out=_tmp(p))
        pd = p if drop is None else xp.multiply(p, drop.astype(p.dtype))
        if nv:
            dvs.append(xp.matmul(xp.swapaxes(pd, -1, -2), g))
        dp = xp.matmul(g, xp.swapaxes(vt, -1, -2))
        if drop is not None:
            dp = xp.multiply(dp, drop.astype(dp.dtype), out=_tmp(dp))
        ds = xp.subtract(dp, big_d, out=_tmp(dp))
        ds = xp.multiply(ds, p, out=_tmp(ds))                             # dS = P (dP - D), in dP's buffer
        if nq:
            t = xp.matmul(ds, kt)
            dq = t if dq is None else xp.add(dq, t, out=_tmp(dq))
        if nk:
            dks.append(xp.matmul(xp.swapaxes(ds, -1, -2), qs))          # dS^T Q scale, with the scale in qs
    dq = xp.multiply(dq, scale, out=_tmp(dq)) if nq else None
    dk = xp.concatenate(dks, axis=-2) if nk else None
    dv = xp.concatenate(dvs, axis=-2) if nv else None
    return dq, dk, dv


def default_scale(e):
    return 1.0 / math.sqrt(e)
