"""Code generation for gpuad.compile, one file per target; each renders the groups that
gpuad/compiler/passes decided.

python_replay.py   the replay itself (one straight-line Python function) and the numpy
                   executor's chunked kernel of each fused group
numba_groups.py    a Numba (LLVM) kernel per fused group on the CPU, numpy's bits
triton_groups.py   a Triton kernel per fused group on a GPU, a GEMM with its epilogue
"""
import hashlib
import importlib.util
import os
import string
import sys

from ...errors import NoTritonForm
from ...xp import CAST, NUMPY_PHASE, lookup


def digest(text):
    """The name a generated source goes by: a hash of itself."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def write_source(text, folder, prefix):
    """The path of `text` in `folder` (written there once, atomically; named by its
    digest): Triton's JIT and Numba's cache both read a kernel's source from its file."""
    path = os.path.join(folder, f"{prefix}_{digest(text)}.py")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def import_source(path, name):
    """The module in file `path`, imported under `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def expression(prim, target, operands, **extra):
    """Member `prim`'s expression for `target` ("triton", "cpu" or "math": the field of its
    declaration in gpuad/xp/vocabulary.py) over the operands' source, or raise NoTritonForm
    (that generator leaves the group to numpy) when it has none or its arity differs."""
    d = lookup(prim)
    form = getattr(d, target, None) if d is not None else None
    if not isinstance(form, str) or form in (CAST, NUMPY_PHASE):
        raise NoTritonForm(prim)
    arity = len({f for _, f, _, _ in string.Formatter().parse(form) if f not in (None, "") and f.isdigit()})
    if arity != len(operands):
        raise NoTritonForm(f"{prim} of {len(operands)} operands")
    return form.format(*operands, **extra)
