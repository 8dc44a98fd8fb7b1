"""Triton kernels for the fused linear layer Y = act(X W^T + b), forward and backward.

Kernel code only; the host wrappers (checks, allocation, launch) are in
gpuad/backends/triton_backend.py. Argument order follows Triton's tutorials:
pointers, sizes, strides, then constexpr.

ACT codes: 0 none, 1 relu, 2 tanh, 3 sigmoid, 4 gelu (exact, erf).

Bytes through memory, in elements (M rows, K in, N out):
    forward        read MK + NK + N, write MN (+ MN for gelu's saved Z)
    dX             read 2MN (dY, saved) + NK, write MK
    dW             read 2MN + MK, write NK
    db             read 2MN, write N
dZ = dY * act'(saved) is formed in each backward kernel's prologue, tile by
tile, and never written to memory.

INT64 (constexpr): index arithmetic in 64 bits, chosen by the host when an
operand has 2^31 or more elements (a 16k x 131k logits matrix fits on an H200).
"""
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # The interpreter has no libdevice tanh. Below |x| = 1/16 a Taylor polynomial
    # (error < 1e-11); above, 1 - 2/(exp(2x) + 1), whose cancellation costs at
    # most eps/(2|x|) < 1e-6 relative there.
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    e = tl.exp(2.0 * x)
    big = 1.0 - 2.0 / (e + 1.0)
    return tl.where(tl.abs(x) < 0.0625, small, big)


@triton.jit
def _activate(z, ACT: tl.constexpr):
    if ACT == 1:
        return tl.maximum(z, 0.0)
    elif ACT == 2:
        return _tanh(z)
    elif ACT == 3:
        return tl.sigmoid(z)
    elif ACT == 4:
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    else:
        return z


@triton.jit
def _activation_grad(s, ACT: tl.constexpr):
    """act' from what the forward saved: Y for relu, tanh, sigmoid; Z for gelu."""
    if ACT == 1:
        return tl.where(s > 0.0, 1.0, 0.0)
    elif ACT == 2:
        return 1.0 - s * s
    elif ACT == 3:
        return s * (1.0 - s)
    elif ACT == 4:
        cdf = 0.5 * (1.0 + tl.math.erf(s * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * s * s)
        return cdf + s * pdf
    else:
        return tl.full(s.shape, 1.0, tl.float32)


@triton.jit
def _index(i, INT64: tl.constexpr):
    """Offsets in 64 bits when an operand has 2^31 elements or more: int32 index times
    int32 stride would wrap around and address the wrong memory."""
    if INT64:
        return i.to(tl.int64)
    return i


@triton.jit
def _dz_tile(dy_ptr, s_ptr, off, mask, ACT: tl.constexpr):
    """The backward prologue: dZ = dY * act'(S) for one tile, in fp32, never written out."""
    dz = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if ACT == 1:
        # relu selects: dY where Y > 0, else 0 (an inf dY times a 0 mask would be NaN)
        s = tl.load(s_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dz = tl.where(s > 0, dz, 0.0)
    elif ACT != 0:
        s = tl.load(s_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dz = dz * _activation_grad(s, ACT)
    return dz


@triton.jit
def linear_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, z_ptr,
                      M, N, K,
                      stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                      HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVE_Z: tl.constexpr,
                      PRECISION: tl.constexpr, INT64: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of Y: the GEMM accumulates in fp32, then bias and
    activation run in the epilogue on registers, and Y (and Z) are written once."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = _index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64)
    offs_n = _index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64)
    offs_k = _index(tl.arange(0, BLOCK_K), INT64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (kk[None, :] < K), other=0.0)
        wt = tl.load(w_ptr + offs_n[None, :] * stride_wn + kk[:, None] * stride_wk,
                     mask=(offs_n[None, :] < N) & (kk[:, None] < K), other=0.0)
        acc += tl.dot(x, wt, input_precision=PRECISION)
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc += b[None, :].to(tl.float32)
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    out_off = offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    if SAVE_Z:
        tl.store(z_ptr + out_off, acc.to(z_ptr.dtype.element_ty), mask=out_mask)
    y = _activate(acc, ACT)
    tl.store(y_ptr + out_off, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def linear_bwd_dx_kernel(dy_ptr, s_ptr, w_ptr, dx_ptr,
                         M, N, K,
                         stride_dym, stride_dyn, stride_wn, stride_wk, stride_dxm, stride_dxk,
                         ACT: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dX = dZ W for one (BLOCK_M, BLOCK_K) tile; dZ = dY * act'(S) formed in the prologue."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = _index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64)
    offs_k = _index(pid_k * BLOCK_K + tl.arange(0, BLOCK_K), INT64)
    offs_n = _index(tl.arange(0, BLOCK_N), INT64)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + offs_n
        mn_mask = (offs_m[:, None] < M) & (nn[None, :] < N)
        mn_off = offs_m[:, None] * stride_dym + nn[None, :] * stride_dyn
        dz = _dz_tile(dy_ptr, s_ptr, mn_off, mn_mask, ACT)
        w = tl.load(w_ptr + nn[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                    mask=(nn[:, None] < N) & (offs_k[None, :] < K), other=0.0)
        acc += tl.dot(dz.to(w.dtype), w, input_precision=PRECISION)
    tl.store(dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk,
             acc.to(dx_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_k[None, :] < K))


@triton.jit
def linear_bwd_dw_kernel(dy_ptr, s_ptr, x_ptr, dw_ptr,
                         M, N, K,
                         stride_dym, stride_dyn, stride_xm, stride_xk, stride_dwn, stride_dwk,
                         ACT: tl.constexpr, PRECISION: tl.constexpr, INT64: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW = dZ^T X for one (BLOCK_N, BLOCK_K) tile, reducing over the M rows."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = _index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64)
    offs_k = _index(pid_k * BLOCK_K + tl.arange(0, BLOCK_K), INT64)
    offs_m = _index(tl.arange(0, BLOCK_M), INT64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + offs_m
        nm_mask = (offs_n[:, None] < N) & (mm[None, :] < M)
        nm_off = mm[None, :] * stride_dym + offs_n[:, None] * stride_dyn      # dZ^T tile (N, M)
        dzt = _dz_tile(dy_ptr, s_ptr, nm_off, nm_mask, ACT)
        x = tl.load(x_ptr + mm[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=(mm[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        acc += tl.dot(dzt.to(x.dtype), x, input_precision=PRECISION)
    tl.store(dw_ptr + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk,
             acc.to(dw_ptr.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))


@triton.jit
def linear_bwd_db_kernel(dy_ptr, s_ptr, db_ptr,
                         M, N,
                         stride_dym, stride_dyn,
                         ACT: tl.constexpr, INT64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """db = sum over rows of dZ, for BLOCK_N columns (read 2MN, write N)."""
    pid_n = tl.program_id(0)
    offs_n = _index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64)
    offs_m = _index(tl.arange(0, BLOCK_M), INT64)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + offs_m
        mask = (mm[:, None] < M) & (offs_n[None, :] < N)
        off = mm[:, None] * stride_dym + offs_n[None, :] * stride_dyn
        acc += tl.sum(_dz_tile(dy_ptr, s_ptr, off, mask, ACT), axis=0)
    tl.store(db_ptr + offs_n, acc.to(db_ptr.dtype.element_ty), mask=offs_n < N)


# Candidate tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) before pruning.
CANDIDATES = ((128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4),
              (128, 256, 32, 8, 3), (64, 64, 64, 4, 3), (32, 64, 32, 4, 4), (64, 32, 32, 4, 4))

SMEM_LIMIT = 232448          # shared memory per block on sm_90 (H100, H200), bytes


def smem_bytes(kernel, bm, bn, bk, stages, itemsize):
    """Upper estimate of the pipelined tiles in shared memory: each stage holds the
    operand tiles of one loop step (the backward kernels also load the saved tile
    beside dY). Checked against ptxas by tests/test_kernels_aot.py."""
    if kernel == "fwd":
        per_stage = bm * bk + bk * bn
    elif kernel == "dx":
        per_stage = 2 * bm * bn + bn * bk
    else:                                        # dw: dY and saved tiles (N x M) and X (M x K)
        per_stage = 2 * bm * bn + bm * bk
    return stages * per_stage * itemsize


def fits(kernel, cfg, itemsize):
    """Whether a tile fits the H200 without spilling: shared memory within the block limit,
    and (from ptxas on these kernels) the fp32 accumulator and each step's operand tiles at
    most 32 registers per thread each; larger tiles spill with the gelu epilogue."""
    bm, bn, bk, warps, stages = cfg
    threads = 32 * warps
    acc = {"fwd": bm * bn, "dx": bm * bk, "dw": bn * bk}[kernel] / threads       # the fp32 accumulator
    operands = bk * (bm + bn) / threads                                          # one step's loaded tiles
    dz = bm * bn / threads if kernel != "fwd" else 0                             # backward: the dZ tile
    return (smem_bytes(kernel, bm, bn, bk, stages, itemsize) <= SMEM_LIMIT
            and acc <= 32 and operands <= 32 and dz <= 32)


def kept(kernel, itemsize):
    """The candidate tiles that fit, for a kernel ("fwd", "dx", "dw") and an element size."""
    return [c for c in CANDIDATES if fits(kernel, c, itemsize)]


def configs(interpret=False, kernel="fwd"):
    """Autotuning candidates for one GEMM kernel: every tile that fits for the smallest
    element size (prune() drops the rest for the launch's dtype); in the interpreter,
    where every program runs in Python, one small tile."""
    if interpret:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in kept(kernel, 2)]


def arg_itemsize(a):
    """Bytes per element of a kernel argument, whatever wraps it: a torch tensor (the
    interpreter) has element_size(); gpuad's CuPy shim (a device launch) only its dtype."""
    dtype = getattr(a, "dtype", None)
    if dtype is not None and hasattr(dtype, "itemsize"):
        return dtype.itemsize                    # numpy dtypes (CuPy's), and torch's since 2.1
    return a.element_size()


def pruner(kernel):
    """early_config_prune for triton.autotune: keep the tiles that fit this launch's dtype,
    so no config that cannot compile cleanly costs a compile."""
    def prune(configs, named_args, **kwargs):
        itemsize = arg_itemsize(named_args["dy_ptr" if kernel != "fwd" else "x_ptr"])
        keep = [c for c in configs if fits(kernel, (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"],
                                                    c.num_warps, c.num_stages), itemsize)]
        return keep or configs[:1]
    return prune
