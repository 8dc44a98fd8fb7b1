"""Host side of the Triton kernels: check, allocate, launch; and record the bytes moved.

Arrays reach Triton as objects with data_ptr() and dtype: CuPy arrays through
a small shim, launched on CuPy's current stream and device (gpuad.providers.
follow_cupy). torch is imported in two places, both Triton's: its CUDA driver
imports it when it starts (gpuad then points the driver's stream and device at
CuPy's; without a usable driver the CuPy kernels run), and with
TRITON_INTERPRET=1 the interpreter needs torch CPU tensors, so numpy arrays are
wrapped zero-copy with torch.from_numpy (the CPU verification mode).

dtypes: float32 (fp32 accumulation; IEEE FMAs, or TF32 tensor cores after
gpuad.set_float32_matmul_precision("high")) and float16 (fp32 accumulation);
anything else falls back to the generic code with one warning.
"""
import warnings

import numpy as np

from .. import providers as K
from ..memory.accounting import accountant

_ACT = {None: 0, "relu": 1, "tanh": 2, "sigmoid": 3, "gelu": 4}
_DTYPES = (np.dtype("float32"), np.dtype("float16"))


class _CupyArg:
    """What Triton needs of a CuPy array: its device pointer and dtype."""
    __slots__ = ("_ptr", "dtype")

    def __init__(self, a):
        self._ptr = a.data.ptr
        self.dtype = a.dtype

    def data_ptr(self):
        return self._ptr


def triton_arg(a):
    """An array as Triton takes it: torch.from_numpy for numpy (the interpreter, zero
    copy), a data_ptr shim for CuPy."""
    if a is None:
        return None
    if type(a) is np.ndarray:
        import torch                              # interpreter mode only (see module docstring)
        if any(s < 0 for s in a.strides):
            # a silent copy here would hand the kernel other strides than the ones its
            # caller passed: callers copy first (nonnegative_strides), so this is a bug
            raise ValueError("gpuad triton: an operand with negative strides reached a kernel; copy it with "
                             "nonnegative_strides() before reading its strides")
        with warnings.catch_warnings():           # read-only inputs: the kernels only read them
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return _CupyArg(a)


FORCE_INT64 = False      # tests: take the 64-bit index path at any size


def nonnegative_strides(a):
    """a, or a C-order copy of it where a stride is negative (a flipped view): the kernels
    index through the strides their caller reads, and the interpreter's torch tensors
    take no negative strides. One pass over a, for flipped operands only."""
    if a is None or not hasattr(a, "strides") or all(st >= 0 for st in a.strides):
        return a
    return a.copy()


def _nonnegative(method):
    """A host method whose array arguments have no negative strides by the time it reads them."""
    import functools

    @functools.wraps(method)
    def run(self, xp, *args, **kwargs):
        return method(self, xp, *(nonnegative_strides(a) for a in args), **kwargs)
    return run


def needs_int64(*arrays):
    """Whether index arithmetic must be 64-bit: an operand whose farthest element lies
    2^31 elements or more from its start (a strided view of a large buffer reaches
    that with few elements of its own: the row stride times the rows counts, not the size).

    >>> import numpy as np
    >>> big = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2, 4), (2 ** 31 * 4, 4))
    >>> needs_int64(np.zeros(8)), needs_int64(big)
    (False, True)
    """
    return FORCE_INT64 or any(a is not None and _last_offset(a) >= 2 ** 31 - 1 for a in arrays)


def _elements(a):
    """a's strides in elements (the kernels index elements, as Triton's pointers step)."""
    return tuple(st // a.itemsize for st in a.strides)


def _last_offset(a):
    """The element offset of a's last element from its first (strides in elements)."""
    if a.size == 0:
        return 0
    strides = getattr(a, "strides", None)
    if strides is None:
        return a.size
    return sum((n - 1) * abs(st) // a.itemsize for n, st in zip(a.shape, strides)) + 1


class TritonKernels:
    name = "triton"

    def __init__(self, interpret):
        import triton
        L, X = K.load_kernel_module("linear"), K.load_kernel_module("softmax_xent")
        self.N = K.load_kernel_module("layer_norm")
        self.C = K.load_kernel_module("conv")
        self.A = K.load_kernel_module("flash_attention")
        self.interpret = interpret
        self.triton = triton
        self.L, self.X = L, X
        def tuned(kernel, fn):
            prune = None if interpret else {"early_config_prune": L.pruner(kernel)}
            return triton.autotune(configs=L.configs(interpret, kernel), key=["M", "N", "K"],
                                   prune_configs_by=prune)(fn)
        self.fwd = tuned("fwd", L.linear_fwd_kernel)
        self.bwd_dx = tuned("dx", L.linear_bwd_dx_kernel)
        self.bwd_dw = tuned("dw", L.linear_bwd_dw_kernel)

    # -- helpers ---------------------------------------------------------------

    def _arg(self, a):
        return triton_arg(a)

    def _ok(self, op, *arrays):
        for a in arrays:
            if a is not None and a.dtype not in _DTYPES:
                K.fallback("triton", op, f"dtype {a.dtype}")
                return False
        dts = {a.dtype for a in arrays if a is not None}
        if len(dts) > 1:
            K.fallback("triton", op, f"mixed dtypes {sorted(map(str, dts))}")
            return False
        return True

    @staticmethod
    def _traffic(name, read, written):
        if accountant.active is not None:
            accountant.kernel_traffic = (name, read, written)

    @staticmethod
    def _rows(a):
        """(M, K) view of a (..., K) array."""
        return a.reshape(-1, a.shape[-1])

    # -- fused linear ----------------------------------------------------------

    def linear_forward(self, xp, x, w, b, activation):
        """(Y, Z or None): Y = act(X W^T + b), Z the pre-activation when gelu saves it."""
        if not self._ok("linear", x, w, b):
            return None
        x2 = self._rows(x)
        M, Kd = x2.shape
        N = w.shape[0]
        if b is not None:
            b = xp.ascontiguousarray(b)        # the kernel reads b[n] at b_ptr + n (N elements)
        save_z = activation == "gelu"
        y = xp.empty((M, N), x.dtype)
        z = xp.empty((M, N), x.dtype) if save_z else None
        grid = lambda meta: (self.triton.cdiv(M, meta["BLOCK_M"]), self.triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
        ta, tw, tb, ty, tz = map(self._arg, (x2, w, b, y, z))
        self.fwd[grid](ta, tw, tb if tb is not None else ta, ty, tz if tz is not None else ty,
                       M, N, Kd,
                       x2.strides[0] // x2.itemsize, x2.strides[1] // x2.itemsize,
                       w.strides[0] // w.itemsize, w.strides[1] // w.itemsize,
                       N, 1,
                       HAS_BIAS=b is not None, ACT=_ACT[activation], SAVE_Z=save_z, PRECISION=K.triton_input_precision(),
                       INT64=needs_int64(x2, w, y))
        isz = x.itemsize
        self._traffic("linear (triton)", (M * Kd + N * Kd + (N if b is not None else 0)) * isz,
                      M * N * isz * (2 if save_z else 1))
        shape = tuple(x.shape[:-1]) + (N,)
        return y.reshape(shape), (z.reshape(shape) if save_z else None)

    def linear_backward(self, xp, g, x, w, s, activation, needs, x_shape, w_shape):
        """(dX, dW, db) for the needed inputs; s is what the forward saved (Y, or Z for gelu)."""
        if not self._ok("linear backward", g, x, w, s):
            return None
        nx, nw, nb = needs
        g2 = self._rows(g)
        M, N = g2.shape
        Kd = w_shape[1] if w_shape is not None else 0      # (only db: no weight shape needed)
        act = _ACT[activation]
        s2 = self._rows(s) if s is not None else g2
        if g2.strides != s2.strides:
            # the kernels walk dY and the saved tile with one set of strides; a
            # broadcast or transposed dY is laid out like the saved one first (MN copy)
            g2 = xp.ascontiguousarray(g2)
            s2 = xp.ascontiguousarray(s2) if s is not None else g2
        tg, ts = self._arg(g2), self._arg(s2)
        dx = dw = db = None
        isz = g.itemsize
        read = written = 0
        cdiv = self.triton.cdiv
        if nx:
            dx = xp.empty((M, Kd), g.dtype)
            grid = lambda meta: (cdiv(M, meta["BLOCK_M"]), cdiv(Kd, meta["BLOCK_K"]))  # noqa: E731
            self.bwd_dx[grid](tg, ts, self._arg(w), self._arg(dx), M, N, Kd,
                              g2.strides[0] // isz, g2.strides[1] // isz,
                              w.strides[0] // w.itemsize, w.strides[1] // w.itemsize, Kd, 1,
                              ACT=act, PRECISION=K.triton_input_precision(), INT64=needs_int64(g2, w, dx))
            read += (2 * M * N + N * Kd) * isz
            written += M * Kd * isz
            dx = dx.reshape(x_shape)
        if nw:
            x2 = self._rows(x)
            dw = xp.empty((N, Kd), g.dtype)
            grid = lambda meta: (cdiv(N, meta["BLOCK_N"]), cdiv(Kd, meta["BLOCK_K"]))  # noqa: E731
            self.bwd_dw[grid](tg, ts, self._arg(x2), self._arg(dw), M, N, Kd,
                              g2.strides[0] // isz, g2.strides[1] // isz,
                              x2.strides[0] // x2.itemsize, x2.strides[1] // x2.itemsize, Kd, 1,
                              ACT=act, PRECISION=K.triton_input_precision(), INT64=needs_int64(g2, x2, dw))
            read += (2 * M * N + M * Kd) * isz
            written += N * Kd * isz
        if nb:
            db = xp.empty((N,), g.dtype)
            block_n = 16 if self.interpret else 128
            self.L.linear_bwd_db_kernel[(cdiv(N, block_n),)](tg, ts, self._arg(db), M, N,
                                                             g2.strides[0] // isz, g2.strides[1] // isz,
                                                             ACT=act, INT64=needs_int64(g2),
                                                             BLOCK_M=16 if self.interpret else 64,
                                                             BLOCK_N=block_n)
            read += 2 * M * N * isz
            written += N * isz
        self._traffic("linear backward (triton)", read, written)
        return dx, dw, db

    # -- layer norm (last dimension) ---------------------------------------------------

    MAX_ROW = 8192             # longer rows fall back to the generic code (tests/test_kernels_aot.py compiles 8192)

    @staticmethod
    def _row_warps(block_n):
        return 8 if block_n >= 2048 else 4

    def layer_norm_forward(self, xp, x, w, b, eps, rms=False):
        """(Y, mean, rstd) with mean and rstd (..., 1) in float32, or None to decline.
        rms=True: rms_norm (b must be None), and mean comes back None."""
        if not self._ok("layer_norm", x, w, b) or x.shape[-1] > self.MAX_ROW or x.size == 0:
            return None
        x2 = xp.ascontiguousarray(self._rows(x))
        M, N = x2.shape
        y = xp.empty((M, N), x.dtype)
        mean, rstd = (None if rms else xp.empty((M,), np.float32)), xp.empty((M,), np.float32)
        w = xp.ascontiguousarray(w) if w is not None else None
        b = xp.ascontiguousarray(b) if b is not None else None
        self.N.layer_norm_fwd_kernel[(M,)](self._arg(x2), self._arg(w if w is not None else x2),
                                           self._arg(b if b is not None else x2), self._arg(y),
                                           self._arg(rstd if rms else mean), self._arg(rstd), N, N, N, float(eps),
                                           HAS_W=w is not None, HAS_B=b is not None, RMS=rms, INT64=needs_int64(x2),
                                           BLOCK_N=self.triton.next_power_of_2(N),
                                           num_warps=self._row_warps(self.triton.next_power_of_2(N)))
        self._traffic("rms_norm (triton)" if rms else "layer_norm (triton)", M * N * x.itemsize,
                      M * N * x.itemsize + (4 if rms else 8) * M)
        lead = tuple(x.shape[:-1]) + (1,)
        return y.reshape(x.shape), (None if rms else mean.reshape(lead)), rstd.reshape(lead)

    def layer_norm_backward(self, xp, g, x, w, mean, rstd):
        """dX (dW and dB are summed by the caller), or None to decline. mean None: rms_norm."""
        if not self._ok("layer_norm backward", g, x, w) or x.shape[-1] > self.MAX_ROW or x.size == 0:
            return None
        x2, g2 = xp.ascontiguousarray(self._rows(x)), xp.ascontiguousarray(self._rows(g))
        M, N = x2.shape
        dx = xp.empty((M, N), x.dtype)
        r = xp.ascontiguousarray(rstd.reshape(M), dtype=np.float32)
        m = r if mean is None else xp.ascontiguousarray(mean.reshape(M), dtype=np.float32)
        w = xp.ascontiguousarray(w) if w is not None else None
        self.N.layer_norm_bwd_kernel[(M,)](self._arg(x2), self._arg(g2), self._arg(w if w is not None else x2),
                                           self._arg(m), self._arg(r), self._arg(dx), N, N, N, N,
                                           HAS_W=w is not None, RMS=mean is None, INT64=needs_int64(x2),
                                           BLOCK_N=self.triton.next_power_of_2(N),
                                           num_warps=self._row_warps(self.triton.next_power_of_2(N)))
        self._traffic("rms_norm backward (triton)" if mean is None else "layer_norm backward (triton)",
                      2 * M * N * x.itemsize + (4 if mean is None else 8) * M, M * N * x.itemsize)
        return dx.reshape(x.shape)

    # -- convolution (2-D, implicit GEMM: kernels/conv.py) ---------------------------------

    # BLOCK_M, largest BLOCK_N, BLOCK_K, warps, stages: with 4 warps the fp32 gathers' address
    # tiles spill registers on sm_90 (ptxas, tests/test_kernels_aot.py); 8 warps fit in 225
    CONV_TILE = (64, 64, 32, 8, 2)

    def _conv_ok(self, op, a, b, stride, dilation):
        if a.ndim != 4 or len(stride) != 2 or len(dilation) != 2:
            return False                  # 1-D and 3-D convolutions run the generic code
        return self._ok(op, a, b)


    def _conv_launch(self, kernel, grid_m, cols, groups, *args, **const):
        bm, bn_max, bk, warps, stages = self.CONV_TILE
        bn = min(bn_max, max(16, self.triton.next_power_of_2(cols)))
        grid = (self.triton.cdiv(grid_m, bm), self.triton.cdiv(cols, bn), groups)
        kernel[grid](*args, PRECISION=K.triton_input_precision(), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                     num_warps=warps, num_stages=stages, **const)

    def conv_forward(self, xp, x, w, b, stride, padding, dilation, groups):
        """y = x (*) w + b, (N, O, P, Q), or None to decline."""
        if not self._conv_ok("conv", x, w, stride, dilation) or not self._ok("conv", x, w, b):
            return None
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        (lh, hh), (lw, hw) = padding
        p = (h + lh + hh - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        q = (wd + lw + hw - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        y = xp.empty((n, o, p, q), x.dtype)
        if y.size:
            b = xp.ascontiguousarray(b) if b is not None else None
            self._conv_launch(self.C.conv_fwd_kernel, n * p * q, o // groups, groups,
                              self._arg(x), self._arg(w), self._arg(b if b is not None else w), self._arg(y),
                              n, h, wd, p, q, cg, o // groups, kh, kw, *_elements(x), *_elements(w), *_elements(y),
                              stride[0], stride[1], lh, lw, dilation[0], dilation[1],
                              HAS_BIAS=b is not None, INT64=needs_int64(x, w, y))
        self._traffic("conv (triton)", x.nbytes + w.nbytes, y.nbytes)
        return y

    def conv_dgrad(self, xp, g, w, size, stride, padding, dilation, groups):
        """dx (N, C, *size) from g (N, O, P, Q), or None to decline."""
        if not self._conv_ok("conv_transpose", g, w, stride, dilation):
            return None
        n, o, p, q = g.shape
        _, cg, kh, kw = w.shape
        h, wd = size
        dx = xp.empty((n, cg * groups, h, wd), g.dtype)
        if dx.size:
            self._conv_launch(self.C.conv_dgrad_kernel, n * h * wd, cg, groups,
                              self._arg(g), self._arg(w), self._arg(dx),
                              n, h, wd, p, q, cg, o // groups, kh, kw, *_elements(g), *_elements(w), *_elements(dx),
                              stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1],
                              INT64=needs_int64(g, w, dx))
        self._traffic("conv_transpose (triton)", g.nbytes + w.nbytes, dx.nbytes)
        return dx

    def conv_wgrad(self, xp, x, g, kernel, stride, padding, dilation, groups):
        """dw (O, C/G, KH, KW) from x and g, or None to decline."""
        if not self._conv_ok("conv_weight", x, g, stride, dilation):
            return None
        n, c, h, wd = x.shape
        o, p, q = g.shape[1], g.shape[2], g.shape[3]
        kh, kw = kernel
        cg = c // groups
        dw = xp.empty((o, cg, kh, kw), x.dtype)
        if dw.size:
            self._conv_launch(self.C.conv_wgrad_kernel, o // groups, cg * kh * kw, groups,
                              self._arg(x), self._arg(g), self._arg(dw),
                              n, h, wd, p, q, cg, o // groups, kh, kw, *_elements(x), *_elements(g), *_elements(dw),
                              stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1],
                              INT64=needs_int64(x, g, dw))
        self._traffic("conv_weight (triton)", x.nbytes + g.nbytes, dw.nbytes)
        return dw

    # -- attention (FlashAttention-2) ----------------------------------------------------

    def _attention_mask(self, xp, mask, batch, L, S):
        """(additive fp32 mask, batch x head stride, row stride) for the kernels, from a
        boolean (True = attend) or additive mask broadcastable to batch + (L, S); None
        (decline: the generic code broadcasts) where the kernels would need a copy
        larger than the mask. A mask shared by every batch and head has batch stride 0,
        a key-padding mask (..., 1, S) row stride 0: no L x S copy is made for either."""
        m = xp.asarray(mask)
        m = xp.where(m, np.float32(0), np.float32(-np.inf)) if m.dtype == np.bool_ else m.astype(np.float32, copy=False)
        m = m.reshape((1,) * max(0, 2 - m.ndim) + tuple(m.shape))
        rows, lead = m.shape[-2], tuple(m.shape[:-2])
        if all(n == 1 for n in lead):
            return xp.ascontiguousarray(xp.broadcast_to(m.reshape(rows, -1), (rows, S))), 0, (0 if rows == 1 else S)
        if lead != tuple(batch) or m.shape[-1] != S:
            return None
        return xp.ascontiguousarray(m).reshape(-1, rows, S), rows * S, (0 if rows == 1 else S)

    def attention_forward(self, xp, q, k, v, causal, scale, mask=None):
        """(out, lse (..., L, 1) fp32) for q, k, v of one batch shape, or None to decline."""
        if not self._ok("attention", q, k, v) or self._attention_declines(q, k, v, mask):
            return None
        mk = (q, 0, 0) if mask is None else self._attention_mask(xp, mask, q.shape[:-2], q.shape[-2], k.shape[-2])
        if mk is None:
            return None
        L, E, S, EV = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
        q3, k3, v3 = (xp.ascontiguousarray(a.reshape((-1,) + a.shape[-2:])) for a in (q, k, v))
        bh = q3.shape[0]
        o = xp.empty((bh, L, EV), q.dtype)
        lse = xp.empty((bh, L), np.float32)
        meta = self._attention_meta(E, EV, causal, mask is not None, dtype=q.dtype)
        self.A.attention_fwd_kernel[(bh, self.triton.cdiv(L, meta["BLOCK_M"]))](
            self._arg(q3), self._arg(k3), self._arg(v3), self._arg(o), self._arg(lse), self._arg(mk[0]), L, S, E, EV,
            L * E, E, S * E, E, S * EV, EV, L * EV, EV, mk[1], mk[2], float(scale), **meta)
        isz = q.itemsize
        self._traffic("scaled_dot_product_attention (triton)",
                      bh * ((L * E + S * E + S * EV) * isz + (4 * L * S if mask is not None else 0)),
                      bh * (L * EV * isz + 4 * L))
        return o.reshape(q.shape[:-1] + (EV,)), lse.reshape(q.shape[:-1] + (1,))

    def _attention_meta(self, E, EV, causal, has_mask, backward=False, dtype=np.float32):
        precision = K.triton_input_precision()
        return dict(CAUSAL=bool(causal), HAS_MASK=has_mask, PRECISION=precision,
                    **self.A.attention_launch(E, EV, backward, self.interpret, masked=has_mask,
                                              ieee=self._ieee(dtype, precision)))

    @staticmethod
    def _ieee(dtype, precision=None):
        """fp32 with IEEE dots: the kernels' tiles (and backward head dims) differ."""
        return np.dtype(dtype) == np.float32 and (precision or K.triton_input_precision()) == "ieee"

    def _attention_declines(self, q, k, v, mask, backward=False):
        """Shapes the kernels do not take: batch shapes that differ (the generic code
        broadcasts them), head dims above the compiled range, empty inputs."""
        limit = self.A.MAX_HEAD_DIM if mask is None else self.A.MAX_HEAD_DIM_MASKED
        if backward and self._ieee(q.dtype) and not self.interpret:
            limit = min(limit, self.A.MAX_HEAD_DIM_IEEE_BACKWARD)
        return q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2] or \
            max(q.shape[-1], v.shape[-1]) > limit or q.size == 0 or k.shape[-2] == 0

    def attention_backward(self, xp, g, q, k, v, out, lse, causal, scale, needs, mask=None):
        """(dQ, dK, dV) from the two FlashAttention-2 kernels, or None to decline."""
        if not self._ok("attention backward", g, q, k, v) or self._attention_declines(q, k, v, mask, backward=True):
            return None
        mk = (q, 0, 0) if mask is None else self._attention_mask(xp, mask, q.shape[:-2], q.shape[-2], k.shape[-2])
        if mk is None:
            return None
        L, E, S, EV = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
        q3, k3, v3, g3 = (xp.ascontiguousarray(a.reshape((-1,) + a.shape[-2:])) for a in (q, k, v, g))
        bh = q3.shape[0]
        lse2 = xp.ascontiguousarray(lse.reshape(bh, L), dtype=np.float32)
        # D = rowsum(dO * O), once (read 2 L Ev, write L)
        dd = xp.ascontiguousarray(xp.sum(xp.multiply(g3.astype(np.float32, copy=False),
                                                     out.reshape(bh, L, EV).astype(np.float32, copy=False)),
                                         axis=-1), dtype=np.float32)
        dq, dk, dv = xp.empty_like(q3), xp.empty_like(k3), xp.empty_like(v3)
        args = (L, S, E, EV, L * E, E, S * E, E, S * EV, EV, L * EV, EV, mk[1], mk[2], float(scale))
        meta = self._attention_meta(E, EV, causal, mask is not None, backward=True, dtype=q.dtype)
        a = [self._arg(t) for t in (q3, k3, v3, g3, lse2, dd, mk[0])]
        self.A.attention_bwd_dkdv_kernel[(bh, self.triton.cdiv(S, meta["BLOCK_N"]))](
            *a, self._arg(dk), self._arg(dv), *args, **meta)
        if needs[0]:
            self.A.attention_bwd_dq_kernel[(bh, self.triton.cdiv(L, meta["BLOCK_M"]))](*a, self._arg(dq), *args, **meta)
        isz = q.itemsize
        self._traffic("scaled_dot_product_attention backward (triton)",
                      bh * ((2 * (L * E + S * E + S * EV) + 2 * L * EV) * isz + (8 * L * S if mask is not None else 0)),
                      bh * (L * E + S * E + S * EV) * isz)
        return (dq.reshape(q.shape) if needs[0] else None, dk.reshape(k.shape) if needs[1] else None,
                dv.reshape(v.shape) if needs[2] else None)

    # -- softmax cross-entropy -------------------------------------------------------

    def _block_c(self, C):
        return min(self.triton.next_power_of_2(C), 16 if self.interpret else 4096)

    def cross_entropy_forward(self, xp, logits, target):
        """(per-row losses, per-row log-sum-exp)."""
        if not self._ok("cross_entropy", logits):
            return None
        n, C = logits.shape
        loss = xp.empty((n,), np.float32)
        lse = xp.empty((n,), np.float32)
        t = xp.ascontiguousarray(target, dtype=np.int64)   # the kernel reads target[row] at target_ptr + row
        self.X.xent_fwd_kernel[(n,)](self._arg(logits), self._arg(t), self._arg(loss), self._arg(lse), C,
                                     logits.strides[0] // logits.itemsize, logits.strides[1] // logits.itemsize,
                                     INT64=needs_int64(logits), BLOCK_C=self._block_c(C))
        self._traffic("cross_entropy (triton)", n * C * logits.itemsize + n * 8, 2 * n * 4)
        return loss, lse

    def cross_entropy_backward(self, xp, logits, target, lse, scale):
        if not self._ok("cross_entropy backward", logits):
            return None
        n, C = logits.shape
        d = xp.empty((n, C), logits.dtype)
        t = xp.ascontiguousarray(target, dtype=np.int64)   # the kernel reads target[row] at target_ptr + row
        lse = xp.ascontiguousarray(lse.reshape(n), dtype=np.float32)
        scale = xp.ascontiguousarray(xp.broadcast_to(scale, (n,)), dtype=np.float32)
        self.X.xent_bwd_kernel[(n,)](self._arg(logits), self._arg(t), self._arg(lse), self._arg(scale),
                                     self._arg(d), C,
                                     logits.strides[0] // logits.itemsize, logits.strides[1] // logits.itemsize,
                                     C, 1, INT64=needs_int64(logits, d), BLOCK_C=self._block_c(C))
        self._traffic("cross_entropy backward (triton)", n * C * logits.itemsize + n * 16,
                      n * C * logits.itemsize)
        return d


for _name in ("linear_forward", "linear_backward", "layer_norm_forward", "layer_norm_backward", "conv_forward",
              "conv_dgrad", "conv_wgrad", "attention_forward", "attention_backward", "cross_entropy_forward",
              "cross_entropy_backward"):
    setattr(TritonKernels, _name, _nonnegative(getattr(TritonKernels, _name)))
