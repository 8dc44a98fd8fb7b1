"""Code generation for gpuad.compile, one file per target; each renders the groups that
gpuad/compiler/passes decided.

python_replay.py   the replay itself (one straight-line Python function) and the numpy
                   executor's chunked kernel of each fused group
numba_groups.py    a Numba (LLVM) kernel per fused group on the CPU, numpy's bits
triton_groups.py   a Triton kernel per fused group on a GPU, a GEMM with its epilogue
"""
