"""Triton kernel for attention's forward, FlashAttention-style.

Kernel code only; the host side is in gpuad/backends/triton_backend.py. One
program per (BLOCK_M query rows, batch x head): the keys stream through in
BLOCK_N blocks with an online softmax (running max m, running sum l), so the
L x S scores never leave registers.
    reads  L E (q) + S E (k) + S Ev (v) per program row block, writes L Ev (out) + L (lse)
The log-sum-exp it writes (fp32) is what the backward (gpuad/ops/attention.py,
recomputing each tile) needs. Causal masking is top-left (key j <= query i).
"""
import triton
import triton.language as tl


@triton.jit
def attention_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                         L, S, E, EV,
                         stride_qb, stride_ql, stride_kb, stride_ks, stride_vb, stride_vs, stride_ob, stride_ol,
                         scale,
                         CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + bh * stride_qb + offs_m[:, None] * stride_ql + offs_d[None, :],
                mask=(offs_m[:, None] < L) & (offs_d[None, :] < E), other=0.0)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for s0 in range(0, S, BLOCK_N):
        offs_n = s0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_ptr + bh * stride_kb + offs_n[:, None] * stride_ks + offs_d[None, :],
                    mask=(offs_n[:, None] < S) & (offs_d[None, :] < E), other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
        keep = offs_n[None, :] < S
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)          # a row with nothing seen yet
        p = tl.exp(s - shift[:, None])
        corr = tl.where(m == float("-inf"), 0.0, tl.exp(m - shift))
        l = l * corr + tl.sum(p, axis=1)
        v = tl.load(v_ptr + bh * stride_vb + offs_n[:, None] * stride_vs + offs_dv[None, :],
                    mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV), other=0.0)
        acc = acc * corr[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m = m_new
    seen = m > float("-inf")
    out = tl.where(seen[:, None], acc / tl.where(seen, l, 1.0)[:, None], 0.0)
    lse = tl.where(seen, m + tl.log(tl.where(seen, l, 1.0)), float("inf"))
    tl.store(o_ptr + bh * stride_ob + offs_m[:, None] * stride_ol + offs_dv[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV))
    tl.store(lse_ptr + bh * L + offs_m, lse, mask=offs_m < L)
