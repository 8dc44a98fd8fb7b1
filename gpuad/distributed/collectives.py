"""The world (init, rank, size) and the collectives on Tensors; gpuad.distributed's face
re-exports them (its docstring has the example).

>>> from gpuad.distributed import collectives
>>> collectives.is_initialized()
False
"""
import os
import sys

from .. import config

DEFAULT_TIMEOUT = 300.0

_world = None


class ReduceOp:
    """torch's names for the reductions; plain strings work too."""
    SUM, AVG, PRODUCT, MAX, MIN = "sum", "avg", "prod", "max", "min"


_OPS = ("sum", "avg", "prod", "max", "min")


def init(backend="auto", timeout=None):
    """Join the MPI world; returns the backend object (rank, size, local_rank, name).

    backend: "mpi" (host arrays over mpi4py), "nccl" (CuPy arrays over NCCL, the
    unique id sent over MPI, or a world of one without it), or "auto": nccl on a
    machine with a CUDA device, mpi otherwise.
    """
    global _world
    if _world is not None:
        raise RuntimeError("gpuad.distributed.init: already initialised; call destroy() first")
    if backend not in ("auto", "mpi", "nccl"):
        raise ValueError(f"gpuad.distributed.init: backend must be 'auto', 'mpi' or 'nccl', not {backend!r}")
    if timeout is None:
        timeout = config.dist_timeout(DEFAULT_TIMEOUT)
    if backend == "auto":
        from ..backends.devices import cuda_available
        backend = "nccl" if cuda_available()[0] else "mpi"
    from .mpi import MPIBackend
    if backend == "mpi":
        _world = MPIBackend(timeout)
    else:
        from .nccl import NCCLBackend
        try:
            control = MPIBackend(timeout)
        except ImportError:
            control = None                  # no mpi4py: a world of one
        _world = NCCLBackend(timeout, control)
    if _world.size > 1:
        _abort_on_uncaught_exception(_world)
    _share_cores(_world)
    return _world


THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _share_cores(world):
    """Ranks on one machine split its cores: BLAS threads = the CPU kernels' threads =
    cores // ranks here.

    Two ranks with two spinning OpenBLAS threads each on two cores oversubscribe them
    (the GPT demo's 100 steps took 79 s against 3.8 s, by hand on 2026-11-29). torchrun
    sets OMP_NUM_THREADS=1 for the same reason. A thread count the user set in the
    environment is left alone.
    """
    if world.local_size <= 1 or config.any_set(THREAD_VARS):
        return
    threads = max(1, (os.cpu_count() or 1) // world.local_size)
    from ..backends.cpu_kernels import set_num_threads
    set_num_threads(threads)                # the CPU kernels' threads (and BLAS's, with threadpoolctl)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import warnings
        warnings.warn(f"gpuad.distributed: {world.local_size} ranks share this machine; set "
                      f"OPENBLAS_NUM_THREADS={threads} (or pip install threadpoolctl) or BLAS threads "
                      f"will oversubscribe the cores", RuntimeWarning, stacklevel=3)
        return
    threadpool_limits(threads)


_previous_hook = None


def _abort_on_uncaught_exception(world):
    """An uncaught exception on one rank ends every rank (as `python -m mpi4py` does)."""
    global _previous_hook
    previous = _previous_hook = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.write(f"gpuad.distributed: rank {world.rank} of {world.size} raised {kind.__name__}; "
                         f"aborting every rank of the job\n")
        world.abort(1)
    sys.excepthook = hook


def require_world():
    if _world is None:
        raise RuntimeError("gpuad.distributed: call gpuad.distributed.init() first")
    return _world


def is_initialized():
    return _world is not None


def get_rank():
    return require_world().rank


def get_world_size():
    return require_world().size


def get_local_rank():
    """This process's rank among those on its machine: the GPU it uses."""
    return require_world().local_rank


def get_backend():
    return require_world().name


def destroy():
    """Leave the world (torch's destroy_process_group); init() may be called again."""
    global _world, _previous_hook
    if _world is not None:
        _world.close()
        _world = None
    if _previous_hook is not None:
        sys.excepthook, _previous_hook = _previous_hook, None


def _array(t, who):
    from ..tensor import Tensor
    if not isinstance(t, Tensor):
        raise TypeError(f"gpuad.distributed.{who}: expected a Tensor, got {type(t).__name__}")
    return t.data


def _finish(handle, async_op):
    if async_op:
        return handle
    handle.wait()
    return None


def all_reduce(tensor, op="sum", async_op=False):
    """Reduce `tensor` over all ranks, in place (sum, avg, prod, max or min)."""
    if op not in _OPS:
        raise ValueError(f"gpuad.distributed.all_reduce: op must be one of {_OPS}, not {op!r}")
    a = _array(tensor, "all_reduce")
    w = require_world()
    return _finish(w.iall_reduce(a, op, f"all_reduce({op}) of {a.nbytes} bytes"), async_op)


def broadcast(tensor, src=0, async_op=False):
    """Copy rank src's `tensor` into every rank's, in place."""
    a = _array(tensor, "broadcast")
    w = require_world()
    if not 0 <= src < w.size:
        raise ValueError(f"gpuad.distributed.broadcast: src={src} but the world has {w.size} ranks")
    return _finish(w.ibroadcast(a, src, f"broadcast of {a.nbytes} bytes from rank {src}"), async_op)


def all_gather(tensor_list, tensor, async_op=False):
    """tensor_list[r] = rank r's `tensor`, on every rank (torch's all_gather)."""
    a = _array(tensor, "all_gather")
    w = require_world()
    if len(tensor_list) != w.size:
        raise ValueError(f"gpuad.distributed.all_gather: tensor_list has {len(tensor_list)} entries "
                         f"for {w.size} ranks")
    for r, t in enumerate(tensor_list):
        o = _array(t, "all_gather")
        if o.shape != a.shape or o.dtype != a.dtype:
            raise ValueError(f"gpuad.distributed.all_gather: tensor_list[{r}] is {o.dtype}{list(o.shape)}, "
                             f"the input is {a.dtype}{list(a.shape)}")
    from ..backends import namespace_of
    xp = namespace_of(a)
    out = xp.empty((w.size,) + a.shape, a.dtype)

    def scatter():
        for r, t in enumerate(tensor_list):
            t.data[...] = out[r]
    return _finish(w.iall_gather(out, a, f"all_gather of {a.nbytes} bytes").then(scatter), async_op)


def barrier(async_op=False):
    """Wait until every rank has reached this call."""
    return _finish(require_world().ibarrier("barrier"), async_op)


def all_gather_object(obj):
    """Every rank's picklable obj, as a list in rank order."""
    return require_world().all_gather_object(obj, "all_gather_object")
