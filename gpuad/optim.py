"""Optimizers: SGD (momentum, weight decay, Nesterov) and Adam, as PyTorch defines them.

Updates happen in place on the parameters' arrays, never recorded.

>>> import gpuad
>>> w = gpuad.tensor([1.0, -2.0], requires_grad=True)
>>> opt = gpuad.optim.SGD([w], lr=0.1)
>>> (w * w).sum().backward(); opt.step(); opt.zero_grad()
>>> w.tolist()
[0.800000011920929, -1.600000023841858]
"""
import math

from .tensor import Tensor


class Optimizer:
    def __init__(self, params, defaults):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"gpuad.optim.{type(self).__name__}: got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"gpuad.optim.{type(self).__name__}: parameter {i} is a "
                                f"{type(p).__name__}, not a Tensor")
            if not p.requires_grad:
                raise ValueError(f"gpuad.optim.{type(self).__name__}: parameter {i} (shape {p.shape}) does "
                                 f"not require grad, so it would never be updated; pass only trainable tensors")
            if not p.is_leaf:
                raise ValueError(f"gpuad.optim.{type(self).__name__}: parameter {i} is not a leaf tensor")
        self.defaults = defaults
        self.state = {}

    def _grads(self, weight_decay):
        """(parameter, its array, its gradient plus weight_decay * parameter) for each one with a gradient."""
        for p in self.params:
            if p.grad is None:
                continue
            w, g = p.data, p.grad.data
            yield p, w, (g + weight_decay * w if weight_decay else g)

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data[...] = 0


class SGD(Optimizer):
    """p -= lr * d, with d = g (+ weight_decay p), through momentum if set (PyTorch's rule)."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"gpuad.optim.SGD: lr, momentum and weight_decay must be >= 0 "
                             f"(got {lr}, {momentum}, {weight_decay})")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("gpuad.optim.SGD: nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def step(self):
        for p, w, d in self._grads(self.weight_decay):
            if self.momentum:
                buf = self.state.get(id(p))
                if buf is None:
                    buf = d.copy()
                    self.state[id(p)] = buf
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * d
                d = d + self.momentum * buf if self.nesterov else buf
            w -= self.lr * d


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction and L2 weight_decay."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"gpuad.optim.Adam: need lr >= 0, eps >= 0, betas in [0, 1); got "
                             f"lr={lr}, eps={eps}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay

    def step(self):
        b1, b2 = self.betas
        for p, w, g in self._grads(self.weight_decay):
            st = self.state.get(id(p))
            if st is None:
                st = self.state[id(p)] = {"step": 0, "m": g * 0, "v": g * 0}
            st["step"] += 1
            m, v, t = st["m"], st["v"], st["step"]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            step_size = self.lr / (1 - b1 ** t)
            denom = (v ** 0.5) / math.sqrt(1 - b2 ** t) + self.eps
            w -= step_size * (m / denom)
