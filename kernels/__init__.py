"""gpuad.kernels: Triton kernels (kernel code only; host wrappers live in gpuad/backends).

linear.py        fused linear forward (GEMM + bias + activation epilogue) and backward
softmax_xent.py  fused softmax cross-entropy forward and backward
cupy_elementwise.py  CUDA snippets for CuPy's ElementwiseKernel (the unfused CuPy provider)
"""
