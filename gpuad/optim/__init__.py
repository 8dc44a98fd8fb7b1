"""Optimizers as PyTorch defines them: SGD (momentum, Nesterov, weight decay), Adam,
AdamW; parameter groups; state_dict()/load_state_dict() that resume bitwise.

Updates happen in place on the parameters' arrays, never recorded. A gradient
with weight decay is formed once per parameter (read 2N, write N).

>>> import gpuad
>>> w = gpuad.tensor([1.0, -2.0], requires_grad=True)
>>> opt = gpuad.optim.SGD([w], lr=0.1)
>>> (w * w).sum().backward(); opt.step(); opt.zero_grad()
>>> w.tolist()
[0.800000011920929, -1.600000023841858]
"""
import math

import numpy as np

from ..backends import cpu_kernels, namespace_of
from ..graph import enable_grad
from ..tensor import Tensor
from . import lr_scheduler  # noqa: F401  (gpuad.optim.lr_scheduler, as torch)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]


class Optimizer:
    """Parameter groups, per-parameter state, zero_grad, state_dict and load_state_dict.

    params: Tensors, or dicts {"params": [...], "lr": ...} whose own settings
    override the defaults (torch's param groups).
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}                       # parameter -> its state (dict of arrays and numbers)
        params = list(params)
        if not params:
            raise ValueError(f"gpuad.optim.{type(self).__name__}: got an empty parameter list")
        for group in (params if isinstance(params[0], dict) else [{"params": params}]):
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add a group of parameters with its own settings (unset ones take the defaults)."""
        group = dict(group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(ps):
            if not isinstance(p, Tensor):
                raise TypeError(f"gpuad.optim.{type(self).__name__}: parameter {i} is a "
                                f"{type(p).__name__}, not a Tensor")
            # a frozen parameter (requires_grad=False) is accepted and skipped while it has no
            # gradient, as torch does: fine-tuning freezes layers after building the optimizer
            if not p.is_leaf:
                raise ValueError(f"gpuad.optim.{type(self).__name__}: parameter {i} is not a leaf tensor")
            if id(p) in seen:
                raise ValueError(f"gpuad.optim.{type(self).__name__}: a parameter appears in two groups")
            seen.add(id(p))
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"gpuad.optim.{type(self).__name__}: unknown settings {sorted(unknown)}")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        group["params"] = ps
        self._check(group)
        self.param_groups.append(group)

    def _check(self, group):
        pass

    @property
    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def step(self, closure=None):
        """One update of every parameter with a gradient; closure re-evaluates the loss."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.data, p.grad.data, group, self.state.setdefault(p, {}))
        return loss

    @staticmethod
    def _decayed(w, g, weight_decay):
        """g + weight_decay * w (L2 weight decay, folded into the gradient)."""
        return g + weight_decay * w if weight_decay else g

    # -- state -------------------------------------------------------------------

    def state_dict(self):
        """{"state": {parameter index: its state, arrays copied}, "param_groups": settings
        with parameter indices}, as torch; gpuad.save() writes it without pickle."""
        index = {id(p): i for i, p in enumerate(self.params)}
        state = {index[id(p)]: {k: (Tensor._from(v.copy()) if hasattr(v, "shape") else v) for k, v in st.items()}
                 for p, st in self.state.items() if id(p) in index}
        groups = [dict({k: v for k, v in g.items() if k != "params"}, params=[index[id(p)] for p in g["params"]])
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore what state_dict() gave: settings and state, copied in, so a resumed run
        continues exactly as the uninterrupted one."""
        who = f"gpuad.optim.{type(self).__name__}.load_state_dict"
        groups = state_dict["param_groups"]
        mine = [len(g["params"]) for g in self.param_groups]
        theirs = [len(g["params"]) for g in groups]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{who}: loaded state dict has a different number of parameter groups "
                             f"({len(groups)}, this optimizer {len(self.param_groups)})")
        for i, (a, b) in enumerate(zip(theirs, mine)):
            if a != b:
                raise ValueError(f"{who}: loaded state dict contains a parameter group that doesn't match the "
                                 f"size of optimizer's group: group {i} has {a} parameters, this optimizer's {b}")
        params = self.params
        # every state array against its parameter, before anything changes: a state from
        # another model would otherwise load and fail in step() with numpy's broadcast error
        for i, st in state_dict["state"].items():
            if not 0 <= int(i) < len(params):
                raise ValueError(f"{who}: state for parameter {i}, but this optimizer has {len(params)} parameters")
            p = params[int(i)]
            for k, v in st.items():
                shape = tuple(getattr(v, "shape", ()))
                if shape and shape != tuple(p.shape):
                    raise ValueError(f"{who}: state {k!r} of parameter {i} has shape {shape}, but parameter {i} "
                                     f"has shape {tuple(p.shape)}: the state comes from another model")
        self.state = {}
        for i, st in state_dict["state"].items():
            p = params[int(i)]
            # each array on its parameter's device (a state saved on the CPU resumes on a GPU)
            xp = namespace_of(p.data)
            self.state[p] = {k: (xp.array(xp.asarray(v.data if isinstance(v, Tensor) else v),
                                          dtype=np.float64 if k == "step" else p.data.dtype)
                                 if hasattr(v, "shape") else v) for k, v in st.items()}
        for mine, theirs in zip(self.param_groups, groups):
            for k, v in theirs.items():
                if k != "params":
                    mine[k] = tuple(v) if isinstance(v, list) else v

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """p -= lr * d, with d = g (+ weight_decay p), through momentum if set (PyTorch's rule)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize))

    def _check(self, g):
        if g["lr"] < 0 or g["momentum"] < 0 or g["weight_decay"] < 0:
            raise ValueError(f"gpuad.optim.SGD: lr, momentum and weight_decay must be >= 0 "
                             f"(got {g['lr']}, {g['momentum']}, {g['weight_decay']})")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("gpuad.optim.SGD: nesterov needs momentum > 0 and dampening = 0")

    def _update(self, p, w, g, group, st):
        if group["maximize"]:
            g = -g
        d = self._decayed(w, g, group["weight_decay"])
        momentum = group["momentum"]
        if momentum:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = d.copy()
            else:
                buf *= momentum
                buf += (1.0 - group["dampening"]) * d
            d = d + momentum * buf if group["nesterov"] else buf
        w -= group["lr"] * d


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction and L2 weight_decay."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def _check(self, g):
        b1, b2 = g["betas"]
        if g["lr"] < 0 or g["eps"] < 0 or not (0 <= b1 < 1 and 0 <= b2 < 1) or g["weight_decay"] < 0:
            raise ValueError(f"gpuad.optim.{type(self).__name__}: need lr >= 0, eps >= 0, betas in [0, 1), "
                             f"weight_decay >= 0; got lr={g['lr']}, eps={g['eps']}, betas={g['betas']}, "
                             f"weight_decay={g['weight_decay']}")

    def _update(self, p, w, g, group, st):
        if group["maximize"]:
            g = -g
        self._adam(w, self._decayed(w, g, group["weight_decay"]), group, st)

    @staticmethod
    def _adam(w, g, group, st):
        b1, b2 = group["betas"]
        if not st:
            # the step count is a 0-d float64 array (torch keeps a tensor too), updated in
            # place, so a compiled step reads it at each replay instead of baking it in
            st.update(step=np.zeros_like(w, np.float64, shape=()), exp_avg=np.zeros_like(w), exp_avg_sq=np.zeros_like(w))
            if group["amsgrad"]:
                st["max_exp_avg_sq"] = np.zeros_like(w)
        elif not hasattr(st["step"], "shape"):
            st["step"] = namespace_of(w).asarray(np.array(st["step"], np.float64))   # saved as a Python int
        st["step"] += 1
        m, v, t = st["exp_avg"], st["exp_avg_sq"], st["step"]
        if not group["amsgrad"] and cpu_kernels.adam_applies(w, g, m, v):
            # one pass on the CPU kernels (numpy's bits) instead of numpy's ~13
            cpu_kernels.adam(w, g, m, v, b1, b2, *Adam._corrections(group, t, w.dtype), group["eps"])
            return
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        if group["amsgrad"]:
            np.maximum(st["max_exp_avg_sq"], v, out=st["max_exp_avg_sq"])
            v = st["max_exp_avg_sq"]
        step_size, sqrt_c = Adam._corrections(group, t, w.dtype)
        denom = (v ** 0.5) / sqrt_c + group["eps"]
        w -= step_size * (m / denom)


    @staticmethod
    def _corrections(group, t, dtype):
        """The bias corrections lr / (1 - b1^t) and sqrt(1 - b2^t), in float64, then to the
        parameter's dtype: what a Python float does."""
        b1, b2 = group["betas"]
        return (group["lr"] / (1 - b1 ** t)).astype(dtype), np.sqrt(1 - b2 ** t).astype(dtype)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay,
    then the Adam step on the plain gradient (PyTorch's AdamW, default decay 0.01)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)

    def _update(self, p, w, g, group, st):
        if group["maximize"]:
            g = -g
        w *= 1 - group["lr"] * group["weight_decay"]
        self._adam(w, g, group, st)
