"""gpuad.distributed: collectives across processes, on MPI (CPUs) and NCCL (GPUs).

One process per device, started by an MPI launcher (`mpiexec -n 2 python train.py`).
`init()` reads the MPI world (rank, size, and the local rank that picks the GPU);
the collectives then work on Tensors in place, as torch.distributed's do:
blocking by default, or non-blocking with `async_op=True`, which returns a Handle
whose wait() ends it. No collective is recorded by autograd.

Every wait has a deadline (`init(timeout=...)`, 300 s by default, or the
GPUAD_DIST_TIMEOUT variable): a rank that died, raised, or skipped a collective
turns into a DistributedError on the others instead of a silent hang. And a rank
whose Python raises past the top of the program ends the whole job (MPI_Abort)
after printing its traceback, so the others never wait for it.

Run alone (no launcher) it is a world of one, and every call still works:

>>> import gpuad
>>> import gpuad.distributed as dist
>>> world = dist.init()
>>> dist.get_rank(), dist.get_world_size()
(0, 1)
>>> t = gpuad.tensor([1.0, 2.0])
>>> dist.all_reduce(t)                    # the sum over all ranks, in place
>>> t.tolist()
[1.0, 2.0]
>>> h = dist.all_reduce(t, op="avg", async_op=True)
>>> h.wait()
True
>>> dist.destroy()
"""
from .collectives import (ReduceOp, all_gather, all_gather_object, all_reduce, barrier, broadcast, destroy,
                          get_backend, get_local_rank, get_rank, get_world_size, init, is_initialized)
from .handle import DistributedError, Handle
from .sampler import DistributedSampler

__all__ = ["init", "destroy", "is_initialized", "get_rank", "get_world_size", "get_local_rank", "get_backend",
           "all_reduce", "broadcast", "all_gather", "all_gather_object", "barrier", "ReduceOp", "Handle",
           "DistributedError", "DistributedSampler"]
