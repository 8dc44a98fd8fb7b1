"""One rank of the data-parallel tests: `mpiexec -n 2 python tests/ddp_worker.py CASE OUTDIR`.

Each rank writes what it saw to OUTDIR/rank<r>.npz; tests/test_distributed.py
checks it. Every model is float64 and starts from a different seed on each rank,
so agreement after DistributedDataParallel's construction proves the broadcast.
"""
import os
import sys
import time

import numpy as np

import gpuad
import gpuad.distributed as dist
import gpuad.nn.functional as F
from gpuad import nn

F64 = gpuad.float64
BATCH = 8


def models():
    """name -> (builder(seed), full-batch data, loss(model, data subset))."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 6))
    y = rng.standard_normal((BATCH, 3))
    ids = rng.integers(0, 11, (BATCH, 9))

    def seeded(make):
        def build(seed):
            gpuad.manual_seed(seed)
            return make()
        return build

    def regression(model, idx):
        return F.mse_loss(model(gpuad.tensor(x[idx])), gpuad.tensor(y[idx]))

    def lm(model, idx):
        logits = model(gpuad.tensor(ids[idx, :-1]))
        return F.cross_entropy(logits.reshape(-1, 11), gpuad.tensor(ids[idx, 1:].reshape(-1)))

    return {
        "mlp": (seeded(lambda: nn.MLP([6, 16, 16, 16, 3], dtype=F64)), regression),
        "resnet": (seeded(lambda: nn.ResNet(6, 16, 3, 3, dtype=F64)), regression),
        "mlp_checkpointed": (seeded(lambda: nn.MLP([6, 16, 16, 16, 3], dtype=F64, checkpoint=2)), regression),
        "gpt": (seeded(lambda: nn.GPT(11, 8, d_model=16, n_layers=2, n_heads=2, dtype=F64)), lm),
    }


def grads_of(model):
    return {n: (None if p.grad is None else p.grad.numpy().copy()) for n, p in model.named_parameters()}


def save(out, rank, **arrays):
    flat = {}
    for k, v in arrays.items():
        if isinstance(v, dict):
            for n, a in v.items():
                if a is not None:
                    flat[f"{k}/{n}"] = a
        else:
            flat[k] = np.asarray(v)
    np.savez(os.path.join(out, f"rank{rank}.npz"), **flat)


def case_grads(out, world):
    """One DDP step per model against one process on the whole batch; no_sync; an Adam step."""
    rank, size = world.rank, world.size
    result = {}
    shard = dist.DistributedSampler(BATCH, shuffle=False).indices()
    full = np.arange(BATCH)
    for name, (build, loss_fn) in models().items():
        ddp = nn.parallel.DistributedDataParallel(build(100 + rank), bucket_bytes=2048)
        result[f"{name}_params"] = {n: p.numpy().copy() for n, p in ddp.module.named_parameters()}
        loss_fn(ddp, shard).backward()
        result[f"{name}_ddp"] = grads_of(ddp.module)
        ev = ddp.events
        result[f"{name}_events"] = np.array([k for _, k, _ in ev])
        result[f"{name}_nbuckets"] = len(ddp.buckets)
        # no_sync: two local micro-steps, then a synchronised one
        ddp.module.zero_grad()
        micro = [shard, shard[::-1].copy(), shard]
        with ddp.no_sync():
            loss_fn(ddp, micro[0]).backward()
            loss_fn(ddp, micro[1]).backward()
            result[f"{name}_local"] = grads_of(ddp.module)
        loss_fn(ddp, micro[2]).backward()
        result[f"{name}_accum"] = grads_of(ddp.module)
        # gradient_as_bucket_view: the same averages, held in the buckets themselves
        view = nn.parallel.DistributedDataParallel(build(100 + rank), bucket_bytes=2048, gradient_as_bucket_view=True)
        loss_fn(view, shard).backward()
        result[f"{name}_view"] = grads_of(view.module)
        flats = [b.flat for b in view.reducer.buckets]
        result[f"{name}_view_shared"] = all(any(np.shares_memory(p.grad.data, f) for f in flats)
                                            for p in view.module.parameters())
        view.module.zero_grad(set_to_none=False)        # zeros written into the buckets; then accumulated there
        loss_fn(view, shard).backward()
        result[f"{name}_view2"] = grads_of(view.module)
        opt = gpuad.optim.Adam(ddp.parameters(), lr=1e-2)
        opt.step()
        result[f"{name}_stepped"] = {n: p.numpy().copy() for n, p in ddp.module.named_parameters()}
        if rank == 0:                                  # the single process on the whole batch
            ref = build(100)
            loss_fn(ref, full).backward()
            result[f"{name}_ref"] = grads_of(ref)
            ref.zero_grad()
            for _ in range(3):
                loss_fn(ref, full).backward()
            result[f"{name}_refaccum"] = grads_of(ref)
    save(out, rank, size=size, **result)


class _Branchy(nn.Module):
    """`extra` is used only on rank 0; `never` on no rank."""

    def __init__(self, use_extra):
        super().__init__()
        self.body = nn.Linear(6, 3, dtype=F64)
        self.extra = nn.Linear(6, 3, dtype=F64)
        self.never = nn.Linear(6, 3, dtype=F64)
        self.use_extra = use_extra

    def forward(self, x):
        y = self.body(x)
        return y + self.extra(x) if self.use_extra else y


def case_unused(out, world):
    rank = world.rank
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((BATCH, 6)), rng.standard_normal((BATCH, 3))
    shards = [np.arange(r, BATCH, world.size) for r in range(world.size)]
    gpuad.manual_seed(5)
    ddp = nn.parallel.DistributedDataParallel(_Branchy(rank == 0), find_unused_parameters=True, bucket_bytes=256)
    F.mse_loss(ddp(gpuad.tensor(x[shards[rank]])), gpuad.tensor(y[shards[rank]])).backward()
    result = {"ddp": grads_of(ddp.module)}
    if rank == 0:                      # the same average in one process: rank 0's shard with extra, rank 1's without
        gpuad.manual_seed(5)
        ref = _Branchy(True)
        losses = []
        for r, idx in enumerate(shards):
            ref.use_extra = r == 0
            losses.append(F.mse_loss(ref(gpuad.tensor(x[idx])), gpuad.tensor(y[idx])))
        (sum(losses[1:], losses[0]) / len(losses)).backward()
        result["ref"] = grads_of(ref)
    # without find_unused_parameters the unused `never` stops its bucket: a clear error
    gpuad.manual_seed(5)
    strict = nn.parallel.DistributedDataParallel(_Branchy(True))
    try:
        F.mse_loss(strict(gpuad.tensor(x[shards[rank]])), gpuad.tensor(y[shards[rank]])).backward()
        msg = ""
    except RuntimeError as e:
        msg = str(e)
    save(out, rank, error=msg, **result)


def case_collectives(out, world):
    rank, size = world.rank, world.size
    t = gpuad.tensor(np.arange(5, dtype=np.float64) + rank)
    dist.all_reduce(t)
    mx = gpuad.tensor(np.array([rank, -rank], np.int64))
    dist.all_reduce(mx, op="max")
    b = gpuad.tensor(np.full(3, float(rank)))
    h = dist.broadcast(b, src=1, async_op=True)
    h.wait()
    parts = [gpuad.zeros(2, 2, dtype=gpuad.float32) for _ in range(size)]
    dist.all_gather(parts, gpuad.full((2, 2), float(rank), dtype=gpuad.float32))
    half = gpuad.tensor(np.full(4, 1.5 + rank, np.float32), dtype=gpuad.bfloat16)
    dist.all_reduce(half, op="avg")                  # summed in float32, rounded back once
    strided = gpuad.tensor(np.arange(12, dtype=np.float64).reshape(3, 4))[:, ::2]
    dist.all_reduce(strided)
    dist.barrier()
    save(out, rank, sum=t.numpy(), max=mx.numpy(), bcast=b.numpy(),
         gather=np.stack([p.numpy() for p in parts]), half=half.float().numpy(), half_dtype=str(half.dtype),
         strided=strided.numpy(), objects=np.array(dist.all_gather_object(rank * 10)))


def case_buffers(out, world):
    """BatchNorm under DDP: rank 1 starts from other running statistics and a different
    batch; the broadcasts make every rank's statistics rank 0's, step after step."""
    from gpuad import nn
    rank = world.rank
    gpuad.manual_seed(rank)                         # rank 1 starts from other weights too
    seen = []

    class Look(nn.Module):                          # the statistics as the forward starts
        def forward(self, x):
            seen.append(net[2].running_mean.numpy().copy())
            return x
    net = nn.Sequential(Look(), nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
    net[2].running_mean.data[...] = gpuad.tensor(np.full(3, float(rank), np.float32)).data
    ddp = nn.parallel.DistributedDataParallel(net)
    after_init = net[2].running_mean.numpy().copy()
    rng = np.random.default_rng(rank)
    means = []
    for _ in range(3):
        x = gpuad.tensor(rng.standard_normal((4, 2, 5, 5)).astype(np.float32))
        ddp(x).sum().backward()
        means.append(net[2].running_mean.numpy().copy())
    with gpuad.no_grad():
        ddp(gpuad.tensor(rng.standard_normal((4, 2, 5, 5)).astype(np.float32)))   # no broadcast without gradients
    save(out, rank, after_init=after_init, means=np.stack(means), nbt=net[2].num_batches_tracked.numpy(),
         weight=net[1].weight.numpy(), last=net[2].running_mean.numpy(), seen=np.stack(seen))


def _rank1_fails(world, failure):
    """Both ranks run forward; then rank 1 calls failure() while rank 0 enters backward's
    all-reduce. The sleeps are never finished: the job must be ended for them."""
    ddp = nn.parallel.DistributedDataParallel(nn.MLP([6, 8, 3], dtype=F64))
    loss = ddp(gpuad.ones(4, 6, dtype=F64)).sum()
    if world.rank == 1:
        failure()
    loss.backward()
    time.sleep(60)


def _raise():
    raise ValueError("rank 1 fails on purpose")


def case_raise(out, world):
    """Rank 1 raises: the exception reaches the top, which aborts the job."""
    _rank1_fails(world, _raise)


def case_die(out, world):
    """Rank 1 is killed (as by the out-of-memory killer)."""
    import signal
    _rank1_fails(world, lambda: os.kill(os.getpid(), signal.SIGKILL))


def case_exit(out, world):
    """Rank 1 leaves with sys.exit(7): no exception reaches the top."""
    _rank1_fails(world, lambda: sys.exit(7))


def case_hang(out, world):
    """Rank 1 stays alive but skips the all-reduce: rank 0's deadline fires."""
    _rank1_fails(world, lambda: time.sleep(60))


def case_mismatch(out, world):
    """Rank 1 builds a wider hidden layer: construction fails on every rank, naming it."""
    width = 8 if world.rank == 0 else 9
    try:
        nn.parallel.DistributedDataParallel(nn.MLP([6, width, 3], dtype=F64))
        msg = ""
    except ValueError as e:
        msg = str(e)
    save(out, world.rank, error=msg)


def case_threads(out, world):
    """The BLAS threads each rank runs with after init()."""
    from threadpoolctl import threadpool_info
    blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    save(out, world.rank, blas=np.array(blas), local_size=world.local_size)


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}

if __name__ == "__main__":
    case, out = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else None
    world = dist.init("mpi", timeout=timeout)
    CASES[case](out, world)
    dist.destroy()
