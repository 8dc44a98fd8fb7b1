"""Data parallelism on two ranks: each case runs `mpiexec -n 2 tests/ddp_worker.py CASE` once.

The references are one process on the whole batch (float64, 1e-12), computed by
rank 0 from the same initial parameters. Fault cases check that a failing rank
ends the job with a clear message well within its deadline.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from gpuad.distributed import launch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
HAVE_MPI = launch.mpiexec_path() is not None
if not HAVE_MPI and os.environ.get("CI"):
    raise RuntimeError("CI installs the distributed extra (mpi4py, MPICH): mpiexec must be there")
pytestmark = pytest.mark.skipif(not HAVE_MPI, reason="no MPI: pip install 'gpuad[distributed]'")

MODELS = ["mlp", "resnet", "gpt", "mlp_checkpointed"]


def launch_case(case, tmp, timeout=60, deadline=None):
    argv = [sys.executable, WORKER, case, str(tmp)] + ([str(deadline)] if deadline else [])
    t0 = time.perf_counter()
    r = launch.run(2, argv, timeout=timeout)
    return r, time.perf_counter() - t0


def ranks(tmp):
    return [dict(np.load(os.path.join(tmp, f"rank{r}.npz"))) for r in range(2)]


def ok_case(case, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(case)
    r, _ = launch_case(case, tmp)
    assert r.returncode == 0, f"{case} failed:\n{r.stdout}\n{r.stderr}"
    return ranks(tmp)


@pytest.fixture(scope="module")
def grads(tmp_path_factory):
    return ok_case("grads", tmp_path_factory)


@pytest.fixture(scope="module")
def grads_again(tmp_path_factory):
    return ok_case("grads", tmp_path_factory)


def _group(d, prefix):
    return {k.split("/", 1)[1]: v for k, v in d.items() if k.startswith(prefix + "/")}


@pytest.mark.parametrize("model", MODELS)
def test_ddp_gradients_equal_one_process_on_the_full_batch(grads, model):
    r0, r1 = grads
    ref = _group(r0, f"{model}_ref")
    assert ref
    for rank in (r0, r1):
        ddp = _group(rank, f"{model}_ddp")
        assert sorted(ddp) == sorted(ref)
        for n in ref:
            np.testing.assert_allclose(ddp[n], ref[n], rtol=0, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("model", MODELS)
def test_gradient_as_bucket_view(grads, model):
    r0, r1 = grads
    ref = _group(r0, f"{model}_ref")
    for rank in (r0, r1):
        assert bool(rank[f"{model}_view_shared"])           # every .grad lives in a bucket
        for key in ("view", "view2"):
            got = _group(rank, f"{model}_{key}")
            for n in ref:
                np.testing.assert_allclose(got[n], ref[n], rtol=0, atol=1e-12, err_msg=f"{key} {n}")


@pytest.mark.parametrize("model", MODELS)
def test_construction_broadcasts_rank0_parameters(grads, model):
    r0, r1 = grads
    p0, p1 = _group(r0, f"{model}_params"), _group(r1, f"{model}_params")
    for n in p0:                        # rank 1 was built from another seed
        np.testing.assert_array_equal(p0[n], p1[n])
    s0, s1 = _group(r0, f"{model}_stepped"), _group(r1, f"{model}_stepped")
    for n in s0:                        # equal gradients, equal Adam steps
        np.testing.assert_array_equal(s0[n], s1[n])


@pytest.mark.parametrize("model", MODELS)
def test_no_sync_accumulates_locally_then_synchronises_the_sum(grads, model):
    r0, r1 = grads
    ref = _group(r0, f"{model}_refaccum")
    local0, local1 = _group(r0, f"{model}_local"), _group(r1, f"{model}_local")
    assert any(not np.allclose(local0[n], local1[n]) for n in local0)     # no communication under no_sync
    for rank in (r0, r1):
        acc = _group(rank, f"{model}_accum")
        for n in ref:
            np.testing.assert_allclose(acc[n], ref[n], rtol=0, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("model", MODELS)
def test_buckets_start_during_backward(grads, model):
    for rank in grads:
        ev = list(rank[f"{model}_events"])
        assert int(rank[f"{model}_nbuckets"]) >= 2
        end = ev.index("backward_end")
        first = ev.index("start")
        assert first < end, ev
        assert "ready" in ev[first:end], ev          # backward still finished gradients after it
        assert ev.count("start") == int(rank[f"{model}_nbuckets"]) and ev[-1] == "synced"


def test_ddp_is_bitwise_reproducible(grads, grads_again):
    for a, b in zip(grads, grads_again):
        assert sorted(a) == sorted(b)
        for k in a:
            if not k.endswith("_events"):
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_unused_parameters(tmp_path_factory):
    r0, r1 = ok_case("unused", tmp_path_factory)
    ref = _group(r0, "ref")
    for rank in (r0, r1):
        ddp = _group(rank, "ddp")
        assert "never.weight" not in ddp and "never.bias" not in ddp      # unused everywhere: .grad stays None
        assert sorted(ddp) == sorted(ref)
        for n in ref:                   # extra: used on rank 0 only, averaged as one process would
            np.testing.assert_allclose(ddp[n], ref[n], rtol=0, atol=1e-12, err_msg=n)
        msg = str(rank["error"])
        assert "never.weight" in msg and "find_unused_parameters=True" in msg


def test_buffers_are_broadcast_at_construction_and_before_each_forward(tmp_path_factory):
    r0, r1 = ok_case("buffers", tmp_path_factory)
    np.testing.assert_array_equal(r1["after_init"], np.zeros(3))         # rank 0's, not rank 1's ones
    np.testing.assert_array_equal(r1["weight"], r0["weight"])
    # every forward with gradients starts from rank 0's statistics (rank 0's value after
    # its previous step), though each rank then updates them with its own batch
    assert not np.array_equal(r1["means"][0], r0["means"][0])           # different batches
    np.testing.assert_array_equal(r1["seen"][:3], np.concatenate([np.zeros((1, 3)), r0["means"][:2]]))
    # the no_grad forward took no broadcast: it starts from rank 1's own last update
    np.testing.assert_array_equal(r1["seen"][3], r1["means"][2])
    np.testing.assert_array_equal(r0["nbt"], r1["nbt"])
    assert int(r0["nbt"]) == 4
    # the no_grad forward took no broadcast: rank 1's last update is its own
    assert not np.array_equal(r1["last"], r0["last"])


def test_collectives(tmp_path_factory):
    r0, r1 = ok_case("collectives", tmp_path_factory)
    for rank in (r0, r1):
        np.testing.assert_array_equal(rank["sum"], 2 * np.arange(5) + 1)
        np.testing.assert_array_equal(rank["max"], [1, 0])
        np.testing.assert_array_equal(rank["bcast"], [1.0, 1.0, 1.0])
        np.testing.assert_array_equal(rank["gather"], np.stack([np.zeros((2, 2)), np.ones((2, 2))]))
        np.testing.assert_array_equal(rank["half"], [2.0] * 4)
        assert str(rank["half_dtype"]) == "bfloat16"
        np.testing.assert_array_equal(rank["strided"], 2 * np.arange(12.0).reshape(3, 4)[:, ::2])
        np.testing.assert_array_equal(rank["objects"], [0, 10])


def test_mismatched_parameters_are_named_on_every_rank(tmp_path_factory):
    for rank in ok_case("mismatch", tmp_path_factory):
        msg = str(rank["error"])
        assert "'0.weight' differs across ranks" in msg and "(8, 6)" in msg and "(9, 6)" in msg


@pytest.mark.parametrize("case,expect", [
    ("raise", "rank 1 of 2 raised ValueError; aborting every rank"),
    ("die", "Killed (signal 9)"),          # the launcher's word: rank 1 is gone, the others are ended
    ("exit", "did not complete within 3 s"),   # rank 1 waits in MPI_Finalize: rank 0's deadline ends it
    ("hang", "did not complete within 3 s"),
])
def test_a_failing_rank_ends_the_job(tmp_path, case, expect):
    try:
        r, took = launch_case(case, tmp_path, timeout=40, deadline=3)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the job hung for 40 s")
    assert r.returncode != 0
    assert took < 20, took             # the workers would sleep 60 s if nobody ended them
    assert expect in r.stderr + r.stdout, r.stderr + r.stdout


@pytest.mark.parametrize("user_threads", [None, "2"])
def test_ranks_on_one_machine_split_its_cores(tmp_path, user_threads):
    env = {v: None for v in launch.ONE_THREAD}
    env["OPENBLAS_NUM_THREADS"] = user_threads
    r = launch.run(2, [sys.executable, WORKER, "threads", str(tmp_path)], timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    want = max(1, os.cpu_count() // 2) if user_threads is None else int(user_threads)
    for rank in ranks(tmp_path):
        assert int(rank["local_size"]) == 2
        assert len(rank["blas"]) >= 1 and all(int(n) == want for n in rank["blas"]), (rank["blas"], want)


def test_demo_trains_data_parallel():
    r = launch.run(2, [sys.executable, "-m", "gpuad.demo", "mlp", "--ddp", "--steps", "120"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert "data parallel over 2 ranks, 128 of each batch's rows per rank" in r.stdout
    curve = [float(w.split(":")[1]) for w in r.stdout.split("loss")[1].split("(")[0].split()]
    assert curve[-1] < curve[0] / 10
    assert r.stdout.count("mlp     loss") == 1                  # rank 0 alone prints


# --- one process (a world of one, no launcher) -----------------------------------------

@pytest.fixture
def world():
    import gpuad.distributed as dist
    w = dist.init("mpi")
    yield w
    dist.destroy()


def test_world_of_one_and_its_errors(world):
    import gpuad
    import gpuad.distributed as dist
    assert (dist.get_rank(), dist.get_world_size(), dist.get_backend()) == (0, 1, "mpi")
    with pytest.raises(RuntimeError, match="already initialised"):
        dist.init()
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(gpuad.ones(2), op="mean")
    with pytest.raises(ValueError, match="src=1 but the world has 1 ranks"):
        dist.broadcast(gpuad.ones(2), src=1)
    with pytest.raises(ValueError, match="tensor_list has 2 entries for 1 ranks"):
        dist.all_gather([gpuad.ones(2), gpuad.ones(2)], gpuad.ones(2))
    with pytest.raises(TypeError, match="expected a Tensor"):
        dist.all_reduce(np.ones(2))
    out = [gpuad.zeros(3)]
    dist.all_gather(out, gpuad.arange(3.0))
    np.testing.assert_array_equal(out[0].numpy(), [0.0, 1.0, 2.0])
    assert dist.barrier(async_op=True).wait()


def test_collectives_need_init():
    import gpuad
    import gpuad.distributed as dist
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="call gpuad.distributed.init"):
        dist.all_reduce(gpuad.ones(2))
    with pytest.raises(ValueError, match="backend must be"):
        dist.init("gloo")


def test_handle_deadline_and_then():
    from gpuad.distributed.handle import DistributedError, Handle
    seen = []
    polls = iter([False, False, True])
    h = Handle(lambda: next(polls), "x", timeout=5, rank=0, finish=lambda: seen.append("a")).then(
        lambda: seen.append("b"))
    assert h.wait() and seen == ["a", "b"]
    h.then(lambda: seen.append("c"))              # already complete: at once
    assert seen == ["a", "b", "c"]
    stuck = Handle(lambda: False, "all_reduce of 8 bytes", timeout=0.05, rank=3)
    t0 = time.perf_counter()
    with pytest.raises(DistributedError, match="all_reduce of 8 bytes on rank 3 did not complete within 0.05 s"):
        stuck.wait()
    assert time.perf_counter() - t0 < 1


def test_buckets_follow_reverse_registration_order_and_split_by_dtype():
    import gpuad
    from gpuad.distributed.reducer import plan_buckets
    ps = [gpuad.zeros(10), gpuad.zeros(10), gpuad.zeros(10, dtype=gpuad.float64), gpuad.zeros(5), gpuad.zeros(500)]
    assert plan_buckets(ps, 100) == [[4], [3], [2], [1, 0]]         # 500 floats alone; a dtype change cuts
    assert plan_buckets(ps, 1 << 20) == [[4, 3], [2], [1, 0]]
    assert plan_buckets(ps[:2], 1) == [[1], [0]]                    # never an empty bucket


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (8, 2, False), (2, 4, False)])
def test_sampler_shards_are_disjoint_and_reshuffled_per_epoch(n, replicas, drop_last):
    from gpuad.distributed import DistributedSampler
    shards = [DistributedSampler(n, replicas, r, seed=7, drop_last=drop_last) for r in range(replicas)]
    got = np.concatenate([s.indices() for s in shards])
    assert len({len(s) for s in shards}) == 1 and len(got) == sum(len(s) for s in shards)
    if drop_last:
        assert len(set(got.tolist())) == len(got) == (n // replicas) * replicas
    else:
        assert set(got.tolist()) == set(range(n))                  # all covered; padding repeats the head
    before = [s.indices() for s in shards]
    for s in shards:
        s.set_epoch(1)
    assert any(not np.array_equal(a, s.indices()) for a, s in zip(before, shards)) or n <= 2
    ordered = DistributedSampler(n, replicas, 0, shuffle=False, drop_last=drop_last).indices()
    np.testing.assert_array_equal(ordered, np.arange(n if not drop_last else (n // replicas) * replicas)
                                  [0::replicas] if n >= replicas else [0])
    with pytest.raises(ValueError, match="rank 3 is not in"):
        DistributedSampler(n, 3, 3)


def test_gradients_after_the_synchronisation_are_local_and_said_so(world):
    import warnings
    import gpuad
    from gpuad import nn
    ddp = nn.parallel.DistributedDataParallel(nn.MLP([3, 4, 1], dtype=gpuad.float64))
    x = gpuad.ones(2, 3, dtype=gpuad.float64)
    loss = ddp(x).sum()
    loss.backward(retain_graph=True)
    with pytest.warns(RuntimeWarning, match="after this step's gradients were synchronised"):
        loss.backward()                       # torch would not all-reduce these either, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ddp.module(x).sum().backward()        # once a step is enough
        with ddp.no_sync():
            ddp(x).sum().backward()           # asked for: no warning
        ddp(x).sum().backward()


def test_ddp_inside_compile_fails_loudly(world):
    import gpuad
    from gpuad import nn
    ddp = nn.parallel.DistributedDataParallel(nn.MLP([3, 4, 1]))
    x = gpuad.ones(2, 3)

    @gpuad.compile
    def step():
        ddp(x).sum().backward()
    with pytest.raises(gpuad.TraceError, match="DistributedDataParallel cannot run inside gpuad.compile"):
        step()


def test_queue_callback_outside_backward():
    import gpuad
    with pytest.raises(RuntimeError, match="no backward"):
        gpuad.autograd.queue_callback(lambda: None)


# --- the NCCL backend's host logic, with stand-ins for CuPy and NCCL (no GPU here) ------

class _DevArray(np.ndarray):
    """A stand-in CuPy array: numpy memory with CuPy's `.data.ptr`."""

    @property
    def data(self):
        from types import SimpleNamespace
        return SimpleNamespace(ptr=self.ctypes.data)


class _Event:
    def __init__(self, log, name):
        self.log, self.name, self.polls = log, name, 0

    @property
    def done(self):                      # complete at the second query, as a kernel still running would be
        self.polls += 1
        return self.polls > 1


class _Stream:
    def __init__(self, log, name):
        self.log, self.name, self.ptr = log, name, id(self)

    def record(self):
        self.log.append(("record", self.name))
        return _Event(self.log, self.name)

    def wait_event(self, ev):
        self.log.append(("wait", self.name, ev.name))


def _fake_cupy(log):
    from types import ModuleType, SimpleNamespace
    nccl = ModuleType("cupy.cuda.nccl")
    for i, name in enumerate(["NCCL_SUM", "NCCL_PROD", "NCCL_MAX", "NCCL_MIN", "NCCL_FLOAT16", "NCCL_FLOAT32",
                              "NCCL_FLOAT64", "NCCL_INT32", "NCCL_INT64", "NCCL_INT8", "NCCL_UINT8"]):
        setattr(nccl, name, name)
    nccl.available = True
    nccl.get_unique_id = lambda: (1, 2, 3)

    class Comm:
        def __init__(self, size, uid, rank):
            log.append(("comm", size, uid, rank))

        def allReduce(self, send, recv, count, kind, op, stream):
            log.append(("allReduce", send == recv, count, kind, op, stream))

        def bcast(self, buf, count, kind, root, stream):
            log.append(("bcast", count, kind, root, stream))

        def destroy(self):
            log.append(("destroy",))
    nccl.NcclCommunicator = Comm
    current, comm_streams = _Stream(log, "compute"), []

    def stream(non_blocking=False):
        comm_streams.append(_Stream(log, "comm"))
        return comm_streams[-1]
    cuda = ModuleType("cupy.cuda")
    cuda.nccl, cuda.Stream, cuda.get_current_stream = nccl, stream, lambda: current
    cuda.runtime = SimpleNamespace(getDeviceCount=lambda: 2)
    cuda.Device = lambda i: SimpleNamespace(use=lambda: log.append(("device", i)))
    cupy = ModuleType("cupy")
    cupy.cuda, cupy.ndarray = cuda, _DevArray
    return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.nccl": nccl}


@pytest.mark.cpu_only("brings its own CuPy fake to record the NCCL calls")
def test_nccl_backend_orders_streams_and_calls_nccl(monkeypatch):
    import gpuad
    import gpuad.distributed as dist
    log = []
    for name, mod in _fake_cupy(log).items():
        monkeypatch.setitem(sys.modules, name, mod)
    world = dist.init("nccl")
    try:
        assert (world.name, world.size, world.rank) == ("nccl", 1, 0)
        assert ("device", 0) in log and ("comm", 1, (1, 2, 3), 0) in log
        a = np.arange(6, dtype=np.float32).view(_DevArray)
        t = gpuad.Tensor._from(a)
        log.clear()
        h = dist.all_reduce(t, op="avg", async_op=True)
        # the collective waits for the compute stream's work, runs on its own stream, and records its end
        assert log[:2] == [("record", "compute"), ("wait", "comm", "compute")]
        assert log[2][:5] == ("allReduce", True, 6, "NCCL_FLOAT32", "NCCL_SUM") and log[3] == ("record", "comm")
        assert not h.is_completed()                       # the first query: still running
        assert h.wait() and log[-1] == ("wait", "compute", "comm")       # later compute follows it
        np.testing.assert_array_equal(a, np.arange(6) / 1)               # avg over one rank
        log.clear()
        dist.broadcast(gpuad.Tensor._from(np.zeros(3, np.float64).view(_DevArray)))
        assert [e for e in log if e[0] == "bcast"][0][:4] == ("bcast", 24, "NCCL_UINT8", 0)
        with pytest.raises(TypeError, match="works on CUDA tensors"):
            dist.all_reduce(gpuad.ones(2))
        with pytest.raises(ValueError, match="contiguous"):
            dist.all_reduce(gpuad.Tensor._from(np.zeros((4, 4), np.float32).view(_DevArray)[:, ::2]))
        with pytest.raises(TypeError, match="NCCL cannot reduce complex64"):
            dist.all_reduce(gpuad.Tensor._from(np.zeros(2, np.complex64).view(_DevArray)))
    finally:
        dist.destroy()
    assert ("destroy",) in log
