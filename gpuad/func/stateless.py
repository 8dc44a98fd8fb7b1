"""functional_call: run a module with other tensors in place of its parameters and buffers
(torch.func.functional_call), so a transform can take them as arguments:
per-example gradients are vmap(grad(loss), in_axes=(None, 0, 0)) of a loss that
calls the module through it.

>>> import gpuad
>>> lin = gpuad.nn.Linear(2, 1)
>>> w = {"weight": gpuad.ones(1, 2), "bias": gpuad.zeros(1)}
>>> gpuad.func.functional_call(lin, w, (gpuad.tensor([[1.0, 2.0]]),)).tolist()
[[3.0]]
"""
import contextlib


def _owner(module, name):
    *path, leaf = name.split(".")
    mod = module
    for part in path:
        sub = getattr(mod, "_modules", {}).get(part)
        if sub is None:
            raise KeyError(f"gpuad.func.functional_call: {type(module).__name__} has no submodule {part!r} "
                           f"(in {name!r})")
        mod = sub
    return mod, leaf


@contextlib.contextmanager
def _swapped(module, tensors, strict):
    known = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise KeyError(f"gpuad.func.functional_call: unexpected keys {unknown} for "
                       f"{type(module).__name__} (its parameters and buffers: {sorted(known)})")
    if strict and set(tensors) != known:
        raise KeyError(f"gpuad.func.functional_call: strict=True and missing keys "
                       f"{sorted(known - set(tensors))}")
    saved = []
    try:
        for name, t in tensors.items():
            mod, leaf = _owner(module, name)
            saved.append((mod, leaf, mod.__dict__[leaf]))
            object.__setattr__(mod, leaf, t)        # read by forward; the registration is untouched
        yield
    finally:
        for mod, leaf, old in reversed(saved):
            object.__setattr__(mod, leaf, old)


def functional_call(module, parameter_and_buffer_dicts, args=(), kwargs=None, *, strict=False):
    """module(*args, **kwargs) with the named tensors in place of its parameters and
    buffers (a dict, or a tuple of dicts), restored afterwards; names as named_parameters
    gives them ("0.weight"). Names not given keep the module's own tensors."""
    dicts = parameter_and_buffer_dicts
    if isinstance(dicts, dict):
        dicts = (dicts,)
    tensors = {}
    for d in dicts:
        overlap = set(d) & set(tensors)
        if overlap:
            raise ValueError(f"gpuad.func.functional_call: {sorted(overlap)} given twice")
        tensors.update(d)
    if not isinstance(args, tuple):
        args = (args,)
    with _swapped(module, tensors, strict):
        return module(*args, **(kwargs or {}))
