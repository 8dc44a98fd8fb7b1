"""gpuad: reverse-mode automatic differentiation that knows where its memory goes.

>>> import gpuad
>>> x = gpuad.tensor([1.0, 2.0], requires_grad=True)
>>> loss = (x.tanh() ** 2).sum()
>>> loss.backward()
>>> x.grad.shape
(2,)
"""
from .errors import quiet_float_warnings
quiet_float_warnings()                    # as torch: log(0) is -inf, silently (errors.py says why)
from .dtypes import float16, float32, float64, int32, int64, bool_, bfloat16, as_dtype
from .graph import no_grad, enable_grad, set_grad_enabled, is_grad_enabled, inference_mode, is_inference_mode_enabled
from .tensor import Tensor, tensor
from . import ops, surface
from .surface import unary, primitive  # noqa: F401  (declare and publish a primitive)
surface.build()
globals().update(surface.FUNCTIONS)       # gpuad.<name>: every public op, hand-written or generated
from .creation import (zeros, ones, empty, full, zeros_like, ones_like, full_like, arange, linspace, eye,
                       randn, rand, randint, from_numpy, randn_like, rand_like, multinomial, from_dlpack)
from .random import manual_seed, get_rng_state, set_rng_state, Generator
from . import autograd
from .gradcheck import gradcheck, gradgradcheck, GradcheckError
from . import nn, optim, distributed, utils
from .checkpoint import checkpoint, checkpoint_sequential
from . import schedule, linalg
from .serialization import save, load
from .providers import set_kernels, get_kernels, set_float32_matmul_precision, get_float32_matmul_precision
from .ops import fused_kernels  # noqa: F401  (registers the providers' kernels)
from .backends.devices import set_default_device, get_default_device
from .backends.cpu_kernels import set_num_threads, get_num_threads
from .compiler import compile, TraceError  # noqa: E402  (gpuad.compile shadows the builtin only here)
from . import func  # noqa: E402
from . import amp  # noqa: E402
from .amp import autocast  # noqa: E402
from .func import grad, value_and_grad, vjp, jvp, jacfwd, jacrev, hessian, jacobian, vmap  # noqa: E402
from .pytree import tree_flatten, tree_unflatten, tree_map  # noqa: E402

__version__ = "0.1.0"
