"""The MPI backend: collectives on host arrays through mpi4py (CPU processes).

Every collective is MPI's non-blocking form (Iallreduce, Ibcast, Iallgather,
Ibarrier) behind a Handle, so the blocking calls get a deadline too. Transfers go
between processes through MPI's shared memory on one machine and its network
(TCP) between machines; nothing here is a transport of its own.

Bytes moved per rank: an all-reduce of B bytes on N ranks sends and receives
about 2 (N-1)/N B (a ring, or recursive halving and doubling); a broadcast and an
all-gather B (N-1)/N and B (N-1).

Arrays MPI cannot take as they are get a contiguous host copy (staging) that is
written back when the handle completes: CuPy arrays (the pip MPICH is not
CUDA-aware), non-contiguous views, and float16/bfloat16, which MPI cannot sum:
they are summed in float32 and rounded back once.
"""
import sys

import numpy as np

from .handle import Handle

_HALF = ("float16", "bfloat16")


class MPIBackend:
    name = "mpi"

    def __init__(self, timeout):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError("gpuad.distributed: the mpi backend needs mpi4py and an MPI library: "
                              "pip install 'gpuad[distributed]' (mpi4py and MPICH, both from pip)") from e
        self.MPI = MPI
        # A communicator of our own: the user's MPI messages can never match ours.
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.timeout = timeout
        self._ops = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}

    def _handle(self, req, what, finish=None):
        return Handle(req.Test, what, self.timeout, self.rank, finish)

    def iall_reduce(self, arr, op, what):
        buf, back = _staged(arr, upcast=True)
        mpi_op = self._ops["sum" if op == "avg" else op]
        req = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=mpi_op)

        def finish():
            if op == "avg":
                buf[...] /= self.size
            back()
        return self._handle(req, what, finish)

    def ibroadcast(self, arr, src, what):
        buf, back = _staged(arr, upcast=False)
        req = self.comm.Ibcast(_bytes(buf), root=src)
        return self._handle(req, what, back)

    def iall_gather(self, out, arr, what):
        """out[r] = rank r's arr; out has a leading axis of size `size`."""
        send, _ = _staged(arr, upcast=False)
        recv, back = _staged(out, upcast=False)
        req = self.comm.Iallgather(_bytes(send), _bytes(recv))
        return self._handle(req, what, back)

    def ibarrier(self, what):
        return self._handle(self.comm.Ibarrier(), what)

    def all_gather_object(self, obj, what):
        """Every rank's picklable obj, as a list in rank order (sizes first, then the bytes)."""
        import pickle
        mine = np.frombuffer(pickle.dumps(obj), np.uint8)
        sizes = np.zeros(self.size, np.int64)
        self.iall_gather(sizes, np.array(mine.size, np.int64), what + " (sizes)").wait()
        width = int(sizes.max())
        padded = np.zeros(width, np.uint8)
        padded[:mine.size] = mine
        everyone = np.zeros((self.size, width), np.uint8)
        self.iall_gather(everyone, padded, what).wait()
        return [pickle.loads(everyone[r, :sizes[r]].tobytes()) for r in range(self.size)]

    def abort(self, code=1):
        """End every rank of the job (MPI_Abort): the launcher takes the others down."""
        sys.stderr.flush()
        self.comm.Abort(code)

    def close(self):
        self.comm.Free()


def _bytes(a):
    """The buffer as raw bytes: broadcast and gather copy, so every dtype goes."""
    return a.reshape(-1).view(np.uint8)


def _staged(arr, upcast):
    """(a buffer MPI can take, a function that writes it back into arr)."""
    host = isinstance(arr, np.ndarray)
    half = upcast and arr.dtype.name in _HALF
    if host and not half and arr.flags.c_contiguous:
        return arr, _nothing
    buf = arr.get() if not host else arr           # CuPy: device -> host, one copy
    buf = np.ascontiguousarray(buf, np.float32 if half else buf.dtype)      # always a new array here

    def back():
        if host:
            arr[...] = buf.astype(arr.dtype, copy=False)
        else:
            import cupy
            arr[...] = cupy.asarray(buf.astype(arr.dtype, copy=False))
    return buf, back


def _nothing():
    pass
