"""Triton kernels for layer norm and RMS norm over the last dimension, forward and backward.

Kernel code only; the host side is in gpuad/backends/triton_backend.py. One
program per row; the row (N elements, N <= BLOCK_N) sits in registers.
    forward   read N (+ 2N weight and bias, cached), write N and 2 floats (mean, rstd)
    backward  read 2N (x, dY) + 2 floats, write N (dX); dW and dB are summed over
              rows by the host from the same x_hat (one more pass)
Statistics in fp32 whatever the input dtype. RMS (a constexpr) gives rms_norm from
the same code: no mean is subtracted or stored, and dX loses its mean(g w) term.
"""
import triton
import triton.language as tl


@triton.jit
def layer_norm_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
                          N, stride_x, stride_y, eps,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr, INT64: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    if INT64:
        row = row.to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if RMS:
        mean = 0.0
        xc = x                                   # masked lanes loaded as 0
    else:
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    if not RMS:
        tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def layer_norm_bwd_kernel(x_ptr, g_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr,
                          N, stride_x, stride_g, stride_dx,
                          HAS_W: tl.constexpr, RMS: tl.constexpr, INT64: tl.constexpr, BLOCK_N: tl.constexpr):
    """dX = rstd (g w - mean(g w) - x_hat mean(g w x_hat)) for one row (RMS: no mean(g w))."""
    row = tl.program_id(0)
    if INT64:
        row = row.to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + row)
    if RMS:
        xhat = x * rstd
    else:
        xhat = tl.where(mask, (x - tl.load(mean_ptr + row)) * rstd, 0.0)
    gw = g
    if HAS_W:
        gw = g * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.sum(gw * xhat, axis=0) / N
    if RMS:
        dx = rstd * (gw - xhat * b)
    else:
        dx = rstd * (gw - tl.sum(gw, axis=0) / N - xhat * b)
    tl.store(dx_ptr + row * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
