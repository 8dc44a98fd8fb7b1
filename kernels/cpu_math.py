"""CPU kernels compiled by Numba (LLVM): kernel code only; the host side, which
imports Numba lazily and sets its threads, is gpuad/backends/cpu_kernels.py.

Each kernel computes exactly the float32 operations, in the same order, that the
numpy code it replaces computes pass by pass (no fast-math: no contraction into
FMAs, no reassociation), so its results equal numpy's to the bit: eager with the
kernels and without, and a compiled replay, agree exactly.

erf32  the float32 erf of gpuad/backends/numpy_backend.py (a table of cubics on a
       1/64 grid, Horner in float32): one pass, parallel over elements, where the
       numpy version makes about 20 passes per 16K-element chunk.
pairwise_sum  numpy's summation of a contiguous run, for generated kernels that end
       in a row sum or mean (gpuad/compiler/cpu_codegen.py).
gelu32, gelu_grad32_a/_b  exact GELU forward in one pass, its gradient in two and
       numpy's exp between them (8 numpy passes and two erfs before).
column_sum  a sum over leading axes (a bias gradient) in numpy's order, vectorised.
layer_norm_rows  layer norm's forward over the last axis, numpy's bits, a row per step.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def erf32_scalar(v, c0, c1, c2, c3, last):
    """erf of one float32 (see numpy_backend._erf_table for the scheme)."""
    if v != v:
        return v
    sc = abs(v) * np.float32(64.0)
    if sc > last:                        # inf and beyond the table: its last row (1.0)
        sc = last
    k = int(sc)
    t = sc - np.float32(k)
    y = c3[k] * t
    y = y + c2[k]
    y = y * t
    y = y + c1[k]
    y = y * t
    y = y + c0[k]
    if v < 0 or (v == 0 and np.signbit(v)):
        y = -y
    return y


@njit(parallel=True, cache=True)
def erf32(x, out, c0, c1, c2, c3, last):
    """out[i] = erf(x[i]) for flat float32 arrays, in parallel."""
    for i in prange(x.size):
        out[i] = erf32_scalar(x[i], c0, c1, c2, c3, last)


@njit(cache=True)
def erf32_serial(x, out, c0, c1, c2, c3, last):
    """erf32 on this thread: for arrays too small to pay for waking the pool (a fused
    group's 16K-element chunk)."""
    for i in range(x.size):
        out[i] = erf32_scalar(x[i], c0, c1, c2, c3, last)


@njit(cache=True, inline="always")
def _block(a, s, n, zero):
    """numpy's pairwise sum of a run of at most 128: eight partial sums, combined as a tree."""
    if n < 8:
        res = zero
        for i in range(n):
            res += a[s + i]
        return res
    r0, r1, r2, r3 = a[s], a[s + 1], a[s + 2], a[s + 3]
    r4, r5, r6, r7 = a[s + 4], a[s + 5], a[s + 6], a[s + 7]
    i = 8
    while i < n - (n % 8):
        r0 += a[s + i]
        r1 += a[s + i + 1]
        r2 += a[s + i + 2]
        r3 += a[s + i + 3]
        r4 += a[s + i + 4]
        r5 += a[s + i + 5]
        r6 += a[s + i + 6]
        r7 += a[s + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[s + i]
        i += 1
    return res


@njit(cache=True)
def pairwise_sum(a, s, n, zero):
    """a[s:s+n].sum() as numpy adds a contiguous run: blocks of at most 128 summed by
    _block, longer runs split in halves (each a multiple of 8 but the last) and the
    halves added, so the result is numpy's to the bit. `zero` is 0 of a's dtype. The
    split tree is walked with explicit stacks (Numba's on-disk cache cannot hold a
    recursive function: it aborts the process on reload)."""
    if n <= 128:
        return _block(a, s, n, zero)
    ss = np.empty(64, np.int64)
    ns = np.empty(64, np.int64)
    st = np.zeros(64, np.int64)
    vals = np.empty(64, a.dtype)
    top, nv = 0, 0
    ss[0], ns[0] = s, n
    while top >= 0:
        cs, cn = ss[top], ns[top]
        if cn <= 128:
            vals[nv] = _block(a, cs, cn, zero)
            nv += 1
            top -= 1
            continue
        n2 = cn // 2
        n2 -= n2 % 8
        if st[top] == 0:                 # the left half first
            st[top] = 1
            top += 1
            ss[top], ns[top], st[top] = cs, n2, 0
        elif st[top] == 1:               # then the right half
            st[top] = 2
            top += 1
            ss[top], ns[top], st[top] = cs + n2, cn - n2, 0
        else:                            # then left + right
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
            top -= 1
    return vals[0]


# exact GELU, float32: the same operations, in the same order, as gpuad/ops/derivatives.py's
# _gelu and _gelu_d write them with numpy (a Python float meets a float32 array as float32)
_HALF, _ONE, _MHALF = np.float32(0.5), np.float32(1.0), np.float32(-0.5)
_SQRT1_2 = np.float32(0.7071067811865475)
_INV_SQRT_2PI = np.float32(0.3989422804014327)


@njit(parallel=True, cache=True, error_model="numpy")
def gelu32(x, out, c0, c1, c2, c3, last):
    """out = 0.5 x (1 + erf(x / sqrt 2)), one pass (numpy: 5 passes and the erf's)."""
    for i in prange(x.size):
        v = x[i]
        out[i] = (_HALF * v) * (_ONE + erf32_scalar(v * _SQRT1_2, c0, c1, c2, c3, last))


@njit(parallel=True, cache=True, error_model="numpy")
def gelu_grad32_a(x, t):
    """The exponent of GELU's density, -0.5 x^2, into t: numpy's exp then runs over t (its
    SIMD exp, whose last bits libm's expf does not always give)."""
    for i in prange(x.size):
        v = x[i]
        t[i] = _MHALF * (v * v)


@njit(parallel=True, cache=True, error_model="numpy")
def gelu_grad32_b(x, e, g, gstep, out, c0, c1, c2, c3, last):
    """out = g (Phi(x) + x phi(x)), phi from e = exp(-0.5 x^2). out may be g or e. gstep 0:
    g is one number broadcast (sum's gradient), read as g[0]."""
    for i in prange(x.size):
        v = x[i]
        cdf = _HALF * (_ONE + erf32_scalar(v * _SQRT1_2, c0, c1, c2, c3, last))
        out[i] = g[i * gstep] * (cdf + v * (_INV_SQRT_2PI * e[i]))


@njit(cache=True, inline="always")
def _column_block(a, out, zero, j0, j1):
    # the columns [j0, j1) summed row after row from 0 (numpy's order over leading axes),
    # in a local accumulator: no aliasing with `a`, so LLVM vectorises the row loop
    w = j1 - j0
    acc = np.empty(512, a.dtype)
    for j in range(w):
        acc[j] = zero
    for i in range(a.shape[0]):
        row = a[i, j0:j1]
        for j in range(w):
            acc[j] += row[j]
    for j in range(w):
        out[j0 + j] = acc[j]


@njit(parallel=True, cache=True)
def column_sum(a, out, zero):
    """out[j] = sum over i of a[i, j], C-contiguous (M, N): numpy's bits, blocks of 512
    columns per thread."""
    n = a.shape[1]
    for b in prange((n + 511) // 512):
        _column_block(a, out, zero, b * 512, min(b * 512 + 512, n))


@njit(cache=True)
def column_sum_serial(a, out, zero):
    """column_sum on this thread (arrays too small to pay for waking the pool)."""
    n = a.shape[1]
    for b in range((n + 511) // 512):
        _column_block(a, out, zero, b * 512, min(b * 512 + 512, n))


@njit(parallel=True, cache=True, error_model="numpy")
def layer_norm_rows(x, w, b, has_w, has_b, eps, zero, one, nf, y, mean, rstd):
    """Layer norm over the last axis of a C-contiguous (rows, n) array, with numpy's
    operations in numpy's order (gpuad/ops/norms.py): the mean as numpy's pairwise sum
    over n divided by n, the variance as the same over (x - mean)^2, rstd = 1 / sqrt(var
    + eps), y = (x - mean) rstd (* w) (+ b). eps, zero, one and nf (n) come in x's dtype,
    so every operation stays in it, as numpy's with Python numbers does."""
    rows, n = x.shape
    for r in prange(rows):
        row = x[r]
        m = pairwise_sum(row, 0, n, zero) / nf
        sq = np.empty(n, x.dtype)
        for j in range(n):
            d = row[j] - m
            sq[j] = d * d
        v = pairwise_sum(sq, 0, n, zero) / nf
        s = one / np.sqrt(v + eps)
        mean[r] = m
        rstd[r] = s
        for j in range(n):
            t = (row[j] - m) * s
            if has_w:
                t = t * w[j]
            if has_b:
                t = t + b[j]
            y[r, j] = t


@njit(parallel=True, cache=True, error_model="numpy")
def adam_step(w, g, m, v, b1, c1, b2, c2, step_size, sqrt_c, eps):
    """Adam's update in one pass over w, g, m, v (read 16 B, write 12 B per float32 element,
    against numpy's ~13 passes): the optimizer's own operations in its order, each
    rounded to the arrays' dtype, so numpy's bits."""
    for i in prange(w.size):
        gi = g[i]
        mi = m[i] * b1 + c1 * gi
        vi = v[i] * b2 + c2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        w[i] = w[i] - step_size * (mi / (np.sqrt(vi) / sqrt_c + eps))


@njit(parallel=True, cache=True, error_model="numpy")
def rms_norm_rows(x, w, has_w, eps, zero, one, nf, y, rstd):
    """RMS norm over the last axis of a C-contiguous (rows, n) array, numpy's operations in
    numpy's order (gpuad/ops/norms.py): rstd = 1 / sqrt(pairwise sum(x^2) / n + eps),
    y = x rstd (* w)."""
    rows, n = x.shape
    for r in prange(rows):
        row = x[r]
        sq = np.empty(n, x.dtype)
        for j in range(n):
            sq[j] = row[j] * row[j]
        s = one / np.sqrt(pairwise_sum(sq, 0, n, zero) / nf + eps)
        rstd[r] = s
        for j in range(n):
            t = row[j] * s
            if has_w:
                t = t * w[j]
            y[r, j] = t


@njit(parallel=True, cache=True, error_model="numpy")
def norm_grad_rows(x, g, w, mean, rstd, has_w, rms, want_gx, zero, nf, dx, gx):
    """The input gradient of layer norm (rms=False) or rms norm over the last axis, numpy's
    operations in numpy's order (gpuad/ops/norms.py's VJPs): x_hat = (x - mean) rstd (rms:
    x rstd), gw = g w, a = mean(gw), b = mean(gw x_hat) (pairwise sums over the row),
    dx = rstd ((gw - a) - x_hat b) (rms: rstd (gw - x_hat b)). gx = g x_hat is written
    (want_gx) for the weight gradient's column sum. Reads x and g once, writes dx and gx: 16 B per
    float32 element against the generic code's ~12 passes."""
    rows, n = x.shape
    for r in prange(rows):
        gw = np.empty(n, x.dtype)
        p = np.empty(n, x.dtype)
        s = rstd[r]
        m = mean[r]
        for j in range(n):
            xh = x[r, j] * s if rms else (x[r, j] - m) * s
            gj = g[r, j]
            v = gj * w[j] if has_w else gj
            gw[j] = v
            p[j] = v * xh
            if want_gx:
                gx[r, j] = gj * xh
        b = pairwise_sum(p, 0, n, zero) / nf
        a = zero if rms else pairwise_sum(gw, 0, n, zero) / nf
        for j in range(n):
            xh = x[r, j] * s if rms else (x[r, j] - m) * s
            dx[r, j] = s * (gw[j] - xh * b) if rms else s * ((gw[j] - a) - xh * b)


# softmax, log_softmax and cross-entropy over the last axis: the kernels do the row passes
# (subtract, pairwise sums, divide, the gradients) on every thread; numpy's own exp and
# log run between them (its SIMD bits), so results equal the generic code's

@njit(parallel=True, cache=True, error_model="numpy")
def rows_minus(x, m, out, copy, two):
    """out = x - m[r] per row (and, with two, the same into copy)."""
    rows, n = x.shape
    for r in prange(rows):
        mr = m[r]
        for j in range(n):
            v = x[r, j] - mr
            out[r, j] = v
            if two:
                copy[r, j] = v


@njit(parallel=True, cache=True)
def row_sums(e, zero, out):
    """out[r] = numpy's pairwise sum of row r."""
    rows, n = e.shape
    for r in prange(rows):
        out[r] = pairwise_sum(e[r], 0, n, zero)


@njit(parallel=True, cache=True, error_model="numpy")
def rows_normalize(e, zero):
    """e[r] /= its pairwise sum (softmax's last step, in place)."""
    rows, n = e.shape
    for r in prange(rows):
        s = pairwise_sum(e[r], 0, n, zero)
        for j in range(n):
            e[r, j] = e[r, j] / s


@njit(parallel=True, cache=True, error_model="numpy")
def softmax_grad_rows(g, y, zero, dx):
    """dx = (g - sum(g y)) y per row (softmax's VJP; the dot as numpy's pairwise sum)."""
    rows, n = g.shape
    for r in prange(rows):
        p = np.empty(n, g.dtype)
        for j in range(n):
            p[j] = g[r, j] * y[r, j]
        dot = pairwise_sum(p, 0, n, zero)
        for j in range(n):
            dx[r, j] = (g[r, j] - dot) * y[r, j]


@njit(parallel=True, cache=True, error_model="numpy")
def log_softmax_grad_rows(g, p, zero):
    """p = g - p sum(g) per row, in place (log_softmax's VJP, p = exp(y) on entry)."""
    rows, n = g.shape
    for r in prange(rows):
        total = pairwise_sum(g[r], 0, n, zero)
        for j in range(n):
            p[r, j] = g[r, j] - p[r, j] * total


@njit(parallel=True, cache=True, error_model="numpy")
def xent_grad_rows(p, target, scale, per_row, zero, one):
    """p = (p - onehot(target)) * scale in place (cross-entropy's VJP, p = exp(logits - lse)
    on entry): the one-hot as a comparison, so a target outside [0, C) matches nothing."""
    rows, n = p.shape
    for r in prange(rows):
        t = target[r]
        s = scale[r] if per_row else scale[0]
        for j in range(n):
            p[r, j] = (p[r, j] - (one if j == t else zero)) * s
