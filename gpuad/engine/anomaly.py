"""Anomaly mode: backward stops at the first VJP that makes a NaN or an infinity, and
names the op and the line of the forward pass that made its node.

The forward's stack is recorded only in this mode: turning it on swaps the function
that numbers new nodes (graph.set_index_source) for one that also files the creation
stack under the node's number, and the walk's instrumentation (engine/walk.py's
_Watch, which is None when nothing is watched) checks each VJP's gradients. Turned
off, a recorded op runs the very same code as before: nothing is measured or kept.

>>> import gpuad
>>> x = gpuad.tensor([0.0], requires_grad=True)
>>> with gpuad.autograd.set_detect_anomaly(True):
...     y = gpuad.sqrt(x) * 0.0
...     try:
...         y.sum().backward()
...     except RuntimeError as e:
...         print(str(e).split(" (node")[0], "...", str(e).split(")")[1][:20])
gpuad: backward of sqrt ...  returned nan values
"""
import os
import traceback

import numpy as np

from .. import graph
from ..tensor import Tensor

_state = {"on": False, "check_nan": True}
SITES = {}                   # node number -> the user's frames where its node was made (this mode only)
KEEP = 100_000               # the newest nodes' sites kept (a long run in this mode stays bounded)
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def enabled():
    return _state["on"]


def check_nan_enabled():
    return _state["check_nan"]


def _recording_index():
    i = graph.index_source()()
    frames = traceback.StackSummary.extract(traceback.walk_stack(None), lookup_lines=False)
    user = [f for f in frames if not os.path.abspath(f.filename).startswith(_PKG)
            and not f.filename.startswith("<gpuad")]             # (gpuad's generated code)
    user.reverse()                                   # outermost first, as a traceback prints
    SITES[i] = user
    if len(SITES) > KEEP:
        del SITES[next(iter(SITES))]
    return i


def set_mode(on, check_nan=True):
    """Turn anomaly mode on or off; returns the previous (on, check_nan)."""
    prev = (_state["on"], _state["check_nan"])
    _state["on"], _state["check_nan"] = bool(on), bool(check_nan)
    graph.set_index_source(_recording_index if on else None)
    if not on:
        SITES.clear()
    return prev


def _bad(a):
    """"nan" or "inf" when the gradient holds one, else None."""
    while hasattr(a, "ns") and hasattr(a, "value"):      # a vmap's batched gradient: all examples
        a = a.value
    if a is None or not hasattr(a, "dtype") or np.dtype(a.dtype).kind not in "fc" or hasattr(a, "_xp"):
        return None                                      # (a traced value has none to check)
    host = a.get() if hasattr(a, "get") else np.asarray(a)   # a device sync: this mode only
    if np.isnan(host).any():
        return "nan"
    return "inf" if np.isinf(host).any() else None


def check(node, grads):
    """Raise at the first gradient of this VJP that holds a NaN or an infinity."""
    if not _state["check_nan"]:
        return
    for k, g in enumerate(grads):
        what = _bad(g.data if isinstance(g, Tensor) else g)      # (create_graph: recorded Tensors)
        if what is not None:
            site = SITES.get(node.index)
            where = ("; its forward ran at (most recent call last):\n" + "".join(traceback.format_list(site))
                     ) if site else "; its forward ran before anomaly mode was on, so its stack was not recorded"
            raise RuntimeError(f"gpuad: backward of {node.op.name} (node #{node.index}) returned {what} values "
                               f"in its {k}th output{where}")
