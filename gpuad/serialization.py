"""gpuad.save / gpuad.load: tensors, state_dicts and optimizer state, never pickled code.

The file is a numpy .npz archive: every array in it as its own entry, and one
entry holding the structure as JSON (dicts with their key types and order,
lists, tuples, numbers, strings, None, and references to the arrays). Loading
uses allow_pickle=False, so a file can carry data and nothing that runs.

>>> import gpuad, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "w.gpuad")
>>> gpuad.save({"w": gpuad.ones(2, requires_grad=True), "step": 3, 7: (1.5, None)}, path)
>>> back = gpuad.load(path)
>>> back["w"].tolist(), back["w"].requires_grad, back["step"], back[7]
([1.0, 1.0], True, 3, (1.5, None))
"""
import json
import os

import numpy as np

from .tensor import Tensor

_STRUCTURE = "__gpuad_structure__"
_FORMAT = 1


def save(obj, f):
    """Write obj (Tensors, numpy arrays, and dicts, lists and tuples of them, numbers,
    strings, None) to a path or a binary file object."""
    arrays = {}

    def encode(o):
        if isinstance(o, Tensor):
            key = f"a{len(arrays)}"
            arrays[key] = np.asarray(o.numpy(), order="C")      # (ascontiguousarray makes a 0-d array 1-d)
            return {"tensor": key, "requires_grad": o.requires_grad, "class": type(o).__name__,
                    "device": o.device}
        if isinstance(o, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = np.asarray(o, order="C")
            return {"ndarray": key}
        if isinstance(o, dict):
            return {"dict": [[encode(k), encode(v)] for k, v in o.items()]}
        if isinstance(o, tuple):
            return {"tuple": [encode(v) for v in o]}
        if isinstance(o, list):
            return {"list": [encode(v) for v in o]}
        if isinstance(o, np.generic):
            return {"scalar": o.item(), "dtype": o.dtype.str}
        if o is None or isinstance(o, (bool, int, float, str)):
            return {"value": o}
        raise TypeError(f"gpuad.save: cannot save a {type(o).__name__} (only tensors, arrays, numbers, strings, "
                        f"None, and dicts, lists and tuples of them: no pickled objects)")

    structure = json.dumps({"format": _FORMAT, "root": encode(obj)})
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as fh:
            np.savez(fh, **arrays, **{_STRUCTURE: np.array(structure)})
    else:
        np.savez(f, **arrays, **{_STRUCTURE: np.array(structure)})


def load(f, map_location=None):
    """Read what save() wrote; map_location ('cpu' or 'cuda') moves the tensors there."""
    with np.load(f, allow_pickle=False) as z:
        meta = json.loads(str(z[_STRUCTURE]))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"gpuad.load: unknown format {meta.get('format')!r}")
        arrays = {k: z[k] for k in z.files if k != _STRUCTURE}

    def decode(d):
        if "tensor" in d:
            from . import nn
            cls = nn.Parameter if d.get("class") == "Parameter" else Tensor
            t = object.__new__(cls)
            t.data, t._node, t.grad = arrays[d["tensor"]], None, None
            device = map_location or d.get("device", "cpu")
            if device != "cpu":
                t.data = t._to_device(device).data
            if d["requires_grad"]:
                t.requires_grad_(True)
            return t
        if "ndarray" in d:
            return arrays[d["ndarray"]]
        if "dict" in d:
            return {decode(k): decode(v) for k, v in d["dict"]}
        if "tuple" in d:
            return tuple(decode(v) for v in d["tuple"])
        if "list" in d:
            return [decode(v) for v in d["list"]]
        if "scalar" in d:
            return np.dtype(d["dtype"]).type(d["scalar"])
        return d["value"]

    return decode(meta["root"])
