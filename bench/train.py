"""Suite `train`: an everyday language-model training step, eager against gpuad.compile.

The GPT of `python -m gpuad.demo` (characters of its text, block 32, batch 16, 2
layers of width 64, 4 heads) with dropout 0.1, AdamW, a cosine schedule with
warmup stepped between calls, clip_grad_norm_ and an accuracy metric returned
with .item(): 50 steps eager and 50 compiled, interleaved step by step, each run
with its own generator state (so their dropout masks are the ones a lone run
draws). Reported: traces, the losses' bitwise equality, step times (median of
the per-step ratios), the first calls' times, the peak (eager's measured, the
compiled step's planned and measured, and its parts), and where the compiled
step's time goes (each callable of the replay timed, by kind).

Targets (issue 23): 1 trace over 50 steps; losses bitwise equal to eager; compiled
step <= 0.8x eager; planned peak <= eager's measured peak; first call <= 2 s.
"""
import math
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


def _by_kind(run, calls=10):
    """Where a compiled replay spends its time, by what each line of the generated
    replay calls: each fused group (those with an erf apart), each primitive, and the
    call around the replay (finding the state, the guards, reading and writing back
    slots). Each callable of the replay's scope is wrapped with a timer for these calls
    only; ufuncs run inside groups count with their group."""
    import gpuad
    from gpuad.compiler.passes.fuse import FusedKernel
    x, y = run.batches[0]
    entry = run.fn.compiled(x, y)
    scope = entry.fn.__globals__
    saved = dict(scope)
    spent, counts = {}, {}

    def timed(fn, kind):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[kind] = spent.get(kind, 0.0) + time.perf_counter() - t
                counts[kind] = counts.get(kind, 0) + 1
        return call
    for name, v in saved.items():
        if isinstance(v, FusedKernel):
            size = math.prod(v.shape)
            erf = any(m.prim == "erf" for m in v.members)
            scope[name] = timed(v, "fused groups with erf (GELU)" if erf else
                                f"fused groups of {'more than' if size > 4096 else 'at most'} 4096 elements")
        elif callable(v) and not isinstance(v, type) and name != "np":
            scope[name] = timed(v, name.rstrip("_0123456789"))
    state = gpuad.get_rng_state()
    try:
        t0 = time.perf_counter()
        for _ in range(calls):
            run.fn(x, y)
        total = time.perf_counter() - t0
    finally:
        scope.clear()
        scope.update(saved)
        gpuad.set_rng_state(state)
    rows = sorted(spent.items(), key=lambda kv: -kv[1])
    inside = sum(spent.values())
    rows = [(k, v / calls * 1e3, counts[k] // calls) for k, v in rows[:9]]
    rows.append(("the rest of the replay (its own lines, small primitives)", (total - inside) / calls * 1e3, "-"))
    return rows, total / calls * 1e3


def run(full=False):
    import gpuad
    eager, comp = _Run(False), _Run(True)
    from gpuad.compiler.codegen.numba_groups import TIER_AFTER
    first = []
    for i in range(2 + TIER_AFTER):      # the compiled run's first call runs eagerly (it makes AdamW's
        for r in (eager, comp):          # state), its second traces and compiles; its groups' CPU
            r()                          # kernels are compiled at their third call (tiered): memory is
        if i < 2:                        # measured after that
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
    prof, per_call = _by_kind(comp)
    ptable = harness.Table(f"train: where the compiled step's time goes ({per_call:.1f} ms per call, timed "
                           f"by kind, alone)", ["what the replay calls", "ms per call", "calls"])
    for name, ms, n in prof:
        ptable.add(name, ms, n)
    ptable.print()
    plan = entry.plan
    mtable = harness.Table("train: the compiled step's planned peak, by part", ["part", "MiB"])
    mtable.add("planned values, the most live at once", plan.live_peak / 2 ** 20)
    mtable.add("arena (those values packed; the rest is packing)", plan.arena_bytes / 2 ** 20)
    mtable.add("fused groups' chunk scratch (shared, held)", plan.scratch_bytes / 2 ** 20)
    mtable.add("unplanned values (no out=), the most live at once", plan.dynamic_peak / 2 ** 20)
    mtable.add("planned peak (arena + scratch + unplanned)", plan.peak_bytes / 2 ** 20)
    mtable.add("eager's measured peak", eager_peak / 2 ** 20)
    mtable.print()
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
            "time_by_kind_ms": {k: v for k, v, _ in prof}, "explain": comp.fn.explain()}
    data["peak_parts"] = {"live_peak": plan.live_peak, "arena": plan.arena_bytes, "scratch": plan.scratch_bytes,
                          "dynamic": plan.dynamic_peak}
    return harness.write_report("train", data, [table, ptable, mtable, targets.table("train")], notes)
