"""Triton kernels for attention, FlashAttention-2 style: forward and backward.

Kernel code only; the host side is in gpuad/backends/triton_backend.py.
Forward: one program per (batch x head, BLOCK_M query rows) (batch x head on the
grid's x axis, which takes 2^31 - 1, where y stops at 65,535); the keys stream
through in BLOCK_N blocks with an online softmax (running max m, running sum l),
so the L x S scores never leave registers.
    reads  L E (q) + S E (k) + S Ev (v), writes L Ev (out) + L fp32 (lse)
Backward: two kernels, no atomics. One program per BLOCK_N keys walks every
query block for dK and dV; one per BLOCK_M queries walks every key block for
dQ. Each recomputes P = exp(q k^T scale - lse) from the saved log-sum-exp, so
nothing L x S is stored; the price is the q k^T product twice more.
    reads  2 (L E + S E + S Ev + L Ev) + 2 L fp32, writes L E + S E + S Ev
D = rowsum(dO * O) is computed once by the host. Causal masking is top-left
(key j <= query i), as in torch's is_causal, and causal programs visit only the
key (or query) blocks that are not wholly masked: about half the work of all of
them. Every dot takes the precision gpuad.set_float32_matmul_precision chose
(IEEE fp32, or TF32). An attn_mask arrives additive in
fp32 (the host converts a boolean one), read tile by tile: L S floats more per
pass. A row every key is masked from gets 0 and lse = +inf, so its
recomputed probabilities are 0 in the backward.
"""
import triton
import triton.language as tl

# Launch settings shared by the host (gpuad/backends/triton_backend.py) and the
# ahead-of-time compile test (tests/test_kernels_aot.py), so what is checked for
# shared memory and registers is what runs.
MAX_HEAD_DIM = 256
MAX_HEAD_DIM_MASKED = 128      # with an attn_mask: above this the generic code runs
MAX_HEAD_DIM_IEEE_BACKWARD = 64   # fp32 with IEEE dots: above this dK and dV's accumulators spill


def attention_launch(e, ev, backward=False, interpret=False, masked=False, ieee=False):
    """Tiles and launch options for head dims e (q, k) and ev (v).

    Chosen from ptxas' reports for sm_90 (tests/test_kernels_aot.py fails on any
    spill). Forward: 64-row tiles up to head dim 128, 32 above (a 64 x 256 fp32
    accumulator alone is 64 KiB of registers), 4 warps. Backward keeps two fp32
    accumulators (dK and dV) per program: 64 x 64 tiles with 4 warps spilled
    280-1700 bytes at head dim 64-128, so 8 warps, and 32 x 32 tiles above head
    dim 64. A mask tile costs registers too (20-200 bytes spilled at forward head
    dim 128 and backward 64 with the unmasked tiles): masked, each threshold
    halves. The interpreter runs 16 x 16 tiles (it is slow, not small on memory).
    """
    d, dv = max(triton.next_power_of_2(e), 16), max(triton.next_power_of_2(ev), 16)
    if ieee and not interpret:
        # fp32 with IEEE dots (set_float32_matmul_precision("highest")) runs on FMAs, not
        # tensor cores, and holds more per thread: 32-row tiles and 8 warps forward, 16-row
        # tiles backward (4 warps at head dim 16, where 8 spilled), all spill-free per ptxas
        if backward:
            return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=d, BLOCK_DV=dv, num_warps=4 if max(d, dv) <= 16 else 8,
                        num_stages=2)
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_D=d, BLOCK_DV=dv, num_warps=8, num_stages=2)
    big = (64 if backward else 128) // (2 if masked else 1)      # the largest head dim for 64-row tiles
    block = 16 if interpret else (64 if max(d, dv) <= big else 32)
    return dict(BLOCK_M=block, BLOCK_N=block, BLOCK_D=d, BLOCK_DV=dv,
                num_warps=8 if backward else 4, num_stages=2)


@triton.jit
def _load_tile(base, rows, n_rows, stride, cols, n_cols):
    """The rows x cols tile of a row-major block (row stride `stride`, unit column
    stride), zero outside n_rows x n_cols."""
    return tl.load(base + rows[:, None] * stride + cols[None, :],
                   mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _store_tile(base, rows, n_rows, stride, cols, n_cols, value):
    tl.store(base + rows[:, None] * stride + cols[None, :], value.to(base.dtype.element_ty),
             mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))


@triton.jit
def _scores(q, k, scale, mask_ptr, bh, offs_m, offs_n, L, S, stride_mb, stride_ml,
            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    """q k^T scale (+ the mask tile), -inf outside L x S and above the causal diagonal.

    The mask is additive fp32 (-inf: masked; the host turns a boolean mask into one).
    stride_mb is 0 for a mask shared by every batch and head (read from L2 after the
    first program), stride_ml 0 for a key-padding mask (1 x S per batch): the host
    never copies a mask out to L x S per head."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
    if HAS_MASK:
        s += _load_tile(mask_ptr + bh * stride_mb, offs_m, L, stride_ml, offs_n, S)
    keep = (offs_m[:, None] < L) & (offs_n[None, :] < S)
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None])
    return tl.where(keep, s, float("-inf"))


@triton.jit
def attention_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, mask_ptr,
                         L, S, E, EV,
                         stride_qb, stride_ql, stride_kb, stride_ks, stride_vb, stride_vs, stride_ob, stride_ol,
                         stride_mb, stride_ml, scale,
                         CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)         # batch x heads on grid x (2^31 - 1), tiles on y
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(q_ptr + bh * stride_qb, offs_m, L, stride_ql, offs_d, E)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)     # keys past this tile's last query: all masked
    else:
        hi = S
    for s0 in range(0, hi, BLOCK_N):
        offs_n = s0 + tl.arange(0, BLOCK_N)
        k = _load_tile(k_ptr + bh * stride_kb, offs_n, S, stride_ks, offs_d, E)
        s = _scores(q, k, scale, mask_ptr, bh, offs_m, offs_n, L, S, stride_mb, stride_ml, CAUSAL, HAS_MASK,
                    PRECISION)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)          # a row with nothing seen yet
        p = tl.exp(s - shift[:, None])
        corr = tl.where(m == float("-inf"), 0.0, tl.exp(m - shift))
        l = l * corr + tl.sum(p, axis=1)
        v = _load_tile(v_ptr + bh * stride_vb, offs_n, S, stride_vs, offs_dv, EV)
        acc = acc * corr[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
        m = m_new
    seen = m > float("-inf")
    out = tl.where(seen[:, None], acc / tl.where(seen, l, 1.0)[:, None], 0.0)
    lse = tl.where(seen, m + tl.log(tl.where(seen, l, 1.0)), float("inf"))
    _store_tile(o_ptr + bh * stride_ob, offs_m, L, stride_ol, offs_dv, EV, out)
    tl.store(lse_ptr + bh * L + offs_m, lse, mask=offs_m < L)


@triton.jit
def attention_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, d_ptr, mask_ptr, dk_ptr, dv_ptr,
                              L, S, E, EV,
                              stride_qb, stride_ql, stride_kb, stride_ks, stride_vb, stride_vs,
                              stride_ob, stride_ol, stride_mb, stride_ml,
                              scale,
                              CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dK and dV for BLOCK_N keys, walking every query block that sees them (FlashAttention-2):
    P = exp(q k^T scale - lse), dV += P^T dO, dS = P (dO v^T - D), dK += dS^T q scale."""
    bh = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load_tile(k_ptr + bh * stride_kb, offs_n, S, stride_ks, offs_d, E)
    v = _load_tile(v_ptr + bh * stride_vb, offs_n, S, stride_vs, offs_dv, EV)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    if CAUSAL:
        lo = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M     # queries before this key block see none of it
    else:
        lo = 0
    for m0 in range(lo, L, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = _load_tile(q_ptr + bh * stride_qb, offs_m, L, stride_ql, offs_d, E)
        do = _load_tile(do_ptr + bh * stride_ob, offs_m, L, stride_ol, offs_dv, EV)
        lse = tl.load(lse_ptr + bh * L + offs_m, mask=offs_m < L, other=float("inf"))
        dd = tl.load(d_ptr + bh * L + offs_m, mask=offs_m < L, other=0.0)
        # the tile's probabilities, recomputed: exp(-inf - lse) = 0 where masked, and
        # lse = +inf (rows past L, rows masked from every key) gives 0 across its row
        p = tl.exp(_scores(q, k, scale, mask_ptr, bh, offs_m, offs_n, L, S, stride_mb, stride_ml, CAUSAL, HAS_MASK,
                           PRECISION) - lse[:, None])
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION).to(tl.float32)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION).to(tl.float32)
        ds = p * (dp - dd[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION).to(tl.float32) * scale
    _store_tile(dk_ptr + bh * stride_kb, offs_n, S, stride_ks, offs_d, E, dk)
    _store_tile(dv_ptr + bh * stride_vb, offs_n, S, stride_vs, offs_dv, EV, dv)


@triton.jit
def attention_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, d_ptr, mask_ptr, dq_ptr,
                            L, S, E, EV,
                            stride_qb, stride_ql, stride_kb, stride_ks, stride_vb, stride_vs,
                            stride_ob, stride_ol, stride_mb, stride_ml,
                            scale,
                            CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dQ for BLOCK_M queries, walking every key block they see: dQ += dS k scale."""
    bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(q_ptr + bh * stride_qb, offs_m, L, stride_ql, offs_d, E)
    do = _load_tile(do_ptr + bh * stride_ob, offs_m, L, stride_ol, offs_dv, EV)
    lse = tl.load(lse_ptr + bh * L + offs_m, mask=offs_m < L, other=float("inf"))
    dd = tl.load(d_ptr + bh * L + offs_m, mask=offs_m < L, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    else:
        hi = S
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_tile(k_ptr + bh * stride_kb, offs_n, S, stride_ks, offs_d, E)
        v = _load_tile(v_ptr + bh * stride_vb, offs_n, S, stride_vs, offs_dv, EV)
        # the tile's probabilities, recomputed: exp(-inf - lse) = 0 where masked, and
        # lse = +inf (rows past L, rows masked from every key) gives 0 across its row
        p = tl.exp(_scores(q, k, scale, mask_ptr, bh, offs_m, offs_n, L, S, stride_mb, stride_ml, CAUSAL, HAS_MASK,
                           PRECISION) - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION).to(tl.float32)
        ds = p * (dp - dd[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION).to(tl.float32) * scale
    _store_tile(dq_ptr + bh * stride_qb, offs_m, L, stride_ql, offs_d, E, dq)
