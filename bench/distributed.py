"""Suite `distributed`: data-parallel training on two ranks of this machine (MPI, CPU).

`python -m bench distributed` starts `mpiexec -n 2 python -m bench.distributed
--worker` (one BLAS thread per rank: one core each), which times, interleaved
over rounds, per model:

- ddp:       a DistributedDataParallel step on each rank's half of the batch
             (zero_grad, forward, backward with bucketed all-reduce, SGD step),
             default 25 MiB buckets;
- ddp 4MiB:  the same with 4 MiB buckets (more, earlier all-reduces);
- ddp view:  the default, with gradient_as_bucket_view (no copy out of the buckets);
- one bucket: every gradient in one bucket, so the all-reduce starts only when
             backward has finished: the same work with no overlap;
- compute:   both ranks step on their half with no communication at all;
- alone full / alone shard: rank 0 steps on the whole batch / on half of it while
             rank 1 sleeps (one process, one core).

A step's time is the slower rank's. The fraction of all-reduce time hidden
behind backward is (one bucket - ddp) / (one bucket - compute): the share of the
exposed communication cost that overlapping removed. Bytes communicated per rank
and step are the ring all-reduce's 2 (N-1)/N x the gradient bytes.

The prediction for N GPUs is a model, stated with its assumptions in the report:
compute from FLOPs (6 x parameters x samples or tokens per GPU, at an assumed
achieved rate), communication from the ring all-reduce over the link's bandwidth
plus a per-step latency, and the step bounded by no overlap (compute + comm) and
full overlap (forward + max(backward, comm)).

Target (issue 16): at least half of the all-reduce time hidden on the 8-layer,
width-1024 MLP with 2 ranks.
"""
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20

# What the model assumes: achieved FLOP/s per GPU and link bandwidth per direction.
H200_FLOPS = 400e12          # ~40% of an H200's dense bf16 peak (989 TFLOP/s), a good large-model MFU
LINKS = {"NVLink 360 GB/s": (360e9, 10e-6),
         "100 Gb/s (12.5 GB/s)": (12.5e9, 30e-6)}     # bandwidth B/s, latency per ring step


def _models(full):
    """name -> (builder, batch, loss(model, rows)) for the worker."""
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import nn
    rng = np.random.default_rng(0)
    mlp_batch = 256
    x = rng.standard_normal((mlp_batch, 1024)).astype(np.float32)
    y = rng.standard_normal((mlp_batch, 1024)).astype(np.float32)
    vocab, block, gpt_batch = 64, 64, 16
    ids = rng.integers(0, vocab, (gpt_batch, block + 1))

    def mlp():
        gpuad.manual_seed(0)
        return nn.MLP([1024] * 9, activation="tanh")

    def gpt():
        gpuad.manual_seed(0)
        return nn.GPT(vocab, block, d_model=256, n_layers=4, n_heads=4)

    def regression(model, rows):
        return F.mse_loss(model(gpuad.tensor(x[rows])), gpuad.tensor(y[rows]))

    def lm(model, rows):
        logits = model(gpuad.tensor(ids[rows, :-1]))
        return F.cross_entropy(logits.reshape(-1, vocab), gpuad.tensor(ids[rows, 1:].reshape(-1)))

    # the last field: samples (rows, or tokens) per GPU step in the model of N GPUs, sized
    # for an H200 rather than for this CPU: 4096 rows; 32 sequences of 1024 tokens
    return {"mlp 8x1024": (mlp, mlp_batch, regression, 4096),
            "gpt d256 L4": (gpt, gpt_batch, lm, 32 * 1024)}


def _worker(out, rounds):
    import copy
    import gpuad
    import gpuad.distributed as dist
    from gpuad import nn, optim
    world = dist.init("mpi")
    rank, size = world.rank, world.size
    report = {}
    for name, (build, batch, loss_fn, gpu_samples) in _models(False).items():
        shard = dist.DistributedSampler(batch, shuffle=False).indices()
        everything = np.arange(batch)
        base = build()
        plain = copy.deepcopy(base)
        ddps = {"ddp": nn.parallel.DistributedDataParallel(copy.deepcopy(base)),
                "ddp 4MiB": nn.parallel.DistributedDataParallel(copy.deepcopy(base), bucket_bytes=4 * MIB),
                "ddp view": nn.parallel.DistributedDataParallel(copy.deepcopy(base), gradient_as_bucket_view=True),
                "one bucket": nn.parallel.DistributedDataParallel(copy.deepcopy(base), bucket_bytes=1 << 40)}

        def stepper(model, rows, set_to_none=True):
            opt = optim.SGD(list(model.parameters()), lr=1e-4)

            def step():
                opt.zero_grad(set_to_none=set_to_none)
                loss_fn(model, rows).backward()
                opt.step()
            return step
        both = {k: stepper(m, shard) for k, m in ddps.items()}
        both["compute"] = stepper(plain, shard)
        alone = {"alone full": stepper(plain, everything), "alone shard": stepper(plain, shard)}
        names = list(both) + list(alone)
        times = {k: [] for k in names}
        overlap_log = None
        for r in range(rounds + 1):
            k = r % len(names)
            for v in names[k:] + names[:k]:
                dist.barrier()
                if v in alone and rank != 0:
                    dt = 0.0                       # rank 1 sleeps in the barrier below
                else:
                    t0 = time.perf_counter()
                    (both.get(v) or alone[v])()
                    dt = time.perf_counter() - t0
                if r > 0:
                    times[v].append(dt)
            if r == rounds:
                overlap_log = _overlap_log(ddps["ddp 4MiB"].events)
        memory = {"no DDP": _memory(lambda: copy.deepcopy(base), stepper, shard)}
        for k, kw, none in (("ddp", {}, True), ("ddp view", {"gradient_as_bucket_view": True}, True),
                            ("ddp view, zero_grad(set_to_none=False)", {"gradient_as_bucket_view": True}, False)):
            memory[k] = _memory(lambda: nn.parallel.DistributedDataParallel(copy.deepcopy(base), **kw),
                                lambda m, r: stepper(m, r, none), shard)
        grad_bytes = sum(p.data.nbytes for p in base.parameters())
        n_params = sum(p.data.size for p in base.parameters())
        report[name] = {"times": times, "grad_bytes": grad_bytes, "params": n_params, "gpu_samples": gpu_samples,
                        "buckets": {k: len(m.buckets) for k, m in ddps.items()}, "log_4mib": overlap_log,
                        "memory": memory}
    gathered = dist.all_gather_object(report)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"size": size, "ranks": gathered}, f)
    dist.destroy()


def _memory(make, stepper, rows):
    """(bytes held after a step, peak bytes during it) beyond the parameters, by tracemalloc:
    gradients (and buckets) held; activations, gradients and buckets at the peak. The host
    pool is off meanwhile: blocks it cached before tracing began would go unseen."""
    import gc
    import tracemalloc
    from gpuad.memory import host_pool
    gc.collect()
    pooled, host_pool.enabled = host_pool.enabled, False
    host_pool.empty_cache()
    tracemalloc.start()
    try:
        model = make()
        params = sum(p.data.nbytes for p in model.parameters())
        step = stepper(model, rows)
        step()                                 # the first step makes .grad; the second is measured
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        step()
        held, peak = tracemalloc.get_traced_memory()
        return {"held": held - params, "peak": peak - params, "before": before - params}
    finally:
        tracemalloc.stop()
        host_pool.enabled = pooled


def _overlap_log(events):
    """Bucket starts relative to backward's end, in ms (negative: started during backward)."""
    t_end = next(t for t, k, _ in events if k == "backward_end")
    return [round((t - t_end) * 1e3, 2) for t, k, _ in events if k == "start"]


def _median_of_slowest(ranks, model, variant):
    per_round = zip(*(r[model]["times"][variant] for r in ranks))
    return float(np.median([max(ts) for ts in per_round]))


def _predict(params, samples, grad_bytes, n):
    """(compute s, comm s, no-overlap step, full-overlap step) for n GPUs, weak scaling."""
    compute = 6 * params * samples / H200_FLOPS            # forward 2, backward 4 FLOPs per parameter and sample
    rows = []
    for link, (bw, alpha) in LINKS.items():
        comm = 2 * (n - 1) / n * grad_bytes / bw + 2 * (n - 1) * alpha
        fwd, bwd = compute / 3, 2 * compute / 3
        rows.append((link, compute, comm, compute + comm, fwd + max(bwd, comm)))
    return rows


def run(full=False):
    from gpuad.distributed import launch
    from . import harness
    out = os.path.join(harness.RESULTS_DIR, "distributed-ranks.json")
    os.makedirs(harness.RESULTS_DIR, exist_ok=True)
    rounds = 11 if full else 7
    r = launch.run(2, [sys.executable, "-m", "bench.distributed", "--worker", out, str(rounds)], timeout=900,
                   cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"bench distributed: the ranks failed:\n{r.stdout}\n{r.stderr}")
    with open(out) as f:
        data = json.load(f)
    ranks, n = data["ranks"], data["size"]
    targets, notes = harness.Targets(), []
    t = harness.Table(f"distributed: {n} ranks on this machine (MPI over shared memory, one core each), ms per step",
                      ["model", "ddp", "ddp 4MiB", "ddp view", "one bucket", "compute only", "alone full batch",
                       "alone shard", "hidden (25 MiB)", "hidden (4 MiB)", "grad MiB", "sent per rank MiB",
                       "buckets"])
    rows = {}
    for model in ranks[0]:
        ms = {v: _median_of_slowest(ranks, model, v) * 1e3 for v in ranks[0][model]["times"]}
        exposed = ms["one bucket"] - ms["compute"]
        hidden = {k: (ms["one bucket"] - ms[k]) / exposed if exposed > 0 else float("nan")
                  for k in ("ddp", "ddp 4MiB")}
        info = ranks[0][model]
        sent = 2 * (n - 1) / n * info["grad_bytes"]
        rows[model] = {"ms": ms, "hidden": hidden, "sent_bytes": sent, **{k: info[k] for k in
                                                                          ("grad_bytes", "params", "gpu_samples")},
                       "bucket_starts_ms_before_backward_end": [r[model]["log_4mib"] for r in ranks]}
        t.add(model, ms["ddp"], ms["ddp 4MiB"], ms["ddp view"], ms["one bucket"], ms["compute"], ms["alone full"],
              ms["alone shard"], hidden["ddp"], hidden["ddp 4MiB"], info["grad_bytes"] / MIB, sent / MIB,
              "/".join(str(info["buckets"][k]) for k in ("ddp", "ddp 4MiB", "one bucket")))
        if model.startswith("mlp"):
            best = max(hidden.values())
            notes.append(targets.check("fraction of all-reduce time hidden behind backward, 8 x 1024 MLP",
                                       best, 0.5, "", "{:.2f}", at_least=True))
        notes.append(f"{model}: ddp step / one process on the full batch: {ms['ddp'] / ms['alone full']:.2f}x; "
                     f"/ one process on a shard: {ms['ddp'] / ms['alone shard']:.2f}x")
    mem = harness.Table("distributed: memory per rank beyond the parameters (tracemalloc, one step), MiB",
                        ["model", "variant", "held between steps", "peak during a step"])
    for model in ranks[0]:
        for v, m in ranks[0][model]["memory"].items():
            mem.add(model, v, m["held"] / MIB, m["peak"] / MIB)
    p = harness.Table("distributed: a model of the step on N H200s (weak scaling), ms",
                      ["model", "per GPU", "N", "link", "compute", "all-reduce", "step, no overlap",
                       "step, full overlap"])
    for model, info in rows.items():
        per_gpu = f"{info['gpu_samples']} {'tokens' if model.startswith('gpt') else 'rows'}"
        for gpus in (2, 8, 64):
            for link, c, a, lo, hi in _predict(info["params"], info["gpu_samples"], info["grad_bytes"], gpus):
                p.add(model, per_gpu, gpus, link, c * 1e3, a * 1e3, lo * 1e3, hi * 1e3)
    notes.append(f"model assumptions: {H200_FLOPS / 1e12:.0f} TFLOP/s achieved per GPU (bf16 tensor cores), 6 FLOPs "
                 f"per parameter and sample or token (attention's own FLOPs left out), gradients all-reduced in "
                 f"float32, a ring all-reduce moving 2(N-1)/N x the gradient bytes per "
                 f"rank at the link's bandwidth plus {LINKS[next(iter(LINKS))][1] * 1e6:.0f}/"
                 f"{LINKS[list(LINKS)[1]][1] * 1e6:.0f} us per ring step; no optimizer or data-loading time")
    for tab in (t, mem, p):
        tab.print()
    targets.table("distributed").print()
    for note in notes:
        print("  " + note)
    return harness.write_report("distributed", {"ranks": n, "rows": rows,
                                                "memory": {m: ranks[0][m]["memory"] for m in ranks[0]}},
                                [t, mem, p, targets.table("distributed")], notes)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5)
    else:
        print(run(full="--full" in sys.argv))
