"""gradcheck: the engine's VJP against central finite differences, in float64.

For a random cotangent u on the output and a random direction v on each
input, it compares <VJP(u), v> with (<u, f(x + eps v)> - <u, f(x - eps v)>) / 2 eps.
One projection per input checks the whole Jacobian in two forward passes.

>>> import gpuad
>>> gpuad.gradcheck(lambda x, y: (x * y).sin(), (gpuad.randn(3, 2), gpuad.randn(2)))
True
"""
import numpy as np

from .backends import namespace_of

from . import autograd
from .graph import no_grad
from .tensor import Tensor
from .errors import GradcheckError


def _op_name(f, out):
    node = out._node
    if node is not None and node.op is not None:
        return node.op.name
    return getattr(f, "__name__", repr(f))


def gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0, raise_exception=True):
    """Check f's gradients at `inputs` (Tensors or arrays; float inputs are made float64).

    Raises GradcheckError naming the op, the input and both numbers on a
    mismatch (or returns False with raise_exception=False).
    """
    rng = np.random.default_rng(seed)
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    xs = []
    for x in inputs:
        arr = x.data if isinstance(x, Tensor) else np.asarray(x)
        if arr.dtype.kind == "f":                 # float64 on the input's device (host data: the default)
            xs.append(Tensor(arr.astype(np.float64), requires_grad=True))
        else:
            xs.append(x if isinstance(x, Tensor) else Tensor(arr))
    diff = [i for i, x in enumerate(xs) if x.requires_grad]
    out = f(*xs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gpuad.gradcheck: f must return a Tensor, got {type(out).__name__}")
    u = rng.standard_normal(out.shape)
    if out._node is None:          # f ignores its inputs: the VJP is zero, and so must be the differences
        grads = [None] * len(diff)
    else:
        grads = autograd.grad(out, [xs[i] for i in diff], grad_outputs=Tensor(u.astype(out.dtype), device=out.device),
                              allow_unused=True)
    name = _op_name(f, out)
    for i, g in zip(diff, grads):
        v = rng.standard_normal(xs[i].shape)
        analytic = float(np.sum(g.numpy() * v)) if g is not None else 0.0
        base = xs[i].data
        step = namespace_of(base).asarray(eps * v)          # the direction, on the input's device

        def probe(sign):
            shifted = [Tensor._from(base + step if sign > 0 else base - step) if j == i else xs[j]
                       for j in range(len(xs))]
            with no_grad():
                return float(np.sum(u * f(*shifted).numpy()))

        numeric = (probe(+1) - probe(-1)) / (2 * eps)
        if not abs(analytic - numeric) <= atol + rtol * abs(numeric):
            msg = (f"gpuad.gradcheck: gradient of {name} w.r.t. input {i} (shape {xs[i].shape}) is wrong: "
                   f"VJP gives {analytic:.10g}, finite differences give {numeric:.10g}")
            if raise_exception:
                raise GradcheckError(msg)
            return False
    return True


def gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0, raise_exception=True):
    """gradcheck of the VJP itself: x -> VJP_f(x)(u) for a fixed random u,
    differentiated through the recorded backward pass (create_graph=True).

    >>> import gpuad
    >>> gpuad.gradgradcheck(lambda x: x.tanh() * x, (gpuad.randn(3),))
    True
    """
    from .graph import enable_grad
    from .ops import composite as C

    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    rng = np.random.default_rng(seed + 1)
    def as_float64(x):
        arr = x.data if isinstance(x, Tensor) else np.asarray(x)
        return Tensor(arr.astype(np.float64)) if arr.dtype.kind == "f" else x
    probe_inputs = [as_float64(x) for x in inputs]
    with enable_grad():
        out = f(*probe_inputs)
    u = Tensor(rng.standard_normal(out.shape), device=out.device)

    def vjp_of_f(*xs):
        with enable_grad():
            xs = [x if not isinstance(x, Tensor) or x.requires_grad or x.dtype.kind != "f"
                  else x.detach().requires_grad_() for x in xs]
            diff = [x for x in xs if isinstance(x, Tensor) and x.requires_grad]
            out = f(*xs)
            if out._node is None:
                return C.concat([C.reshape(x * 0.0, (-1,)) for x in diff])
            grads = autograd.grad(out, diff, grad_outputs=u, create_graph=True, allow_unused=True)
            return C.concat([C.reshape(g if g is not None else x * 0.0, (-1,))
                               for g, x in zip(grads, diff)])

    vjp_of_f.__name__ = f"vjp of {getattr(f, '__name__', 'f')}"
    return gradcheck(vjp_of_f, inputs, eps=eps, atol=atol, rtol=rtol, seed=seed, raise_exception=raise_exception)
