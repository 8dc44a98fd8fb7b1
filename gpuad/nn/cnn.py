"""Convolutional-network modules with torch's names, arguments, init and state_dict keys:
convolutions, batch and group norm (running statistics as buffers), pooling,
Flatten and Identity.

>>> import gpuad
>>> from gpuad import nn
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
...                     nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
>>> net(gpuad.ones((2, 1, 8, 8))).shape
(2, 10)
>>> sorted(k for k in net.state_dict() if k.startswith("1."))
['1.bias', '1.num_batches_tracked', '1.running_mean', '1.running_var', '1.weight']
"""
import math

import numpy as np

from ..creation import ones, zeros
from ..tensor import Tensor
from ..graph import is_recomputing
from . import functional as F, spatial as S
from .modules import Module, Parameter, _uniform


class _ConvNd(Module):
    """Shared by the convolutions: weight U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's
    kaiming_uniform with a = sqrt(5)), bias the same bound; fan_in = weight.shape[1] *
    prod(kernel), torch's rule (for a transposed convolution: out_channels / groups)."""

    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 padding_mode, nd, dtype, output_padding=0):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"gpuad.nn.{type(self).__name__}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be divisible by groups ({groups})")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"gpuad.nn.{type(self).__name__}: padding_mode must be 'zeros', 'reflect', "
                             f"'replicate' or 'circular', not {padding_mode!r}")
        if self.transposed and padding_mode != "zeros":
            raise ValueError(f"gpuad.nn.{type(self).__name__}: only padding_mode='zeros' is supported, as torch")
        name = type(self).__name__
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = S._tuple(kernel_size, nd, "kernel_size", name)
        self.stride = S._tuple(stride, nd, "stride", name)
        self.padding = padding if isinstance(padding, str) else S._tuple(padding, nd, "padding", name)
        self.dilation = S._tuple(dilation, nd, "dilation", name)
        self.output_padding = S._tuple(output_padding, nd, "output_padding", name)
        self.padding_mode, self._nd = padding_mode, nd
        shape = ((in_channels, out_channels // groups) if self.transposed else
                 (out_channels, in_channels // groups)) + self.kernel_size
        fan_in = shape[1] * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        self.weight = Parameter(_uniform(shape, bound, dtype))
        self.bias = Parameter(_uniform((out_channels,), bound, dtype)) if bias else None

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}")
        if self.padding not in (0, (0,) * self._nd):
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class _Conv(_ConvNd):
    def forward(self, x):
        if self.padding_mode != "zeros":
            # torch pads with the mode first, then convolves unpadded
            pads = S._conv_padding(self.padding, self.kernel_size, self.stride, self.dilation,
                                           type(self).__name__)
            flat = tuple(p for lo_hi in reversed(pads) for p in lo_hi)
            x = F.pad(x, flat, mode=self.padding_mode)
            return S._conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups,
                                   self._nd, type(self).__name__.lower())
        return S._conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                               self._nd, type(self).__name__.lower())


class Conv1d(_Conv):
    """torch.nn.Conv1d: (N, C_in, L) -> (N, C_out, L_out)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, 1, dtype)


class Conv2d(_Conv):
    """torch.nn.Conv2d: (N, C_in, H, W) -> (N, C_out, H_out, W_out).

    >>> import gpuad
    >>> gpuad.nn.Conv2d(3, 8, 3, stride=2, padding=1)(gpuad.ones((1, 3, 32, 32))).shape
    (1, 8, 16, 16)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, 2, dtype)


class ConvTranspose2d(_ConvNd):
    """torch.nn.ConvTranspose2d: weight (C_in, C_out / groups, kh, kw)."""

    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, 2, dtype, output_padding)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


class _BatchNorm(Module):
    """torch's batch norm modules: weight ones and bias zeros (affine), running_mean zeros,
    running_var ones and num_batches_tracked 0 as buffers (track_running_stats);
    momentum None is the cumulative average 1 / num_batches_tracked."""

    dims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(ones(num_features, dtype=dtype)) if affine else None
        self.bias = Parameter(zeros(num_features, dtype=dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def forward(self, x):
        if x.ndim not in self.dims:
            raise ValueError(f"gpuad.nn.{type(self).__name__}: expected a "
                             f"{' or '.join(f'{d}D' for d in self.dims)} input, got shape {x.shape}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and not is_recomputing():
            nbt = self.num_batches_tracked.data
            nbt += 1
            if self.momentum is None:
                factor = 1.0 / nbt            # a 0-d array: compiled steps read it at each replay
        use_batch = self.training or not self.track_running_stats
        keep = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if keep else None, self.running_var if keep else None,
                            self.weight, self.bias, use_batch, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """torch.nn.BatchNorm1d over (N, C) or (N, C, L)."""
    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """torch.nn.BatchNorm2d over (N, C, H, W)."""
    dims = (4,)


class GroupNorm(Module):
    """torch.nn.GroupNorm: weight ones, bias zeros (affine)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=None):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"gpuad.nn.GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = Parameter(ones(num_channels, dtype=dtype)) if affine else None
        self.bias = Parameter(zeros(num_channels, dtype=dtype)) if affine else None

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class MaxPool2d(Module):
    """torch.nn.MaxPool2d."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                            self.return_indices)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, padding={self.padding}"


class AvgPool2d(Module):
    """torch.nn.AvgPool2d."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """torch.nn.AdaptiveAvgPool2d."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Flatten(Module):
    """torch.nn.Flatten: axes start_dim..end_dim into one."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        s, e = self.start_dim % x.ndim, self.end_dim % x.ndim
        return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])


class Identity(Module):
    """torch.nn.Identity: returns its input (any arguments are ignored)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x
