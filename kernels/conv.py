"""Triton implicit-GEMM kernels for 2-D convolution: forward, input gradient (dgrad) and
weight gradient (wgrad), NCHW with any strides, stride, per-side padding, dilation and
groups (the program grid's third axis).

Kernel code only; the host side is in gpuad/backends/triton_backend.py. No im2col
buffer is ever written: each K tile of the GEMM gathers its (c, kh, kw) columns straight
from the input with masked loads (out-of-bounds taps, the padding, read as 0), so
the workspace is the output alone. Accumulation in fp32 whatever the input dtype.

    forward  y[n, o, p, q]  = sum_{c,kh,kw} x[n, c, p s - lo + kh d, q s - lo + kw d] w[o, c, kh, kw]
             GEMM (N P Q) x O over K = C/G KH KW:  read x (KH KW times, from cache)
             and w, write y
    dgrad    dx[n, c, h, w] = sum_{o,kh,kw} g[n, o, (h + lo - kh d) / s, ...] w[o, c, kh, kw]
             (only where the division is exact and in range): GEMM (N H W) x C/G over
             O/G KH KW, no stride-dilated copy of g
    wgrad    dw[o, c, kh, kw] = sum_{n,p,q} g[n, o, p, q] x[n, c, p s - lo + kh d, ...]:
             GEMM O/G x (C/G KH KW) over N P Q

INT64 (constexpr): 64-bit index arithmetic, chosen by the host for operands with
2^31 or more elements, as in linear.py.
"""
import triton
import triton.language as tl


@triton.jit
def _index(i, INT64: tl.constexpr):
    if INT64:
        return i.to(tl.int64)
    return i


@triton.jit
def _split(r, A, B):
    """(r // (A B), (r // B) % A, r % B): a flat index over (., A, B) as its three indices
    (an output pixel as n, p, q; a tap as c, kh, kw)."""
    return r // (A * B), (r // B) % A, r % B


@triton.jit
def conv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                    NB, H, W, P, Q, CG, OG, KH, KW,
                    sxn, sxc, sxh, sxw, swo, swc, swh, sww, syn, syc, syh, syw,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    grp = tl.program_id(2)
    rm = _index(tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M), INT64)      # output pixels
    rn = _index(tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N), INT64)      # output channels in the group
    n, p, q = _split(rm, P, Q)
    m_ok = rm < NB * P * Q
    kt = CG * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, kt, BLOCK_K):
        rk = _index(k0 + tl.arange(0, BLOCK_K), INT64)
        c, kh, kw = _split(rk, KH, KW)
        ih = p[:, None] * stride_h - pad_h + kh[None, :] * dil_h
        iw = q[:, None] * stride_w - pad_w + kw[None, :] * dil_w
        a_ok = m_ok[:, None] & (rk[None, :] < kt) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + n[:, None] * sxn + (grp * CG + c[None, :]) * sxc + ih * sxh + iw * sxw,
                    mask=a_ok, other=0.0)
        b_ok = (rk[:, None] < kt) & (rn[None, :] < OG)
        b = tl.load(w_ptr + (grp * OG + rn[None, :]) * swo + c[:, None] * swc + kh[:, None] * swh
                    + kw[:, None] * sww, mask=b_ok, other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + grp * OG + rn, mask=rn < OG, other=0.0).to(tl.float32)[None, :]
    y_ok = m_ok[:, None] & (rn[None, :] < OG)
    tl.store(y_ptr + n[:, None] * syn + (grp * OG + rn[None, :]) * syc + p[:, None] * syh + q[:, None] * syw,
             acc.to(y_ptr.dtype.element_ty), mask=y_ok)


@triton.jit
def conv_dgrad_kernel(g_ptr, w_ptr, dx_ptr,
                      NB, H, W, P, Q, CG, OG, KH, KW,
                      sgn, sgc, sgh, sgw, swo, swc, swh, sww, sdn, sdc, sdh, sdw,
                      stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                      PRECISION: tl.constexpr, INT64: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    grp = tl.program_id(2)
    rm = _index(tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M), INT64)      # input pixels
    rn = _index(tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N), INT64)      # input channels in the group
    n, h, w = _split(rm, H, W)
    m_ok = rm < NB * H * W
    kt = OG * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, kt, BLOCK_K):
        rk = _index(k0 + tl.arange(0, BLOCK_K), INT64)
        o, kh, kw = _split(rk, KH, KW)
        th = h[:, None] + pad_h - kh[None, :] * dil_h        # = p * stride_h where a tap lands
        tw = w[:, None] + pad_w - kw[None, :] * dil_w
        # the remainder is taken of a non-negative value only: C's % keeps the sign
        th0 = tl.maximum(th, 0)
        tw0 = tl.maximum(tw, 0)
        p = th0 // stride_h
        q = tw0 // stride_w
        a_ok = m_ok[:, None] & (rk[None, :] < kt) & (th >= 0) & (tw >= 0) & (th0 % stride_h == 0) & \
            (tw0 % stride_w == 0) & (p < P) & (q < Q)
        a = tl.load(g_ptr + n[:, None] * sgn + (grp * OG + o[None, :]) * sgc + p * sgh + q * sgw,
                    mask=a_ok, other=0.0)
        b_ok = (rk[:, None] < kt) & (rn[None, :] < CG)
        b = tl.load(w_ptr + (grp * OG + o[:, None]) * swo + rn[None, :] * swc + kh[:, None] * swh
                    + kw[:, None] * sww, mask=b_ok, other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
    d_ok = m_ok[:, None] & (rn[None, :] < CG)
    tl.store(dx_ptr + n[:, None] * sdn + (grp * CG + rn[None, :]) * sdc + h[:, None] * sdh + w[:, None] * sdw,
             acc.to(dx_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def conv_wgrad_kernel(x_ptr, g_ptr, dw_ptr,
                      NB, H, W, P, Q, CG, OG, KH, KW,
                      sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, sdo, sdc, sdh, sdw,
                      stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                      PRECISION: tl.constexpr, INT64: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    grp = tl.program_id(2)
    rm = _index(tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M), INT64)      # output channels in the group
    rn = _index(tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N), INT64)      # (c, kh, kw)
    c, kh, kw = _split(rn, KH, KW)
    n_ok = rn < CG * KH * KW
    kt = NB * P * Q
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, kt, BLOCK_K):
        rk = _index(k0 + tl.arange(0, BLOCK_K), INT64)                          # (n, p, q)
        n, p, q = _split(rk, P, Q)
        k_ok = rk < kt
        a = tl.load(g_ptr + n[None, :] * sgn + (grp * OG + rm[:, None]) * sgc + p[None, :] * sgh
                    + q[None, :] * sgw, mask=(rm[:, None] < OG) & k_ok[None, :], other=0.0)
        ih = p[:, None] * stride_h - pad_h + kh[None, :] * dil_h
        iw = q[:, None] * stride_w - pad_w + kw[None, :] * dil_w
        b_ok = k_ok[:, None] & n_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        b = tl.load(x_ptr + n[:, None] * sxn + (grp * CG + c[None, :]) * sxc + ih * sxh + iw * sxw,
                    mask=b_ok, other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION)
    d_ok = (rm[:, None] < OG) & n_ok[None, :]
    tl.store(dw_ptr + (grp * OG + rm[:, None]) * sdo + c[None, :] * sdc + kh[None, :] * sdh + kw[None, :] * sdw,
             acc.to(dw_ptr.dtype.element_ty), mask=d_ok)
