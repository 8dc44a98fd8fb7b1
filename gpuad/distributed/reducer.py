"""Gradient buckets: all-reduce gradients while backward is still running.

The Reducer packs the parameters, in reverse registration order (the order in
which backward finishes their gradients), into flat buckets of at most
bucket_bytes each. When a parameter's gradient is final (its post-accumulate
hook), it is copied into its bucket; when a bucket is full and every bucket
before it has started, its all-reduce starts, non-blocking, and backward goes on
with the layers below. Buckets start strictly in order, so every rank issues the
same collectives in the same order whatever the timing. At the end of backward
(an engine callback) the Reducer waits for every bucket, divides by the world
size, and copies the averages back into .grad: backward() returns with
synchronised gradients and the optimizer may step.

Memory: the buckets are one extra copy of the gradients, allocated once. Bytes
moved per step and rank: each gradient is copied in and out of its bucket (2 x
the gradient bytes on the host or device), plus the all-reduce's 2 (N-1)/N x on
the link.

Each step leaves an event log (`events`: time, kind, detail), which shows the
overlap: bucket k's "start" comes before "backward_end" when it overlapped.
"""
import time

import numpy as np

from ..backends import writeable
from ..errors import TraceError


class Bucket:
    """One flat buffer and the parameters (by index) whose gradients it carries."""

    def __init__(self, index, members, xp, dtype):
        self.index, self.members = index, members          # [(param index, offset, numel)]
        self.size = sum(n for _, _, n in members)
        self.flat = xp.zeros(self.size, dtype)
        self.nbytes = self.flat.nbytes
        self.handle = None
        self.seen_done = False         # its "done" event is logged


def plan_buckets(params, bucket_bytes):
    """[[param index...]...]: reverse registration order, one dtype and device per bucket,
    each at most bucket_bytes unless a single parameter is larger.

    >>> import gpuad
    >>> ps = [gpuad.zeros(100), gpuad.zeros(100), gpuad.zeros(300)]     # 400, 400, 1200 bytes
    >>> plan_buckets(ps, 1000)
    [[2], [1, 0]]
    """
    plan, cur, cur_bytes, cur_kind = [], [], 0, None
    for i in reversed(range(len(params))):
        a = params[i].data
        kind = (a.dtype, type(a))
        if cur and (kind != cur_kind or cur_bytes + a.nbytes > bucket_bytes):
            plan.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += a.nbytes
        cur_kind = kind
    if cur:
        plan.append(cur)
    return plan


class _Step:
    """What one forward/backward has done so far."""

    def __init__(self, n_params, n_buckets, pending):
        self.ready = np.zeros(n_params, bool)
        self.used = np.ones(n_params, np.int32)       # 0: not in this rank's graph (find_unused_parameters)
        self.pending = list(pending)                  # per bucket: gradients still to come
        self.next = 0                                 # the next bucket to start
        self.callback_queued = False


class Reducer:
    def __init__(self, params, names, world, bucket_bytes, find_unused, grad_as_view=False):
        from ..backends import namespace_of
        self.params, self.names, self.world = params, names, world
        self.find_unused = find_unused
        self.views = {} if grad_as_view else None      # param index -> its slice of the bucket
        self.buckets, self.where = [], {}
        for k, idx in enumerate(plan_buckets(params, bucket_bytes)):
            members, off = [], 0
            for i in idx:
                n = params[i].data.size
                members.append((i, off, n))
                off += n
            b = Bucket(k, members, namespace_of(params[idx[0]].data), params[idx[0]].data.dtype)
            for i, o, n in members:
                self.where[i] = (b, o, n)
                if self.views is not None:
                    self.views[i] = b.flat[o:o + n].reshape(params[i].data.shape)
            self.buckets.append(b)
        self.step = None
        self.synced = False            # this forward's backward has been synchronised already
        self.events = []

    def log(self, kind, detail=""):
        self.events.append((time.perf_counter(), kind, detail))

    # -- forward ---------------------------------------------------------------

    def prepare(self, sync):
        """A forward pass begins: expect one backward that synchronises (sync) or none."""
        self._drain()                   # a step that died mid-backward may have buckets in flight
        self.events = []
        self.synced = False
        self.log("forward", "sync" if sync else "no_sync")
        self.step = _Step(len(self.params), len(self.buckets), [len(b.members) for b in self.buckets]) \
            if sync else None

    def mark_unused(self, outputs):
        """find_unused_parameters: parameters the outputs do not reach are ready now (zeros)."""
        from ..graph import reachable
        from ..pytree import tree_flatten
        from ..tensor import Tensor
        if self.step is None:
            return
        leaves, _ = tree_flatten(outputs)
        seen = set(reachable([t._node for t in leaves if isinstance(t, Tensor) and t._node is not None]))
        for i, p in enumerate(self.params):
            if p._node not in seen:
                self.step.used[i] = 0
                self._ready(i, None)

    # -- backward --------------------------------------------------------------

    def on_grad(self, i, tensor):
        """Parameter i's gradient is final (its post-accumulate hook)."""
        st = self.step
        if st is None:
            if self.synced:                            # torch skips these silently; say so once a step
                self.synced = False
                import warnings
                warnings.warn(
                    f"DistributedDataParallel: {self.names[i]} received a gradient after this step's gradients "
                    f"were synchronised (a second backward() after one forward(), or a forward through "
                    f".module); such gradients stay local to each rank. Run forward() through the wrapper "
                    f"again, or accumulate under no_sync().", RuntimeWarning, stacklevel=2)
            return                                     # no_sync, or a forward without grad
        if st.ready[i]:
            raise RuntimeError(
                f"DistributedDataParallel: parameter {self.names[i]} received a gradient twice in one "
                f"backward()")
        arr = tensor.grad.data
        if getattr(arr, "_xp", None) is not None:
            raise TraceError("DistributedDataParallel cannot run inside gpuad.compile: its all-reduce "
                             "is not traced. Compile the forward alone, or train without compile.")
        if not st.callback_queued:
            from ..autograd import queue_callback
            queue_callback(self.finish)
            st.callback_queued = True
        self._ready(i, arr)

    def _ready(self, i, arr):
        st = self.step
        st.ready[i] = True
        b, off, n = self.where[i]
        if arr is None:
            b.flat[off:off + n] = 0
        elif self.views is None or arr is not self.views[i]:
            b.flat[off:off + n] = arr.reshape(-1)      # one copy of the gradient into its bucket
        st.pending[b.index] -= 1
        self.log("ready", self.names[i])
        while st.next < len(self.buckets) and st.pending[st.next] == 0:
            self._start(self.buckets[st.next])
            st.next += 1
        self._poll()

    def _start(self, b):
        b.seen_done = False
        b.handle = self.world.iall_reduce(b.flat, "sum", f"DistributedDataParallel bucket {b.index} "
                                                         f"({b.nbytes} bytes)")
        self.log("start", b.index)

    def _poll(self):
        """Test the oldest bucket in flight: MPI moves data only inside its calls."""
        for b in self.buckets:
            if b.handle is not None and not b.seen_done:
                if not b.handle.is_completed():
                    return
                b.seen_done = True
                self.log("done", b.index)

    def finish(self):
        """End of backward: wait for every bucket, average, write .grad."""
        self.log("backward_end")
        st, self.step, self.synced = self.step, None, True
        if st.next < len(self.buckets):
            missing = [self.names[i] for i in range(len(self.params)) if not st.ready[i]]
            self._drain()
            raise RuntimeError(
                f"DistributedDataParallel: these parameters received no gradient in this backward, so their "
                f"buckets were never all-reduced: {missing}. Pass find_unused_parameters=True to the "
                f"constructor if parts of the model are unused in some steps, or make sure every parameter "
                f"takes part in the loss.")
        used = None
        if self.find_unused:                           # used anywhere? (on the buckets' device: NCCL wants it there)
            from ..backends import namespace_of
            mine = namespace_of(self.buckets[0].flat).asarray(st.used)
            self.world.iall_reduce(mine, "max", "DistributedDataParallel unused-parameter map").wait()
            used = mine.get() if hasattr(mine, "get") else mine
        size = self.world.size
        for b in self.buckets:
            b.handle.wait()
            if not b.seen_done:
                self.log("done", b.index)
            b.handle = None
            b.flat /= size
            for i, off, n in b.members:
                if used is not None and not used[i]:
                    continue                                   # unused on every rank: .grad stays as it was
                self._write_grad(i, b.flat[off:off + n])
        self.log("synced")

    def _write_grad(self, i, avg):
        from ..tensor import Tensor
        p = self.params[i]
        if self.views is not None:                     # .grad becomes the bucket's slice: no copy out,
            if p.grad is None or p.grad.data is not self.views[i]:      # and the local array is freed
                p.grad = Tensor._from(self.views[i])
            return
        avg = avg.reshape(p.data.shape)
        g = p.grad
        if g is None or not writeable(g.data):
            p.grad = Tensor._from(avg.copy())
        else:
            g.data[...] = avg                                  # the averages, back in place

    def _drain(self):
        for b in self.buckets:
            if b.handle is not None:
                b.handle.wait()
                b.handle = None
