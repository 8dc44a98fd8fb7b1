"""Devices: 'cpu' (numpy) and 'cuda' (CuPy), and moving arrays between them.

`import gpuad` never imports CuPy; the first request for 'cuda' does, and
says why it cannot be had if it cannot.

>>> from gpuad.backends.devices import cuda_available
>>> ok, why = cuda_available()
>>> isinstance(ok, bool) and isinstance(why, str)
True
"""
import numpy as np

from ..errors import DeviceOutOfMemory

_status = None


def cuda_available():
    """(True, '') when CuPy imports and can allocate on a GPU, else (False, reason)."""
    global _status
    if _status is None:
        try:
            import cupy
        except Exception as e:   # ImportError, or a broken CUDA install
            _status = (False, f"CuPy is not installed or failed to import ({type(e).__name__}: {e}); "
                              f"install gpuad[gpu-cuda12] or gpuad[gpu-cuda13] (whichever CUDA the machine has) on a CUDA machine")
        else:
            try:
                ok = bool(cupy.is_available())
                if ok:
                    cupy.zeros(1, cupy.float32) + 1      # it can allocate and launch, not only count devices
            except Exception as e:
                ok, err = False, e
            else:
                err = None
            _status = (True, "") if ok else (False, "CuPy imports but finds no usable CUDA device"
                                             + (f" ({err})" if err else ""))
    return _status


def require_cuda():
    ok, why = cuda_available()
    if not ok:
        raise RuntimeError(f"gpuad: device 'cuda' is unavailable: {why}")
    import cupy
    return cupy


_default = "cpu"


def set_default_device(device):
    """Where tensors made from host data go when no device is named (torch's
    set_default_device): gpuad.tensor, the factories, and modules' parameters.

    >>> from gpuad.backends.devices import set_default_device, get_default_device
    >>> set_default_device("cpu"); get_default_device()
    'cpu'
    """
    global _default
    kind = "cpu" if device is None else str(device).split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"gpuad.set_default_device: unknown device {device!r} (use 'cpu' or 'cuda')")
    if kind == "cuda":
        require_cuda()
    _default = "cpu" if device is None else str(device)


def get_default_device():
    return _default


def on_device(arr, device=None):
    """arr on `device`, or, when None, host data on the default device (device arrays stay)."""
    if device is None:
        if _default == "cpu" or not isinstance(arr, (np.ndarray, np.generic)):
            return arr
        device = _default
    return to_device(arr, device)


def to_device(arr, device):
    """Copy `arr` to 'cpu' or 'cuda' (a no-op when it is already there)."""
    if getattr(arr, "_xp", None) is not None:
        return arr              # a gpuad.compile Tracer: the replay moves the real array
    kind = str(device).split(":")[0]
    if kind == "cpu":
        if type(arr) is np.ndarray:
            return arr
        return arr.get() if hasattr(arr, "get") else np.asarray(arr)
    if kind == "cuda":
        cupy = require_cuda()
        return cupy.asarray(arr)
    raise ValueError(f"gpuad: unknown device {device!r} (use 'cpu' or 'cuda')")


def is_out_of_memory(err):
    return type(err).__name__ == "OutOfMemoryError"        # cupy.cuda.memory.OutOfMemoryError


def out_of_memory(err, op):
    """Translate CuPy's out-of-memory error into one that helps."""
    import re
    asked = re.search(r"allocating ([\d,]+) bytes", str(err))
    live = free = None
    try:
        import cupy
        live = cupy.get_default_memory_pool().used_bytes()
        free, _ = cupy.cuda.runtime.memGetInfo()
    except Exception:
        pass
    parts = [f"gpuad.{op}: CUDA out of memory"]
    if asked:
        parts.append(f"asked for {asked.group(1)} bytes")
    if live is not None:
        parts.append(f"{live:,} bytes are live in CuPy's pool and {free:,} free on the device")
    return DeviceOutOfMemory(", ".join(parts) + ". Free tensors you no longer need, lower the batch, or trade "
                             "compute for memory with gpuad.checkpoint_sequential(layers, x, budget_bytes=...).")
