"""Neural-network modules (PyTorch names) and the functional layer F.

>>> import gpuad
>>> from gpuad import nn
>>> net = nn.MLP([2, 8, 1])
>>> sum(p.numel() for p in net.parameters())
33
"""
from . import functional
from .modules import (Module, Parameter, Linear, Sequential, MLP, ResidualBlock, ResNet, RNN, Dropout,
                      Tanh, ReLU, Sigmoid, GELU, ModuleList, ModuleDict, ParameterList, ParameterDict)
from .transformer import (Embedding, LayerNorm, RMSNorm, MultiheadAttention, CausalSelfAttention, TransformerBlock,
                          GPT)
from .cnn import (Conv1d, Conv2d, ConvTranspose2d, BatchNorm1d, BatchNorm2d, GroupNorm, MaxPool2d, AvgPool2d,
                  AdaptiveAvgPool2d, Flatten, Identity)
from .criteria import (CrossEntropyLoss, NLLLoss, BCELoss, BCEWithLogitsLoss, MSELoss, L1Loss, SmoothL1Loss,
                       HuberLoss, KLDivLoss, SiLU, LeakyReLU, ELU, Softmax, LogSoftmax, Softmin)
from . import init  # noqa: F401
from . import utils
from . import parallel
