"""Triton kernels for softmax cross-entropy from logits, forward and backward.

One program per row, looping over the classes in BLOCK_C chunks with an
online max and sum (Milakov & Gimelshein), so any number of classes fits.
    forward   read NC logits (+N targets), write N losses and N log-sum-exps
    backward  read NC logits + N lse + N scales, write NC: (softmax - onehot) * scale
"""
import triton
import triton.language as tl


@triton.jit
def xent_fwd_kernel(logits_ptr, target_ptr, loss_ptr, lse_ptr,
                    C,
                    stride_n, stride_c,
                    INT64: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    if INT64:                        # N C >= 2^31: row * stride_n in 64 bits
        row = row.to(tl.int64)
    base = logits_ptr + row * stride_n
    offs = tl.arange(0, BLOCK_C)
    m = tl.full((BLOCK_C,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs
        x = tl.load(base + cc * stride_c, mask=cc < C, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # rescale the running sum to the new max; lanes still at -inf stay 0
        s = s * tl.where(m_new == float("-inf"), 0.0, tl.exp(m - m_new)) + \
            tl.where(x == float("-inf"), 0.0, tl.exp(x - m_new))
        m = m_new
    row_max = tl.max(m, axis=0)
    total = tl.sum(s * tl.where(m == float("-inf"), 0.0, tl.exp(m - row_max)), axis=0)
    lse = row_max + tl.log(total)
    t = tl.load(target_ptr + row)
    picked = tl.load(base + t * stride_c).to(tl.float32)
    tl.store(loss_ptr + row, lse - picked)
    tl.store(lse_ptr + row, lse)


@triton.jit
def xent_bwd_kernel(logits_ptr, target_ptr, lse_ptr, scale_ptr, dlogits_ptr,
                    C,
                    stride_n, stride_c, stride_dn, stride_dc,
                    INT64: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    if INT64:
        row = row.to(tl.int64)
    lse = tl.load(lse_ptr + row)
    scale = tl.load(scale_ptr + row)
    t = tl.load(target_ptr + row)
    offs = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs
        mask = cc < C
        x = tl.load(logits_ptr + row * stride_n + cc * stride_c, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(x - lse) - tl.where(cc == t, 1.0, 0.0)
        tl.store(dlogits_ptr + row * stride_dn + cc * stride_dc, (p * scale).to(dlogits_ptr.dtype.element_ty),
                 mask=mask)
