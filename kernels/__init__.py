"""gpuad.kernels: Triton and Numba kernels (kernel code only; host wrappers live in gpuad/backends).

linear.py        fused linear forward (GEMM + bias + activation epilogue) and backward
softmax_xent.py  fused softmax cross-entropy forward and backward
conv.py          2-D convolution as implicit GEMM: forward, dgrad, wgrad (no im2col buffer)
cupy_elementwise.py  CUDA snippets for CuPy's ElementwiseKernel (the unfused CuPy provider)
cpu_math.py      Numba CPU kernels: float32 erf, exact GELU and its gradient, numpy's pairwise sum
"""
