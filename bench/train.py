"""Suite `train`: an everyday language-model training step, eager against gpuad.compile.

The GPT of `python -m gpuad.demo` (characters of its text, block 32, batch 16, 2
layers of width 64, 4 heads) with dropout 0.1, AdamW, a cosine schedule with
warmup stepped between calls, clip_grad_norm_ and an accuracy metric returned
with .item(): 50 steps eager and 50 compiled, interleaved step by step, each run
with its own generator state (so their dropout masks are the ones a lone run
draws). Reported: traces, the losses' bitwise equality, step times (median of
the per-step ratios), the first calls' times, the peak (eager's measured, the
compiled step's planned and measured), and where the compiled step's time goes
(cProfile of replays, by function).

Targets (issue 23): 1 trace over 50 steps; losses bitwise equal to eager; compiled
step <= 0.8x eager; planned peak <= eager's measured peak; first call <= 2 s.
"""
import cProfile
import math
import pstats
import time

import numpy as np

from . import harness

STEPS = 50


def _make():
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import demo, nn, optim
    chars = sorted(set(demo.TEXT))
    ids = np.array([chars.index(c) for c in demo.TEXT], np.int64)
    V, block, batch = len(chars), 32, 16
    gpuad.manual_seed(4)
    model = nn.GPT(V, block, d_model=64, n_layers=2, n_heads=4, dropout=0.1)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    warm = 5
    sched = optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (STEPS - warm))))

    def step(x, y):
        opt.zero_grad()
        logits = model(x).reshape(-1, V)
        loss = F.cross_entropy(logits, y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        acc = (logits.argmax(-1) == y.reshape(-1)).float().mean()
        return loss, acc.item()

    rng = np.random.default_rng(4)
    batches = []
    for _ in range(STEPS):
        starts = rng.integers(0, len(ids) - block - 1, batch)
        batches.append((gpuad.tensor(np.stack([ids[s:s + block] for s in starts])),
                        gpuad.tensor(np.stack([ids[s + 1:s + block + 1] for s in starts]))))
    return step, sched, batches


class _Run:
    """One training run with its own generator state, so two runs can be interleaved."""

    def __init__(self, compiled):
        import gpuad
        self.step, self.sched, self.batches = _make()
        self.fn = gpuad.compile(self.step) if compiled else self.step
        gpuad.manual_seed(7)
        self.rng = gpuad.get_rng_state()
        self.losses, self.accs, self.times = [], [], []

    def __call__(self):
        import gpuad
        i = len(self.losses)
        gpuad.set_rng_state(self.rng)
        t0 = time.perf_counter()
        loss, acc = self.fn(*self.batches[i])
        self.times.append(time.perf_counter() - t0)
        self.rng = gpuad.get_rng_state()
        self.losses.append(loss.item())
        self.accs.append(acc)
        self.sched.step()


def _tracemalloc_peak(run):
    import tracemalloc
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def _profile(run, calls=10):
    """Where a compiled replay spends its time: cProfile's self time by function."""
    import gpuad
    x, y = run.batches[0]
    pr = cProfile.Profile()
    state = gpuad.get_rng_state()
    pr.enable()
    for _ in range(calls):
        run.fn(x, y)
    pr.disable()
    gpuad.set_rng_state(state)
    stats = pstats.Stats(pr).stats
    by = {}
    for (file, line, name), (cc, nc, tt, ct, callers) in stats.items():
        if "site-packages" in file:
            key = "numpy internals (python)"
        elif file.startswith("<gpuad compile"):
            key = "the generated replay (its own Python)"
        elif file == "~":
            key = name.strip("<>").replace("built-in method ", "").replace("method '", "").split("'")[0]
        else:
            key = f"{file.rsplit('/', 1)[-1]}:{name}"
        by[key] = by.get(key, 0.0) + tt
    total = sum(by.values())
    top = sorted(by.items(), key=lambda kv: -kv[1])[:10]
    return [(k, v / calls * 1e3, v / total) for k, v in top], total / calls * 1e3


def run(full=False):
    import gpuad
    eager, comp = _Run(False), _Run(True)
    first = []
    for _ in range(2):                   # the compiled run's first call runs eagerly (it makes AdamW's
        for r in (eager, comp):          # state), its second traces and compiles
            r()
        first.append(comp.times[-1])
    with gpuad.memory.track() as m:
        eager()
    eager_peak = m.stats()["peak_bytes"]
    with gpuad.memory.track() as m:
        comp()
    comp_peak = m.stats()["peak_bytes"]
    # what the process really allocates during one call, over what is live before it
    # (tracemalloc sees numpy's buffers, the VJPs' temporaries included, which gpuad's
    # accounting leaves out; the compiled step's arena is allocated once, before)
    eager_tm, comp_tm = _tracemalloc_peak(eager), _tracemalloc_peak(comp)
    k = 0
    while len(eager.losses) < STEPS:
        for r in ((eager, comp) if k % 2 == 0 else (comp, eager)):
            r()
        k += 1
    entry = comp.fn.compiled(*comp.batches[0])
    ratios = sorted(c / e for c, e in zip(comp.times[4:], eager.times[4:]))
    ratio = ratios[len(ratios) // 2]
    traces = comp.fn.traces + 1
    same = eager.losses == comp.losses and eager.accs == comp.accs
    t_e, t_c = harness.median(eager.times[4:]) * 1e3, harness.median(comp.times[4:]) * 1e3
    table = harness.Table(f"train: GPT demo step, dropout 0.1, AdamW, cosine schedule with warmup, "
                          f"clip_grad_norm_, accuracy; {STEPS} steps", ["figure", "eager", "compiled"])
    table.add("step time, ms (median)", t_e, t_c)
    table.add("first call, s", eager.times[0], first[0])
    table.add("second call, s (compiled: traces and compiles)", eager.times[1], first[1])
    table.add("traces", "-", traces)
    table.add("peak MiB (measured over one step)", eager_peak / 2 ** 20, comp_peak / 2 ** 20)
    table.add("planned peak MiB (arenas + fused groups' scratch + the rest's peak)", "-",
              entry.plan.peak_bytes / 2 ** 20)
    table.add("of which the arenas (allocated once, kept between calls)", "-", entry.plan.arena_bytes / 2 ** 20)
    table.add("tracemalloc: most allocated during a call, MiB", eager_tm / 2 ** 20, comp_tm / 2 ** 20)
    table.add("losses and accuracies bitwise equal", "-", "yes" if same else "NO")
    table.print()
    prof, per_call = _profile(comp)
    ptable = harness.Table(f"train: where the compiled step's time goes (cProfile, self time, "
                           f"{per_call:.1f} ms per call under the profiler)", ["function", "ms per call", "share"])
    for name, ms, share in prof:
        ptable.add(name, ms, f"{share * 100:.0f}%")
    ptable.print()
    targets, notes = harness.Targets(), []
    notes.append(targets.check("traces over 50 steps", traces, 1, "", "{:d}"))
    notes.append(targets.check("losses bitwise equal to eager (1 = yes)", int(same), 1, "", "{:d}", at_least=True))
    notes.append(targets.check("compiled step vs eager", ratio, 0.8, "x"))
    notes.append(targets.check("planned peak vs eager's measured peak", entry.plan.peak_bytes / eager_peak, 1.0, "x"))
    notes.append(targets.check("tracing call (compile) time", first[1], 2.0, " s"))
    targets.table("train").print()
    for n in notes:
        print("  " + n)
    data = {"steps": STEPS, "traces": traces, "bitwise": same, "ms": {"eager": t_e, "compiled": t_c},
            "ratio": ratio, "first_call_s": first, "peak_bytes": {"eager": eager_peak, "compiled_measured": comp_peak,
                                                                  "compiled_planned": entry.plan.peak_bytes,
                                                                  "arenas": entry.plan.arena_bytes,
                                                                  "tracemalloc_eager": eager_tm,
                                                                  "tracemalloc_compiled": comp_tm},
            "profile_ms": {k: v for k, v, _ in prof}, "explain": comp.fn.explain()}
    return harness.write_report("train", data, [table, ptable, targets.table("train")], notes)
