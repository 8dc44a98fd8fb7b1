"""Exact byte accounting: live and peak bytes, allocations, and the traffic ledger.

What is counted: every buffer the backend allocates for a tensor (op outputs,
which are what nodes save, and gradients), once per base buffer: a view costs
nothing. A buffer counts from its allocation until it is really released (a
weakref on the buffer's owner fires), not when some node lets go of it.

Traffic (model): each op adds the bytes it reads and writes through memory,
from its registry entry: every input read once, the output written once,
plus each temporary a composite numpy expression writes and reads back.

Accounting costs about 8 us per recorded op (`python -m bench overhead`):
nothing beside an op on large arrays, more than the op itself on tiny ones. So
it is off until asked for:
`gpuad.memory.track()` turns it on for a region, `gpuad.memory.enable()`
(or GPUAD_ACCOUNTING=1) for the whole program.

On CuPy the same interface is fed by CuPy's allocator (see backends/cupy_backend).
"""
import weakref

import numpy as np

from .. import config

_ndarray = np.ndarray


def owner_of(arr):
    """The object whose death frees arr's memory: the base ndarray, or the
    exporter of the buffer a pooled array views."""
    b = arr
    while True:
        nb = b.base
        if nb is None:
            return b
        if isinstance(nb, memoryview):
            return nb.obj
        if not isinstance(nb, _ndarray) and not hasattr(nb, "base"):
            return nb
        b = nb


class OpStats:
    __slots__ = ("calls", "allocations", "allocated_bytes", "bytes_read", "bytes_written")

    def __init__(self):
        self.calls = self.allocations = self.allocated_bytes = self.bytes_read = self.bytes_written = 0

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


class Accountant:
    """Global counters; the hot path checks `active` (None when accounting is off)."""

    def __init__(self, counts=()):
        self.active = None
        self.counts = counts          # array types counted besides numpy's and CuPy's (the planner's)
        self.live_bytes = 0
        self.peak_bytes = 0
        self.allocations = 0
        self.allocated_bytes = 0      # cumulative, never decreases
        self.bytes_read = 0
        self.bytes_written = 0
        self.by_op = {}
        # Activations: buffers allocated by the forward pass or a checkpoint's
        # recompute (not gradients): what checkpointing trades for time.
        self.activation_bytes = 0
        self.activation_peak = 0
        self.timeline = None          # list of (phase, op, live_bytes) while recording
        # Device memory, fed by the CuPy allocator hook (backends/cupy_backend.py).
        self.device_live_bytes = 0
        self.device_peak_bytes = 0
        # A fused kernel reports its own bytes moved here, replacing the op's model.
        self.kernel_traffic = None
        self.phase = "forward"
        self._refs = {}               # id(owner) -> (weakref, nbytes)
        self._device = {}             # device pointer -> bytes, for blocks allocated while counting
        self._depth = 0               # enable() calls and open track() regions
        if config.accounting_at_import() and not counts:
            self.enable()

    # -- switching -------------------------------------------------------------

    def enable(self):
        self._depth += 1
        self.active = self

    def disable(self):
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self.active = None

    # -- events ----------------------------------------------------------------

    def device_alloc(self, ptr, n):
        """CuPy's pool handed out n bytes at ptr. ptr 0 is a failed allocation (CuPy
        reports those too, before raising out of memory): nothing was allocated."""
        if not ptr:
            return
        self._device[ptr] = n
        self.device_live_bytes += n
        if self.device_live_bytes > self.device_peak_bytes:
            self.device_peak_bytes = self.device_live_bytes

    def device_free(self, ptr):
        """The block at ptr went back to the pool; one allocated before accounting
        started was never counted, so it is not subtracted either."""
        n = self._device.pop(ptr, None)
        if n is not None:
            self.device_live_bytes -= n

    def alloc(self, arr, op, activation=None):
        """Count arr's buffer if it is new; returns the bytes added (0 for a view).

        activation: whether it is an activation (what checkpointing trades for
        time); by default, whatever an op allocates outside backward is.
        Host and device (CuPy) arrays alike, by their bytes: the model the planner
        predicts. (On a GPU the allocator hook also counts every block CuPy hands out,
        temporaries inside kernels and pool rounding included: device_live_bytes and
        device_peak_bytes.)
        """
        if type(arr) is not _ndarray and not isinstance(arr, _ndarray) and \
                not type(arr).__module__.startswith("cupy") and not isinstance(arr, self.counts):
            return 0
        owner = owner_of(arr)
        key = id(owner)
        if key in self._refs:
            return 0
        n = getattr(owner, "nbytes", None)
        if n is None:
            n = arr.nbytes
        try:
            ref = weakref.ref(owner, self._make_release(key))
        except TypeError:             # an owner without weakrefs: count it as never freed
            ref = None
        if activation is None:
            activation = self.phase != "backward"
        self._refs[key] = (ref, n, activation)
        self.live_bytes += n
        self.allocations += 1
        self.allocated_bytes += n
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
        if activation:
            self.activation_bytes += n
            if self.activation_bytes > self.activation_peak:
                self.activation_peak = self.activation_bytes
        s = self._op(op)
        s.allocations += 1
        s.allocated_bytes += n
        return n

    def adopt(self, arr, activation=False):
        """Count arr's buffer from now on as already live (it is in live_bytes): its
        release subtracts it. The planner's twins of saved buffers come in this way."""
        owner = owner_of(arr)
        key = id(owner)
        if key not in self._refs:
            self._refs[key] = (weakref.ref(owner, self._make_release(key)), owner.nbytes, activation)

    def reclassify(self, arr, activation):
        """Count arr's (tracked) buffer as an activation or not from now on: a primitive's
        output that its own code allocated as workspace (counting()) becomes the
        activation it is once the op returns it."""
        key = id(owner_of(arr))
        entry = self._refs.get(key)
        if entry is None or entry[2] == activation:
            return
        self._refs[key] = (entry[0], entry[1], activation)
        self.activation_bytes += entry[1] if activation else -entry[1]
        if self.activation_bytes > self.activation_peak:
            self.activation_peak = self.activation_bytes

    def _make_release(self, key):
        def release(_ref, key=key, refs=self._refs):
            entry = refs.pop(key, None)
            if entry is not None:
                self.live_bytes -= entry[1]
                if entry[2]:
                    self.activation_bytes -= entry[1]
        return release

    def traffic(self, op, read, written):
        k = self.kernel_traffic
        if k is not None:             # the fused kernel's own count replaces the model
            self.kernel_traffic = None
            op, read, written = k
        self.bytes_read += read
        self.bytes_written += written
        s = self._op(op)
        s.calls += 1
        s.bytes_read += read
        s.bytes_written += written

    def mark(self, op):
        """A timeline point: live bytes after `op`."""
        if self.timeline is not None:
            self.timeline.append((self.phase, op, self.live_bytes))

    def _op(self, name):
        s = self.by_op.get(name)
        if s is None:
            s = self.by_op[name] = OpStats()
        return s

    # -- reading -----------------------------------------------------------------

    def snapshot(self):
        return {"live_bytes": self.live_bytes, "peak_bytes": self.peak_bytes, "allocations": self.allocations,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "activation_bytes": self.activation_bytes, "activation_peak_bytes": self.activation_peak,
                "device_live_bytes": self.device_live_bytes, "device_peak_bytes": self.device_peak_bytes}

    def is_tracked(self, arr):
        return id(owner_of(arr)) in self._refs


accountant = Accountant()


class _Counting:
    """xp, counting each new buffer a call returns as live until it is released: for a
    primitive whose forward makes large temporaries (convolution's im2col columns), so
    the peak, measured and planned alike, includes them and not only its output. They
    are workspace, not activations (what checkpointing trades away): the one returned
    as the op's output is reclassified by account_forward."""

    def __init__(self, xp, op, acct):
        self._xp, self._op, self._acct = xp, op, acct

    def __getattr__(self, name):
        f = getattr(self._xp, name)
        if not callable(f) or name == "reshape":
            # reshape is a view in the planner's model (abstract arrays have no strides); the
            # copy numpy and CuPy make when reshaping a non-contiguous view (a cropped
            # gradient, a flipped kernel) is left out on every backend alike
            return f
        acct, op = self._acct, self._op

        def counted(*args, **kwargs):
            r = f(*args, **kwargs)
            if hasattr(r, "nbytes") and hasattr(r, "base") and owner_of(r) is r and \
                    not any(r is a for a in args):
                acct.alloc(r, op, activation=False)     # workspace, until returned as the output
            return r
        return counted


def counting(xp, op):
    """xp whose calls count their new buffers while accounting is on (the real count or
    the planner's), else xp itself. Recording namespaces (create_graph, a trace) are
    passed through: what they make is counted where it is made.

    >>> import numpy as np, gpuad
    >>> from gpuad.backends import numpy_ns
    >>> with gpuad.memory.track() as m:
    ...     _ = counting(numpy_ns, "example").ones(1000)
    >>> m.stats()["peak_bytes"] >= 8000
    True
    """
    acct = accountant.active
    if acct is None or isinstance(xp, _Counting) or getattr(xp, "name", None) in ("tensor", "trace"):
        return xp
    return _Counting(xp, op, acct)
