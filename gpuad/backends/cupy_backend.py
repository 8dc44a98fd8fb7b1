"""CuPy: the GPU namespace, its memory accounting, and the "cupy" kernel provider.

Imported only when a CuPy array appears or 'cuda' is asked for. The generic
ops run through the same xp code as numpy; matmul goes to cuBLAS. The
provider keeps GEMMs in cuBLAS and runs bias + activation, and the
activation derivative, as single-pass ElementwiseKernels built on first use
and cached per device.

Accounting: a CuPy MemoryHook feeds gpuad.memory's counters from the
allocator itself (every device allocation and free), so live and peak bytes
are exact on the GPU too.
"""
import math

import cupy
import cupyx

from .numpy_backend import ArrayNamespace
from ..memory.accounting import accountant


class _CupyNamespace(ArrayNamespace):
    def __init__(self):
        super().__init__("cupy", cupy)

    def _add_at(self, out, index, g):
        cupyx.scatter_add(out, index, g)

    def erf(self, x, out=None):
        # cupyx's erf computes float16 as float64 ('e->d'): float16 goes through float32
        # and back, so the result keeps x's dtype as numpy's path does
        from cupyx.scipy.special import erf
        if x.dtype == cupy.float16:
            y = erf(x.astype(cupy.float32)).astype(cupy.float16)
            if out is None:
                return y
            cupy.copyto(out, y)
            return out
        return erf(x) if out is None else erf(x, out=out)

    def buffer(self, shape, dtype):
        return None                   # CuPy's own memory pool reuses blocks already


_ns = None


def namespace():
    global _ns
    if _ns is None:
        _ns = _CupyNamespace()
        install_memory_hook()
    return _ns


class _AccountingHook(cupy.cuda.MemoryHook):
    """Counts device bytes as CuPy's pool hands them out and takes them back."""
    name = "gpuad-accounting"

    def malloc_postprocess(self, **kw):
        if accountant.active is not None:
            accountant.device_alloc(kw.get("mem_ptr", 0), kw["mem_size"])

    def free_postprocess(self, **kw):
        accountant.device_free(kw.get("mem_ptr", 0))


_hook = None


def install_memory_hook():
    global _hook
    if _hook is None:
        _hook = _AccountingHook()
        _hook.__enter__()             # stays installed for the process (thread-local in CuPy)


def set_compute_type(precision):
    """CuPy's GEMM compute type for torch's float32 matmul precision: "highest" is
    CuPy's default (fp32), "high"/"medium" TF32 tensor cores."""
    from cupy._core import _routines_linalg as linalg
    want = linalg.COMPUTE_TYPE_DEFAULT if precision == "highest" else linalg.COMPUTE_TYPE_TF32
    if linalg.get_compute_type(cupy.dtype(cupy.float32)) != want:
        linalg.set_compute_type(cupy.dtype(cupy.float32), want)


class CupyKernels:
    """The unfused GPU path: cuBLAS GEMM, then one elementwise pass."""
    name = "cupy"

    def __init__(self):
        self._cache = {}
        self._mode = None

    def _kernel(self, kind, activation, save_z=False):
        from ..providers import load_kernel_module
        E = load_kernel_module("cupy_elementwise")
        key = (kind, activation, save_z, cupy.cuda.Device().id)
        k = self._cache.get(key)
        if k is None:
            if kind == "fwd":
                inp, out, body = E.bias_act_source(activation, save_z)
            else:
                inp, out, body = E.dact_source(activation)
            k = cupy.ElementwiseKernel(inp, out, body, f"gpuad_{kind}_{activation or 'none'}")
            self._cache[key] = k
        return k

    def _math_mode(self):
        """cuBLAS follows gpuad.set_float32_matmul_precision: TF32 tensor cores or not,
        through CuPy's compute type (CuPy 14 has no CUBLAS_TF32_TENSOR_OP_MATH)."""
        from ..providers import get_float32_matmul_precision
        set_compute_type(get_float32_matmul_precision())

    def linear_forward(self, xp, x, w, b, activation):
        self._math_mode()
        z = cupy.matmul(x, w.T)                                   # cuBLAS: read MK + NK, write MN
        bias = b if b is not None else cupy.zeros((w.shape[0],), x.dtype)
        if activation == "gelu":
            y, zs = self._kernel("fwd", activation, True)(z, bias)   # read MN + N, write 2MN
            return y, zs
        y = self._kernel("fwd", activation)(z, bias, z)           # in place: read MN + N, write MN
        if accountant.active is not None:
            isz = x.itemsize
            M, N, K = math.prod(z.shape[:-1]), z.shape[-1], x.shape[-1]
            accountant.kernel_traffic = ("linear (cupy)", (M * K + N * K + 2 * M * N + N) * isz, 2 * M * N * isz)
        return y, None

    def linear_backward(self, xp, g, x, w, s, activation, needs, x_shape, w_shape):
        self._math_mode()
        nx, nw, nb = needs
        dz = self._kernel("bwd", activation)(g, s if s is not None else g) if activation else g
        n_out, rows = dz.shape[-1], math.prod(dz.shape[:-1])      # (explicit: -1 is ambiguous at size 0)
        dz2 = dz.reshape(rows, n_out)
        dx = cupy.matmul(dz, w) if nx else None
        dw = cupy.matmul(dz2.T, x.reshape(rows, x.shape[-1])) if nw else None
        db = dz2.sum(axis=0) if nb else None
        return dx, dw, db

    def cross_entropy_forward(self, xp, logits, target):
        return None                   # the generic xp code runs on CuPy as it is

    def cross_entropy_backward(self, xp, logits, target, lse, scale):
        return None
