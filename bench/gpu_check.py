"""make gpu-check: the one script to run on a CUDA machine. Writes report.md and report.json to --out.

It uses the machine's python3 as it is (no venv, nothing installed), with
PYTHONPATH set to the checkout. In order, each step timed and allowed to fail
on its own (the report says which did):

  1. the machine: GPU, driver, versions of cupy, triton, torch
  1b. nccl: a one-rank NCCL world without MPI (mpi4py is not on that machine):
     init, all_reduce (blocking and not), barrier, and a DistributedDataParallel
     step of a CUDA MLP in 1 MiB buckets against the same step without it
     (gradients equal; bucket starts against the end of backward; step times)
  2. the GPU tests and the kernel tests (tests/test_kernels_interpreter.py: every
     activation, fp32/fp16, strided and 3-D inputs, inputs without grad,
     cross-entropy reductions, the fallbacks) on the compiled kernels
  3. mlp: one step (batch 256, width 1024, 8 tanh layers) for gpuad with the
     Triton kernels, gpuad with CuPy's kernels, and torch eager CUDA, in fp32
     (torch also in bf16): time, peak device memory, traffic (model)
  4. memory: peak device bytes of that step at depths 4, 8, 16, planner on and off
  5. checkpoint: the 64-layer step with sqrt(L) segments vs none, gpuad and torch
  6. attention: causal scaled_dot_product_attention forward+backward (fp16, 4 x 8
     heads, E = 64, L = 1024 and 4096) with gpuad's Triton FlashAttention kernels
     against torch's: time, peak device bytes, and the largest dQ difference
  7. compile: gpuad.compile's MLP and GPT steps on the device (arena in device
     memory, fused groups as generated Triton kernels, one CUDA graph) against
     eager gpuad, torch eager and torch.compile: time, peak device bytes
  8. bandwidth: CuPy's device copy against gpuad's elementwise kernels
  9. ncu (when on PATH): DRAM bytes read and written by the fused linear forward
     kernel against the traffic model
The report (report.md, report.json) is rewritten after every step, so a run
stopped from outside still leaves what it measured; a global deadline (7.5
minutes by default) skips the steps that would not finish; the exit status
is nonzero when any step failed or was skipped for time. --dry-run walks the
steps without touching a device and writes the report's skeleton (CI does
this on the CPU).

    python3 bench/gpu_check.py --out gpu-report       # what `make gpu-check` runs
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:                # run as a script: the checkout is the package root
    sys.path.insert(0, ROOT)


class Report:
    def __init__(self, out, deadline_s=450, dry_run=False):
        self.out = out
        self.sections = []
        self.data = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
        self.deadline = time.time() + deadline_s
        self.dry_run = dry_run
        self.failed = []

    def step(self, name, fn, *args, budget_s=60):
        """Run one step (unless dry or out of time), record it, and rewrite the report."""
        t0 = time.time()
        print(f"== {name}", flush=True)
        if self.dry_run:
            md, data, status = "dry run: not run (no device work)\n", {}, "dry run"
        elif time.time() + budget_s > self.deadline:
            md, data, status = f"skipped: fewer than {budget_s} s left before the deadline\n", {}, "skipped"
            self.failed.append(name)
        else:
            left = max(1, int(min(budget_s, self.deadline - time.time())))
            old = signal.signal(signal.SIGALRM, _alarm) if hasattr(signal, "SIGALRM") else None
            if old is not None:
                signal.alarm(left)                   # a cold torch.compile cannot run past the deadline
            try:
                md, data = fn(*args)
                status = "ok"
            except StepFailed as e:
                md, data, status = e.md, e.data, "failed"
                self.failed.append(name)
            except Exception as e:                   # one failed step must not hide the others
                md, data, status = f"failed: `{type(e).__name__}: {e}`\n\n```\n{traceback.format_exc()[-3000:]}\n```\n", \
                    {"error": repr(e)}, "failed"
                self.failed.append(name)
            finally:
                if old is not None:
                    signal.alarm(0)
                    signal.signal(signal.SIGALRM, old)
        dt = time.time() - t0
        self.sections.append(f"## {name} ({status}, {dt:.0f} s)\n\n{md}\n")
        self.data[name] = data
        self.data["steps"][name] = status
        print(md, flush=True)
        self.write()

    def write(self):
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write(f"# gpuad GPU check\n\n{self.data['date']}\n\n" + "\n".join(self.sections))
        with open(os.path.join(self.out, "report.json"), "w") as f:
            json.dump(self.data, f, indent=2, default=str)


class _Skipped(Exception):
    pass


def _alarm(signum, frame):
    raise StepTimeout("the step ran past its share of the deadline")


def _table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --- steps --------------------------------------------------------------------------

def machine():
    import cupy
    info = {"python": sys.version.split()[0], "numpy": np.__version__, "cupy": cupy.__version__}
    props = cupy.cuda.runtime.getDeviceProperties(0)
    info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    info["memory_GiB"] = round(props["totalGlobalMem"] / 2 ** 30, 1)
    info["driver"] = cupy.cuda.runtime.driverGetVersion()
    for mod in ("triton", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:
            info[mod] = f"absent ({e})"
    info.update(providers_here())
    return _table(["what", "value"], info.items()), info


def providers_here():
    """Which kernel provider really runs on device arrays here, and why: a CPU-only torch
    leaves Triton's driver unusable, and the "triton" rows then run CuPy's kernels."""
    from gpuad.backends import _cupy_namespace
    from gpuad.providers import provider_name, set_kernels
    out = {}
    try:
        import torch
        out["torch.cuda"] = torch.cuda.is_available()
    except Exception as e:
        out["torch.cuda"] = f"absent ({type(e).__name__})"
    xp = _cupy_namespace()
    for asked in ("triton", "cupy"):
        set_kernels(asked)
        try:
            out[f"provider when {asked} is asked"] = provider_name(xp)
        finally:
            set_kernels(None)
    out["provider by default"] = provider_name(xp)
    return out


def nccl_smoke(rounds):
    import copy
    import gpuad
    import gpuad.distributed as dist
    import gpuad.nn.functional as F
    from gpuad import nn
    world = dist.init("nccl")
    try:
        t = gpuad.tensor(np.arange(4.0, dtype=np.float32), device="cuda")
        dist.all_reduce(t)
        h = dist.all_reduce(t, op="avg", async_op=True)
        h.wait()
        dist.barrier()
        reduced_ok = bool(np.array_equal(t.cpu().numpy(), np.arange(4.0)))     # a world of one: unchanged
        gpuad.manual_seed(0)
        net = nn.MLP([1024] * 9, activation="tanh").to("cuda")
        ref = copy.deepcopy(net)
        ddp = nn.parallel.DistributedDataParallel(net, bucket_bytes=1 << 20)
        rng = np.random.default_rng(0)
        x = gpuad.tensor(rng.standard_normal((256, 1024)).astype(np.float32), device="cuda")
        y = gpuad.tensor(rng.standard_normal((256, 1024)).astype(np.float32), device="cuda")

        def step(model):
            def run():
                model.zero_grad()
                F.mse_loss(model(x), y).backward()
            return run
        step(ddp)()
        step(ref)()
        diff = max(float(abs(a.grad.cpu().numpy() - b.grad.cpu().numpy()).max())
                   for a, b in zip(net.parameters(), ref.parameters()))
        ev = ddp.events
        end = next(tt for tt, k, _ in ev if k == "backward_end")
        starts = [round((tt - end) * 1e3, 3) for tt, k, _ in ev if k == "start"]
        times = _time({"ddp step": step(ddp), "plain step": step(ref)}, rounds, _sync)
        info = {"backend": world.name, "ranks": world.size, "all_reduce ok": reduced_ok,
                "buckets": len(ddp.buckets), "max |grad ddp - grad plain|": diff,
                "bucket starts, ms before backward's end (host clock)": starts,
                **{k: round(v * 1e3, 3) for k, v in times.items()}}
        return _table(["what", "value"], [(k, str(v)) for k, v in info.items()]), info
    finally:
        dist.destroy()


def gpu_tests():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "tests/test_devices.py", "tests/test_kernels_interpreter.py", "tests/test_nn.py", "tests/test_engine.py"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    tail = (r.stdout + r.stderr).strip().splitlines()[-15:]
    md = f"`{' '.join(cmd[2:])}` exit {r.returncode}\n\n```\n" + "\n".join(tail) + "\n```\n"
    if r.returncode != 0:                    # a failing test fails the step (and the run's exit status)
        raise StepFailed(md, {"returncode": r.returncode, "tail": tail})
    return md, {"returncode": r.returncode, "tail": tail}


class StepFailed(Exception):
    """A step that ran to the end and found a failure: its report, and a failed status."""

    def __init__(self, md, data):
        super().__init__(md.splitlines()[0] if md else "failed")
        self.md, self.data = md, data


class StepTimeout(Exception):
    """A step ran past its share of the deadline (raised by the alarm in Report.step)."""


def _sync():
    import cupy
    cupy.cuda.Device().synchronize()


def _time(variants, rounds, sync):
    samples = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds + 2):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync()
            t0 = time.perf_counter()
            variants[name]()
            sync()
            if r >= 2:
                samples[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _gpuad_mlp(depth, width, batch, seed=0):
    import gpuad
    from gpuad import nn
    gpuad.manual_seed(seed)
    net = nn.MLP([width] * (depth + 1), activation="tanh", output_activation="tanh")
    cpu_weights = [(layer.weight.numpy().copy(), layer.bias.numpy().copy()) for layer in net]
    net.to("cuda")
    rng = np.random.default_rng(seed)
    x = gpuad.tensor(rng.standard_normal((batch, width)).astype(np.float32), device="cuda")
    y = gpuad.tensor(rng.standard_normal((batch, width)).astype(np.float32), device="cuda")
    return net, x, y, cpu_weights


def _torch_mlp(cpu_weights, x, y, dtype):
    import torch
    mods = []
    for w, b in cpu_weights:
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        mods += [lin, torch.nn.Tanh()]
    net = torch.nn.Sequential(*mods).cuda().to(dtype)
    xt = torch.as_tensor(x.numpy(), device="cuda").to(dtype)
    yt = torch.as_tensor(y.numpy(), device="cuda").to(dtype)
    return net, xt, yt


def mlp(rounds, providers=("triton", "cupy")):
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import memory
    net, x, y, cpu_weights = _gpuad_mlp(8, 1024, 256)
    variants, peaks, traffic = {}, {}, {}
    for provider in providers:
        def step(p=provider):
            gpuad.set_kernels(p)
            net.zero_grad()
            F.mse_loss(net(x), y).backward()
        variants[f"gpuad {provider}"] = step
        step()
        _sync()
        with memory.track() as m:
            memory.accountant.device_peak_bytes = memory.accountant.device_live_bytes
            step()
            _sync()
            s = m.stats()
        peaks[f"gpuad {provider}"] = memory.accountant.device_peak_bytes
        traffic[f"gpuad {provider}"] = s["bytes_read"] + s["bytes_written"]
    gpuad.set_kernels(None)
    have_torch = True
    try:
        import torch
    except ImportError:
        have_torch = False
    if have_torch:
        for label, dt in (("torch eager fp32", torch.float32), ("torch eager bf16", torch.bfloat16)):
            tnet, xt, yt = _torch_mlp(cpu_weights, x, y, dt)

            def tstep(tnet=tnet, xt=xt, yt=yt):
                tnet.zero_grad(set_to_none=True)
                torch.nn.functional.mse_loss(tnet(xt), yt).backward()
            tstep()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            tstep()
            torch.cuda.synchronize()
            peaks[label] = torch.cuda.max_memory_allocated() - base
            variants[label] = tstep

    def sync():
        _sync()
        if have_torch:
            torch.cuda.synchronize()
    times = _time(variants, rounds, sync)
    ref = times.get("torch eager fp32")
    rows = [(k, f"{v * 1e3:.3f}", f"{v / ref:.3f}x" if ref else "-",
             f"{peaks.get(k, 0) / 2 ** 20:.1f}", f"{traffic[k] / 2 ** 20:.1f}" if k in traffic else "-")
            for k, v in times.items()]
    M, K, N = 256, 1024, 1024
    fused, unfused = M * K + N * K + N + M * N, M * K + N * K + N + 5 * M * N
    md = _table(["variant", "ms per step", "vs torch fp32", "peak MiB (step)", "traffic (model) MiB"], rows)
    md += (f"\nfused linear forward traffic (model): {fused:,} elements vs unfused {unfused:,} "
           f"({fused / unfused:.2f}x); target <= 0.5x\n\ngpuad keeps params on the device; peaks are "
           f"device bytes allocated during the step (gpuad: CuPy allocator hook; torch: max_memory_allocated)\n")
    return md, {"ms": {k: v * 1e3 for k, v in times.items()}, "peak_bytes": peaks, "traffic": traffic}


def _compiled_case(label, eager, compiled, torch_step, rounds, torch_compile=True):
    """Time and peak device bytes of one step: eager gpuad (Triton provider), compiled,
    torch eager and torch.compile; notes on the compiled graph."""
    from gpuad import memory
    from gpuad.compiler.codegen import triton_groups
    variants = {f"{label}: gpuad eager (triton)": eager, f"{label}: gpuad compiled": compiled}
    peaks, notes = {}, []
    for name, fn in variants.items():
        fn()                                # a compiled training step: eager (it makes the optimizer's state),
        fn()                                # then traced,
        fn()                                # then captured as a CUDA graph on its first replay
        _sync()
        with memory.track():
            memory.accountant.device_peak_bytes = memory.accountant.device_live_bytes
            fn()
            _sync()
        peaks[name] = memory.accountant.device_peak_bytes
    entry = compiled.compiled()
    groups = [e for e in entry.graph.eqns if e.prim == "fused"]
    generated = sum(1 for e in groups if triton_groups.kernel(e.params["kernel"].value) is not None)
    g = entry.fn
    graph = ("capture failed: ran without a graph" if getattr(g, "failed", False) else
             f"captured {g.captures} time(s)" if getattr(g, "captures", 0) else "not used")
    notes.append(f"{label}: {len(groups)} fused groups, {generated} as generated Triton kernels; CUDA graph "
                 f"{graph}; planned peak {entry.plan.peak_bytes / 2 ** 20:.1f} MiB; modelled traffic "
                 f"{sum(entry.traffic()) / 2 ** 20:.1f} MiB")
    sync = _sync
    if torch_step is not None:
        import torch
        variants[f"{label}: torch eager"] = torch_step
        try:
            if not torch_compile:
                raise _Skipped("--quick: no torch.compile (a cold compile takes minutes)")
            cstep = torch.compile(torch_step)
            cstep()
            variants[f"{label}: torch.compile"] = cstep
        except Exception as e:                      # report, do not fail the step
            notes.append(f"{label}: torch.compile failed here: {type(e).__name__}: {str(e)[:200]}")

        def sync():
            _sync()
            torch.cuda.synchronize()
    return _time(variants, rounds, sync), peaks, notes


def compiled_steps(rounds, gpt=True, torch_compile=True):
    """gpuad.compile on the device (#14): an 8 x 1024 tanh MLP step (MSE) and the bench's
    GPT step (AdamW), each eager with the Triton provider, compiled (arena in device
    memory, fused groups as generated Triton kernels, one CUDA graph from the second
    call), torch eager and torch.compile: time and peak device bytes."""
    import gpuad
    import gpuad.nn.functional as F
    gpuad.set_kernels("triton")
    try:
        import torch
    except ImportError:
        torch = None
    times, peaks, notes = {}, {}, []
    # the MLP
    net, x, y, cpu_weights = _gpuad_mlp(8, 1024, 256)

    def mlp_step():
        net.zero_grad()
        F.mse_loss(net(x), y).backward()
    tstep = None
    if torch is not None:
        tnet, xt, yt = _torch_mlp(cpu_weights, x, y, torch.float32)

        def tstep():
            tnet.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(tnet(xt), yt).backward()
    t, p, n = _compiled_case("MLP", mlp_step, gpuad.compile(mlp_step), tstep, rounds, torch_compile)
    times.update(t), peaks.update(p), notes.extend(n)
    if gpt:
        t, p, n = _gpt_case(rounds, torch, torch_compile)
        times.update(t), peaks.update(p), notes.extend(n)
    gpuad.set_kernels(None)
    rows = []
    for k, v in times.items():
        ref = times.get(k.split(":")[0] + ": torch eager")
        rows.append((k, f"{v * 1e3:.3f}", f"{v / ref:.3f}x" if ref else "-",
                     f"{peaks[k] / 2 ** 20:.1f}" if k in peaks else "-"))
    md = _table(["variant", "ms per step", "vs torch eager", "peak device MiB (gpuad)"], rows)
    md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return md, {"ms": {k: v * 1e3 for k, v in times.items()}, "peak_bytes": peaks, "notes": notes}


def _gpt_case(rounds, torch, torch_compile):
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import nn, optim
    # the GPT of the CPU bench
    V, T, D, NL, H, B = 64, 128, 128, 4, 4, 8
    ids = np.random.default_rng(1).integers(0, V, (B, T + 1))
    gpuad.manual_seed(5)
    model = nn.GPT(V, T, D, NL, H)
    tgpt = None
    if torch is not None:
        from bench.attention import _torch_gpt
        tgpt = _torch_gpt(model, V, T, D, NL, H).cuda()
        topt = torch.optim.AdamW(tgpt.parameters(), lr=1e-3)
        it, lt = (torch.as_tensor(a, device="cuda") for a in (ids[:, :-1], ids[:, 1:]))
    model.to("cuda")
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    xi, yi = gpuad.tensor(ids[:, :-1], device="cuda"), gpuad.tensor(ids[:, 1:], device="cuda")

    def gpt_step():
        opt.zero_grad()
        F.cross_entropy(model(xi).reshape(-1, V), yi.reshape(-1)).backward()
        opt.step()
    tg = None
    if torch is not None:
        def tg():
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(tgpt(it).reshape(-1, V), lt.reshape(-1)).backward()
            topt.step()
    return _compiled_case("GPT", gpt_step, gpuad.compile(gpt_step), tg, rounds, torch_compile)


def memory_depths():
    import gpuad.nn.functional as F
    from gpuad import memory
    rows = []
    for depth in (4, 8, 16):
        net, x, y, _ = _gpuad_mlp(depth, 1024, 256)
        out = {}
        for planner in ("1", "0"):
            os.environ["GPUAD_NO_PLANNER"] = "0" if planner == "1" else "1"
            net.zero_grad()
            _sync()
            with memory.track():
                memory.accountant.device_peak_bytes = memory.accountant.device_live_bytes
                base = memory.accountant.device_live_bytes
                F.mse_loss(net(x), y).backward()
                _sync()
                out[planner] = memory.accountant.device_peak_bytes - base
        os.environ.pop("GPUAD_NO_PLANNER", None)
        rows.append((depth, f"{out['1'] / 2 ** 20:.1f}", f"{out['0'] / 2 ** 20:.1f}",
                     f"{(1 - out['1'] / out['0']) * 100:.0f}%"))
    return _table(["depth", "peak MiB, planner", "peak MiB, no planner", "saved"], rows), {"rows": rows}


def attention(rounds, lengths=(1024, 4096)):
    """Causal SDPA forward+backward: gpuad (triton provider) against torch, fp16."""
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import memory
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    rows, data = [], {}
    gpuad.set_kernels("triton")
    try:
        for L in lengths:
            arrays = [rng.standard_normal((4, 8, L, 64)).astype(np.float16) for _ in range(4)]
            qkv = [gpuad.tensor(a, device="cuda", requires_grad=True) for a in arrays[:3]]
            w = gpuad.tensor(arrays[3], device="cuda")

            def step():
                for t in qkv:
                    t.grad = None
                (F.scaled_dot_product_attention(*qkv, is_causal=True) * w).sum().backward()
            variants, peaks = {"gpuad triton": step}, {}
            step()
            _sync()
            base = memory.accountant.device_live_bytes
            memory.accountant.device_peak_bytes = base
            step()
            _sync()
            peaks["gpuad triton"] = memory.accountant.device_peak_bytes - base
            dq = qkv[0].grad.numpy().astype(np.float32)
            diff = "-"
            if torch is not None:
                qt = [torch.as_tensor(a, device="cuda").requires_grad_() for a in arrays[:3]]
                wt = torch.as_tensor(arrays[3], device="cuda")

                def tstep(qt=qt, wt=wt):
                    for t in qt:
                        t.grad = None
                    (torch.nn.functional.scaled_dot_product_attention(*qt, is_causal=True) * wt).sum().backward()
                tstep()
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                tstep()
                torch.cuda.synchronize()
                peaks["torch"] = torch.cuda.max_memory_allocated() - base
                variants["torch"] = tstep
                diff = float(np.abs(dq - qt[0].grad.float().cpu().numpy()).max())

            def sync():
                _sync()
                if torch is not None:
                    torch.cuda.synchronize()
            times = _time(variants, rounds, sync)
            ratio = times["gpuad triton"] / times["torch"] if "torch" in times else None
            rows.append((L, f"{times['gpuad triton'] * 1e3:.3f}",
                         f"{times['torch'] * 1e3:.3f}" if "torch" in times else "-",
                         f"{ratio:.2f}x" if ratio else "-", f"{peaks['gpuad triton'] / 2 ** 20:.1f}",
                         f"{peaks['torch'] / 2 ** 20:.1f}" if "torch" in peaks else "-", diff))
            data[L] = {"ms": {k: v * 1e3 for k, v in times.items()}, "peak_bytes": peaks, "max_dq_diff": diff}
    finally:
        gpuad.set_kernels(None)
    return _table(["L = S", "gpuad ms", "torch ms", "gpuad / torch", "gpuad peak MiB", "torch peak MiB",
                   "max |dQ - torch dQ|"], rows), data


def checkpoint_step(rounds):
    import gpuad
    import gpuad.nn.functional as F
    net, x, y, cpu_weights = _gpuad_mlp(64, 1024, 256)
    layers = list(net)

    def none():
        net.zero_grad()
        F.mse_loss(net(x), y).backward()

    def sqrt():
        net.zero_grad()
        F.mse_loss(gpuad.checkpoint_sequential(layers, x), y).backward()
    variants = {"gpuad none": none, "gpuad sqrt(L)": sqrt}
    try:
        import torch
        from torch.utils.checkpoint import checkpoint_sequential
        tnet, xt, yt = _torch_mlp(cpu_weights, x, y, torch.float32)

        def tnone():
            tnet.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(tnet(xt), yt).backward()

        def tsqrt():
            tnet.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(checkpoint_sequential(tnet, 8, xt, use_reentrant=False), yt).backward()
        variants.update({"torch none": tnone, "torch sqrt(L)": tsqrt})
        sync = lambda: (_sync(), torch.cuda.synchronize())  # noqa: E731
    except ImportError:
        sync = _sync
    times = _time(variants, rounds, sync)
    rows = [(k, f"{v * 1e3:.2f}") for k, v in times.items()]
    return _table(["64 layers, width 1024", "ms per step"], rows), {"ms": {k: v * 1e3 for k, v in times.items()}}


def bandwidth():
    import cupy
    from gpuad.ops.fused_kernels import host as _get
    n = 256 * 2 ** 20                                   # 1 GiB of float32
    a = cupy.random.standard_normal(n, dtype=cupy.float32)
    b = cupy.empty_like(a)
    s = cupy.random.standard_normal(n, dtype=cupy.float32)

    def timed(fn, reps=10):
        fn()
        _sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync()
        return (time.perf_counter() - t0) / reps
    copy = 2 * a.nbytes / timed(lambda: cupy.copyto(b, a))
    ck = _get("cupy")
    dact = 3 * a.nbytes / timed(lambda: ck._kernel("bwd", "tanh")(a, s, b))
    fwd = 2 * a.nbytes / timed(lambda: ck._kernel("fwd", "tanh")(a.reshape(-1, 1024), s[:1024], b.reshape(-1, 1024)))
    rows = [("device copy (read + write)", f"{copy / 1e12:.2f}", "1.00"),
            ("dact tanh (read 2N, write N)", f"{dact / 1e12:.2f}", f"{dact / copy:.2f}"),
            ("bias + tanh (read N, write N)", f"{fwd / 1e12:.2f}", f"{fwd / copy:.2f}")]
    return _table(["kernel", "TB/s", "of copy"], rows) + "\ntarget: elementwise kernels >= 0.70 of copy\n", \
        {"copy_TBps": copy / 1e12, "dact_TBps": dact / 1e12, "bias_act_TBps": fwd / 1e12}


NCU_SCRIPT = """
import numpy as np, cupy, gpuad, gpuad.nn.functional as F
gpuad.set_kernels("triton")
x = gpuad.tensor(np.random.rand(256, 1024).astype(np.float32), device="cuda")
w = gpuad.tensor(np.random.rand(1024, 1024).astype(np.float32), device="cuda")
b = gpuad.tensor(np.random.rand(1024).astype(np.float32), device="cuda")
for _ in range(3):                     # warm up: the autotuner launches every config on the first call
    F.linear(x, w, b, "tanh")
cupy.cuda.Device().synchronize()
cupy.cuda.profiler.start()             # ncu runs with --profile-from-start off: only this launch counts
F.linear(x, w, b, "tanh")
cupy.cuda.Device().synchronize()
cupy.cuda.profiler.stop()
"""


def ncu():
    exe = shutil.which("ncu")
    if exe is None:
        return "ncu is not on PATH: no hardware counters here\n", {"available": False}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    cmd = [exe, "--clock-control", "none", "--csv", "--metrics", "dram__bytes_read.sum,dram__bytes_write.sum",
           "--profile-from-start", "off", "--kernel-name", "regex:linear_fwd", "--launch-count", "1",
           sys.executable, "-c", NCU_SCRIPT]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    got = {}
    for line in r.stdout.splitlines():
        cells = [c.strip('"') for c in line.split('","')]
        for metric in ("dram__bytes_read.sum", "dram__bytes_write.sum"):
            if metric in cells:
                try:
                    value, unit = float(cells[-1].replace(",", "")), cells[-2]
                except ValueError:
                    continue
                scale = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(unit, 1)
                got[metric] = value * scale
    M, K, N = 256, 1024, 1024
    model_read, model_write = (M * K + N * K + N) * 4, M * N * 4
    if not got:
        tail = (r.stdout + r.stderr).strip().splitlines()[-10:]
        return "ncu gave no counters:\n\n```\n" + "\n".join(tail) + "\n```\n", {"available": True, "tail": tail}
    rows = [("read", f"{model_read:,}", f"{got.get('dram__bytes_read.sum', float('nan')):,.0f}"),
            ("write", f"{model_write:,}", f"{got.get('dram__bytes_write.sum', float('nan')):,.0f}")]
    return _table(["fused linear fwd 256x1024x1024, bytes", "traffic (model)", "ncu DRAM"], rows), \
        {"model": [model_read, model_write], "ncu": got}


STEPS = ("machine", "nccl", "GPU tests", "mlp", "memory", "checkpoint", "attention", "compile", "bandwidth",
         "ncu traffic check")
QUICK_STEPS = ("machine", "nccl", "GPU tests", "mlp", "compile", "attention")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 bench/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu-report")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--deadline", type=float, default=450, help="seconds for the whole run (default 450)")
    p.add_argument("--dry-run", action="store_true", help="walk the steps without a device; write the skeleton")
    p.add_argument("--quick", action="store_true",
                   help="what fits 4 minutes of device time: the machine, nccl with one rank, the GPU tests, "
                        "one eager and one compiled MLP step, attention at L = 1024")
    args = p.parse_args(argv)
    report = Report(args.out, args.deadline, args.dry_run)
    from gpuad.backends.devices import cuda_available
    ok, why = cuda_available()
    report.data["cuda"] = "available" if ok else why
    if not ok and not args.dry_run:
        report.sections.append(f"No CUDA device: {why}\n")
        report.write()
        print(f"gpu-check: no CUDA device here ({why}); wrote {args.out}/report.md")
        return 1
    runs = {"machine": (machine,), "nccl": (nccl_smoke, max(3, args.rounds // 2)), "GPU tests": (gpu_tests,), "mlp": (mlp, args.rounds),
            "memory": (memory_depths,), "checkpoint": (checkpoint_step, max(3, args.rounds // 2)),
            "attention": (attention, max(3, args.rounds // 2)), "compile": (compiled_steps, max(3, args.rounds // 2)),
            "bandwidth": (bandwidth,), "ncu traffic check": (ncu,)}
    budgets = {"GPU tests": 240, "ncu traffic check": 180, "mlp": 90, "attention": 60, "compile": 120}
    steps = STEPS
    if args.quick:
        rounds = max(3, args.rounds // 2)
        runs.update({"mlp": (mlp, rounds, ("triton",)), "attention": (attention, rounds, (1024,)),
                     "compile": (compiled_steps, rounds, False, False)})
        budgets.update({"GPU tests": 100, "mlp": 40, "attention": 30, "compile": 60})
        steps = QUICK_STEPS
    report.data["mode"] = "quick" if args.quick else "full"
    for name in steps:
        fn, *rest = runs[name]
        report.step(name, fn, *rest, budget_s=budgets.get(name, 60))
    print(f"wrote {args.out}/report.md and report.json"
          + (f"; failed or skipped: {', '.join(report.failed)}" if report.failed else ""))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
