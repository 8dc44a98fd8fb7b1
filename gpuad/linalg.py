"""gpuad.linalg: the names torch.linalg users reach for.

>>> import gpuad
>>> gpuad.linalg.vector_norm(gpuad.tensor([3.0, 4.0])).item()
5.0
"""
from .ops.composite import vector_norm, norm, matmul  # noqa: F401
