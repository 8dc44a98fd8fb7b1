"""The NCCL backend: collectives on CuPy arrays through cupy.cuda.nccl (one GPU per rank).

Each collective runs on a stream of its own, after an event recorded on the
compute stream: the gradients it reads are final there, and the compute stream
runs on (the backward pass goes on while a bucket is all-reduced: the overlap
that data parallelism lives on). wait() polls the collective's done event with a
deadline, then orders the compute stream after it.

The NCCL unique id travels over MPI when mpi4py is there (one launcher for the
whole job). Without MPI only a one-rank world can start, which still runs every
code path: init, buckets, all-reduce (gpu-check's smoke test).

Bytes moved per rank: as MPI's (an all-reduce of B bytes sends and receives about
2 (N-1)/N B), but over NVLink or InfiniBand, by the GPU's copy engines and SMs.
"""
from .handle import Handle


def _nccl():
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        raise ImportError("gpuad.distributed: the nccl backend needs CuPy on a CUDA machine "
                          "(pip install 'gpuad[gpu-cuda12]' or 'gpuad[gpu-cuda13]')") from e
    if not getattr(nccl, "available", True) or not hasattr(nccl, "NcclCommunicator"):
        raise ImportError("gpuad.distributed: this CuPy was built without NCCL (cupy.cuda.nccl.available "
                          "is False); install NCCL (the nvidia-nccl wheel) or use backend='mpi'")
    return nccl


class NCCLBackend:
    name = "nccl"

    def __init__(self, timeout, control=None):
        """control: an MPIBackend that carries the unique id and Python objects, or None (one rank)."""
        import cupy
        self.cp, self.nccl = cupy, _nccl()
        self.control, self.timeout = control, timeout
        if control is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            self.rank, self.size = control.rank, control.size
            self.local_rank, self.local_size = control.local_rank, control.local_size
        n_dev = cupy.cuda.runtime.getDeviceCount()
        if n_dev == 0:
            raise RuntimeError("gpuad.distributed: backend='nccl' but no CUDA device is visible")
        self.device = cupy.cuda.Device(self.local_rank % n_dev)
        self.device.use()
        uid = self.nccl.get_unique_id() if self.rank == 0 else None
        if control is not None:
            uid = control.comm.bcast(uid, root=0)
        self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        n = self.nccl
        self._ops = {"sum": n.NCCL_SUM, "prod": n.NCCL_PROD, "max": n.NCCL_MAX, "min": n.NCCL_MIN}
        self._types = {"float16": n.NCCL_FLOAT16, "float32": n.NCCL_FLOAT32, "float64": n.NCCL_FLOAT64,
                       "int32": n.NCCL_INT32, "int64": n.NCCL_INT64, "int8": n.NCCL_INT8, "uint8": n.NCCL_UINT8}
        if hasattr(n, "NCCL_BFLOAT16"):
            self._types["bfloat16"] = n.NCCL_BFLOAT16

    def _device_array(self, arr):
        if not isinstance(arr, self.cp.ndarray):
            raise TypeError("gpuad.distributed: the nccl backend works on CUDA tensors; move it with .cuda() "
                            "or init(backend='mpi') for CPU tensors")
        if not arr.flags.c_contiguous:
            raise ValueError("gpuad.distributed: the nccl backend needs a contiguous tensor (call .contiguous())")
        return arr

    def _launch(self, what, fn, finish=None):
        """Run fn(stream pointer) on the comm stream after the compute stream's work so far."""
        ready = self.cp.cuda.get_current_stream().record()
        self.stream.wait_event(ready)
        fn(self.stream.ptr)
        end = self.stream.record()

        def done():
            self.cp.cuda.get_current_stream().wait_event(end)      # later compute sees the result
            if finish is not None:
                finish()
        return Handle(lambda: end.done, what, self.timeout, self.rank, done)     # Event.done queries the GPU

    def iall_reduce(self, arr, op, what):
        arr = self._device_array(arr)
        kind = self._types.get(arr.dtype.name)
        if kind is None:
            raise TypeError(f"gpuad.distributed: NCCL cannot reduce {arr.dtype}")
        nccl_op = self._ops["sum" if op == "avg" else op]
        size = self.size

        def finish():
            if op == "avg":
                arr[...] /= size
        return self._launch(what, lambda s: self.comm.allReduce(arr.data.ptr, arr.data.ptr, arr.size, kind,
                                                                nccl_op, s), finish)

    def ibroadcast(self, arr, src, what):
        arr = self._device_array(arr)
        return self._launch(what, lambda s: self.comm.bcast(arr.data.ptr, arr.nbytes, self.nccl.NCCL_UINT8, src, s))

    def iall_gather(self, out, arr, what):
        out, arr = self._device_array(out), self._device_array(arr)
        return self._launch(what, lambda s: self.comm.allGather(arr.data.ptr, out.data.ptr, arr.nbytes,
                                                                self.nccl.NCCL_UINT8, s))

    def ibarrier(self, what):
        one = self.cp.zeros(1, self.cp.float32)
        handle = self.iall_reduce(one, "sum", what)
        handle.keep = one           # NCCL writes into it on the comm stream until the handle is done
        return handle

    def all_gather_object(self, obj, what):
        if self.control is None:
            return [obj]
        return self.control.all_gather_object(obj, what)

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            if self.control is not None:
                self.control.abort(code)
            raise SystemExit(code)

    def close(self):
        self.comm.destroy()
        if self.control is not None:
            self.control.close()
