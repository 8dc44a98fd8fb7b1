"""Functional transforms, as JAX's and torch.func's: functions in, functions out.

reverse.py       grad, value_and_grad, vjp: reverse mode on a function
forward_mode.py  jvp: forward mode, on gpuad.compile's trace of the function
jacobians.py     jacfwd, jacrev, hessian
chain.py         the Jacobian of a chain of maps, in the order the matrix-chain program picks
stateless.py     functional_call: a module run with given parameters (for vmap(grad(...)))
vmap.py          vmap: a function of one example run on a batch (the batching rules: gpuad/xp/batching.py)

>>> import gpuad
>>> gpuad.func.grad(lambda x: (x * x).sum())(gpuad.tensor([1.0, 2.0])).tolist()
[2.0, 4.0]
"""
from .chain import chain_plan, jacobian
from .forward_mode import jvp
from .jacobians import hessian, jacfwd, jacrev
from .reverse import grad, value_and_grad, vjp
from .stateless import functional_call
from .vmap import vmap

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "jacfwd", "jacrev", "hessian", "jacobian", "chain_plan", "vmap", "functional_call"]
