"""Transformer layers with torch's constructors, names and forward signatures:
Embedding, LayerNorm, RMSNorm, MultiheadAttention.

>>> import gpuad
>>> mha = gpuad.nn.MultiheadAttention(8, 2, batch_first=True)
>>> x = gpuad.ones((3, 5, 8))
>>> out, weights = mha(x, x, x)
>>> out.shape, weights.shape
((3, 5, 8), (3, 5, 5))
"""
import math

import numpy as np

from ..backends import namespace_of
from ..dtypes import as_dtype, default_float
from ..ops import composite as C
from ..random import default_generator
from ..tensor import Tensor
from . import functional as F
from .modules import Linear, Module, Parameter


def _shape(s):
    return (s,) if isinstance(s, int) else tuple(s)


class Embedding(Module):
    """A lookup table of num_embeddings rows (N(0, 1) init, as torch; the padding_idx row zero)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=None, generator=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        rng = (generator or default_generator).rng
        w = rng.standard_normal((num_embeddings, embedding_dim)).astype(as_dtype(dtype) or default_float)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w)

    def forward(self, ids):
        return F.embedding(ids, self.weight, self.padding_idx)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}" + (
            f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


class LayerNorm(Module):
    """Layer norm over the trailing normalized_shape dims; weight ones, bias zeros."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=None):
        super().__init__()
        self.normalized_shape, self.eps = _shape(normalized_shape), eps
        dt = as_dtype(dtype) or default_float
        self.weight = Parameter(np.ones(self.normalized_shape, dt)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dt)) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class RMSNorm(Module):
    """RMS norm over the trailing normalized_shape dims; weight ones."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=None):
        super().__init__()
        self.normalized_shape, self.eps = _shape(normalized_shape), eps
        dt = as_dtype(dtype) or default_float
        self.weight = Parameter(np.ones(self.normalized_shape, dt)) if elementwise_affine else None

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention: in_proj_weight (3E, E) and in_proj_bias, out_proj; forward
    (query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False) -> (output, weights or None).

    Masks as torch's module takes them: a boolean attn_mask or key_padding_mask is True
    where attending is NOT allowed; a float one is added to the scores. With
    need_weights=False the heads run through the fused scaled_dot_product_attention (no
    L x S matrix is stored); need_weights=True forms the probabilities to return them.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, batch_first=False, dtype=None,
                 generator=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"gpuad.nn.MultiheadAttention: embed_dim {embed_dim} is not divisible by "
                             f"num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.head_dim = embed_dim // num_heads
        dt = as_dtype(dtype) or default_float
        rng = (generator or default_generator).rng
        bound = math.sqrt(6.0 / (embed_dim + 3 * embed_dim))           # xavier_uniform, as torch
        self.in_proj_weight = Parameter(rng.uniform(-bound, bound, (3 * embed_dim, embed_dim)).astype(dt))
        self.in_proj_bias = Parameter(np.zeros(3 * embed_dim, dt)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dt)
        if bias:
            self.out_proj.bias.data[...] = 0

    def _heads(self, x, n, length):
        return x.reshape(n, length, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
        if not self.batch_first or unbatched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, e = query.shape
        s = key.shape[1]
        w, b = self.in_proj_weight, self.in_proj_bias
        q, k, v = (F.linear(t, w[i * e:(i + 1) * e], b[i * e:(i + 1) * e] if b is not None else None)
                   for i, t in enumerate((query, key, value)))
        q, k, v = self._heads(q, n, length), self._heads(k, n, s), self._heads(v, n, s)
        mask = self._mask(namespace_of(q.data), attn_mask, key_padding_mask, n, length, s, q.dtype, is_causal)
        drop = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                scores = C.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
            p = C.softmax(scores, dim=-1)
            weights = p.mean(dim=1) if average_attn_weights else p
            out = (F.dropout(p, drop) if drop else p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(out.permute(0, 2, 1, 3).reshape(n, length, e))
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights

    def _mask(self, xp, attn_mask, key_padding_mask, n, length, s, dtype, is_causal):
        """One SDPA-style mask (True = may attend, or additive), broadcast to (N, H, L, S),
        made on the queries' device (xp): a host mask is copied there once."""
        def on_device(m):
            return xp.asarray(m.data if isinstance(m, Tensor) else m)
        mask = None
        if attn_mask is None and is_causal:
            mask = xp.asarray(np.tril(np.ones((length, s), bool)))
        if attn_mask is not None:
            m = on_device(attn_mask)
            if m.ndim == 3:                                              # (N * H, L, S)
                m = m.reshape(n, self.num_heads, length, s)
            mask = ~m if m.dtype == np.bool_ else m.astype(dtype)
        if key_padding_mask is not None:
            kp = on_device(key_padding_mask)
            kp = (~kp if kp.dtype == np.bool_ else kp).reshape(n, 1, 1, s)
            if mask is None:
                mask = kp if kp.dtype == np.bool_ else kp.astype(dtype)
            elif mask.dtype == np.bool_ and kp.dtype == np.bool_:
                mask = mask & kp
            else:
                as_add = [xp.where(m, 0.0, -np.inf) if m.dtype == np.bool_ else m for m in (mask, kp)]
                mask = (as_add[0] + as_add[1]).astype(dtype)
        return mask

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


class CausalSelfAttention(Module):
    """Multi-head causal self-attention: one (d, 3d) projection, the fused attention, out_proj."""

    def __init__(self, d_model, n_heads, dropout=0.0, dtype=None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"gpuad.nn.CausalSelfAttention: d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = Linear(d_model, 3 * d_model, dtype=dtype)
        self.out_proj = Linear(d_model, d_model, dtype=dtype)

    def forward(self, x):
        b, t, d = x.shape
        h = self.n_heads
        qkv = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)      # (3, B, H, T, D)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.permute(0, 2, 1, 3).reshape(b, t, d))


class TransformerBlock(Module):
    """A pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)), the MLP
    d -> 4d (gelu, fused into the first linear) -> d."""

    def __init__(self, d_model, n_heads, d_ff=None, dropout=0.0, dtype=None):
        super().__init__()
        self.ln1, self.ln2 = LayerNorm(d_model, dtype=dtype), LayerNorm(d_model, dtype=dtype)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, dtype)
        self.fc = Linear(d_model, d_ff or 4 * d_model, activation="gelu", dtype=dtype)
        self.proj = Linear(d_ff or 4 * d_model, d_model, dtype=dtype)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(self.fc(self.ln2(x)))


class GPT(Module):
    """A small GPT: token and position embeddings, n_layers pre-norm blocks (checkpointed
    as nn.Sequential's `checkpoint` option says: None, "sqrt", a segment count or a budget),
    a final layer norm and a head tied to the token embedding (or its own, tie=False).

    >>> import gpuad
    >>> gpt = gpuad.nn.GPT(vocab_size=11, block_size=8, d_model=16, n_layers=2, n_heads=2)
    >>> gpt(gpuad.tensor([[1, 2, 3]])).shape
    (1, 3, 11)
    """

    def __init__(self, vocab_size, block_size, d_model=64, n_layers=2, n_heads=4, dropout=0.0, tie=True,
                 checkpoint=None, dtype=None):
        super().__init__()
        from .modules import Sequential
        self.block_size = block_size
        self.tok = Embedding(vocab_size, d_model, dtype=dtype)
        self.pos = Embedding(block_size, d_model, dtype=dtype)
        self.tok.weight.data *= 0.02                       # GPT-2's embedding scale
        self.pos.weight.data *= 0.02
        self.blocks = Sequential(*[TransformerBlock(d_model, n_heads, dropout=dropout, dtype=dtype)
                                   for _ in range(n_layers)], checkpoint=checkpoint)
        self.ln_f = LayerNorm(d_model, dtype=dtype)
        self.head = None if tie else Linear(d_model, vocab_size, bias=False, dtype=dtype)

    def forward(self, ids):
        ids = ids if isinstance(ids, Tensor) else Tensor(np.asarray(ids))
        b, t = ids.shape
        if t > self.block_size:
            raise ValueError(f"gpuad.nn.GPT: sequence of {t} tokens, longer than block_size {self.block_size}")
        # positions made on the ids' device (no host-to-device copy: a CUDA graph can capture it)
        x = self.tok(ids) + self.pos(Tensor._from(namespace_of(ids.data).arange(t)))
        x = self.ln_f(self.blocks(x))
        return F.linear(x, self.tok.weight) if self.head is None else self.head(x)
