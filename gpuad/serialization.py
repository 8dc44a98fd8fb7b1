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
import contextlib
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from .errors import LoadError
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
    entries = {**arrays, _STRUCTURE: np.array(structure)}
    if not isinstance(f, (str, os.PathLike)):
        np.savez(f, **entries)
        return
    _atomic_write(os.fspath(f), lambda fh: np.savez(fh, **entries))


def _atomic_write(path, write):
    """write(file) into a temporary file beside path, flushed to disk, then renamed over
    path: a crash at any byte leaves the previous file (or none) at path, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):              # the rename itself, durable (POSIX)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


_KINDS = ("tensor", "ndarray", "dict", "tuple", "list", "scalar", "value")


def load(f, map_location=None):
    """Read what save() wrote; map_location ('cpu' or 'cuda') moves the tensors there.

    Anything wrong with the file raises gpuad.errors.LoadError naming the file and the
    reason: empty, truncated or corrupt (the archive's CRCs are checked), not a gpuad file
    (a torch.save file is recognised), written by a newer format, or saved on a device this
    machine lacks (pass map_location="cpu"). Nothing in the file is ever executed.
    """
    name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", repr(f))

    def fail(reason, detail=""):
        return LoadError(f"gpuad.load: cannot load {name!r}: {reason}" + (f" ({detail})" if detail else ""),
                         name, reason)

    if isinstance(f, (str, os.PathLike)) and os.path.isfile(f) and os.path.getsize(f) == 0:
        raise fail("the file is empty")
    try:
        with np.load(f, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise fail("not a gpuad file", "a single .npy array, not a gpuad archive")
            if _STRUCTURE not in z.files:
                torch_file = any(n.endswith("data.pkl") for n in z.zip.namelist())
                raise fail("not a gpuad file", "it looks like a torch.save file: load it with torch.load"
                           if torch_file else "no gpuad structure entry")
            meta = json.loads(str(z[_STRUCTURE]))
            arrays = {k: z[k] for k in z.files if k != _STRUCTURE}
    except (LoadError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise fail("the file is truncated or corrupt", str(e)) from None
    except Exception as e:  # noqa: BLE001  (a damaged archive fails in zipfile's and numpy's many ways)
        raise fail("the file is corrupt or not a gpuad file", f"{type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or "root" not in meta or not isinstance(meta.get("format"), int):
        raise fail("the file is corrupt", "its structure entry has no format and root")
    if meta["format"] > _FORMAT:
        raise fail(f"it was written by a newer gpuad (format {meta['format']}; this one reads up to {_FORMAT})")
    if meta["format"] < 1:
        raise fail("the file is corrupt", f"unknown format {meta['format']!r}")

    def decode(d):
        if not isinstance(d, dict) or len(d.keys() & set(_KINDS)) != 1:
            raise ValueError(f"an entry {str(d)[:60]} of no known kind")
        if "tensor" in d:
            from . import nn
            cls = nn.Parameter if d.get("class") == "Parameter" else Tensor
            arr = arrays[d["tensor"]]
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biufc" and arr.dtype.name != "bfloat16":
                raise ValueError(f"array {d['tensor']} is not numeric")
            t = object.__new__(cls)
            t.data, t._node, t.grad = arr, None, None
            device = map_location or d.get("device", "cpu")
            if device != "cpu":
                t.data = _to(t, device, fail).data
            if d.get("requires_grad"):
                t.requires_grad_(True)
            return t
        if "ndarray" in d:
            return arrays[d["ndarray"]]
        if "dict" in d:
            return {_hashable(decode(k)): decode(v) for k, v in d["dict"]}
        if "tuple" in d:
            return tuple(decode(v) for v in d["tuple"])
        if "list" in d:
            return [decode(v) for v in d["list"]]
        if "scalar" in d:
            return np.dtype(d["dtype"]).type(d["scalar"])
        if d["value"] is not None and not isinstance(d["value"], (bool, int, float, str)):
            raise ValueError(f"a value of type {type(d['value']).__name__}")
        return d["value"]

    try:
        return decode(meta["root"])
    except LoadError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
        raise fail("the file is corrupt", f"its structure does not decode: {type(e).__name__}: {e}") from None


def _hashable(k):
    hash(k)                                   # a list as a dict key: TypeError, reported as corrupt
    return k


def _to(t, device, fail):
    try:
        return t._to_device(device)
    except (ImportError, RuntimeError, OSError) as e:
        raise fail(f"it holds tensors saved on {device!r}, which this machine cannot use; pass "
                   f"map_location='cpu' to load them on the CPU", f"{type(e).__name__}: {e}") from None
