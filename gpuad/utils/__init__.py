"""gpuad.utils: data loading (gpuad.utils.data), as torch.utils.

>>> from gpuad.utils import data
>>> data.DataLoader is not None
True
"""
from . import data  # noqa: F401
