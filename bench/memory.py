"""Suite `memory`: peak bytes and traffic of one MLP training step.

MLP width 1024, batch 256, tanh, float32, depths 4..64. For each depth:
the measured peak with the planner and without it (GPUAD_NO_PLANNER=1), the
peak gpuad.memory.predict_backward_peak gave before backward ran, the
theoretical floor, and the traffic model's bytes per step. Peaks are
program-wide: parameters and the input batch, plus everything the step
allocated (gradients are cleared before the step).

Floor = parameters + parameter gradients + saved activations (one per layer,
plus the input) + the largest working set of one layer (its incoming and
outgoing gradient: 2 activations).

Targets (issue 4): with the planner, the backward peak <= live bytes at the end
of forward + parameter-gradient bytes + 2x the largest activation; visibly
below no-planner at every depth; predicted = measured within 2%; planner
bookkeeping <= 3% of the step time.
"""
import os
from contextlib import contextmanager

import numpy as np

from . import harness


@contextmanager
def planner(on):
    old = os.environ.get("GPUAD_NO_PLANNER")
    os.environ["GPUAD_NO_PLANNER"] = "0" if on else "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GPUAD_NO_PLANNER", None)
        else:
            os.environ["GPUAD_NO_PLANNER"] = old


def _step(net, x, y, F, memory, timeline=False, predict=False):
    net.zero_grad()
    with memory.track(timeline=timeline) as m:
        loss = F.mse_loss(net(x), y)
        fwd_live = m.stats()["live_bytes"]
        predicted = memory.predict_backward_peak(loss) if predict else None
        loss.backward()
        del loss
    return m, fwd_live, predicted


def measure_depth(depth, width, batch, gpuad, F, nn, memory):
    rng = np.random.default_rng(depth)
    gpuad.manual_seed(depth)
    net = nn.MLP([width] * (depth + 1), activation="tanh", output_activation="tanh")
    x = gpuad.tensor(rng.standard_normal((batch, width)).astype(np.float32))
    y = gpuad.tensor(rng.standard_normal((batch, width)).astype(np.float32))
    held = sum(p.nbytes for p in net.parameters()) + x.nbytes + y.nbytes   # before the step
    param_bytes = sum(p.nbytes for p in net.parameters())
    act = batch * width * 4
    row = {"depth": depth, "param_bytes": param_bytes, "activation_bytes": act, "held_before": held}
    with planner(True):
        m, fwd_live, predicted = _step(net, x, y, F, memory, predict=True)
        s = m.stats()
        row["peak_planner"] = held + s["peak_bytes"]
        row["predicted"] = predicted - m._start["live_bytes"] + held   # same baseline as the peaks
        row["traffic"] = s["bytes_read"] + s["bytes_written"]
        row["end_of_forward"] = held + fwd_live
    with planner(False):
        m, _, predicted_np = _step(net, x, y, F, memory, predict=True)
        row["peak_no_planner"] = held + m.stats()["peak_bytes"]
        row["predicted_no_planner"] = predicted_np - m._start["live_bytes"] + held
    row["floor"] = 2 * param_bytes + (depth + 1) * act + 2 * act
    row["bound"] = row["end_of_forward"] + param_bytes + 2 * act
    return row, net, x, y


def run(full=False):
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import memory, nn

    width, batch = 1024, 256
    depths = [4, 8, 16, 32, 64]
    rows = []
    with harness.Progress(len(depths), "memory") as tick:
        for d in depths:
            row, net, x, y = measure_depth(d, width, batch, gpuad, F, nn, memory)
            rows.append(row)
            tick()
    mb = 1 / 2 ** 20
    table = harness.Table(f"memory: one MLP training step, width {width}, batch {batch}, tanh, float32 (MiB)",
                          ["depth", "planner", "no planner", "saved", "predicted", "pred/meas", "floor",
                           "peak/floor", "traffic (model)"])
    for r in rows:
        table.add(r["depth"], r["peak_planner"] * mb, r["peak_no_planner"] * mb,
                  f"{(1 - r['peak_planner'] / r['peak_no_planner']) * 100:.0f}%",
                  r["predicted"] * mb, f"{r['predicted'] / r['peak_planner']:.4f}",
                  r["floor"] * mb, f"{r['peak_planner'] / r['floor']:.3f}", f"{r['traffic'] * mb:,.0f}")
    table.print()

    # Planner bookkeeping cost: the 8-layer step with and without the planner, interleaved.
    row8, net, x, y = measure_depth(8, width, batch, gpuad, F, nn, memory)

    def step_on():
        with planner(True):
            net.zero_grad()
            F.mse_loss(net(x), y).backward()

    def step_off():
        with planner(False):
            net.zero_grad()
            F.mse_loss(net(x), y).backward()
    samples = harness.measure({"planner": step_on, "no planner": step_off}, rounds=31 if full else 21,
                              warmup=2, label="planner cost")
    cost = harness.ratio(samples, "planner", "no planner")
    targets = harness.Targets()
    notes = ["columns: peak MiB with the planner and without (GPUAD_NO_PLANNER=1), how much the planner saves, "
             "the peak predicted before backward ran, the floor as issue 4 defines it (parameters + their "
             "gradients + every saved activation + 2 activations), and the traffic model's MiB moved per step",
             "the peak sits below that floor: the floor assumes every activation coexists with every gradient, "
             "while the planner frees each activation as soon as its layer's backward has run",
             targets.check("planner on vs GPUAD_NO_PLANNER=1, 8-layer step time", cost, 1.03, "x")]
    worst_pred = max(abs(r["predicted"] / r["peak_planner"] - 1) for r in rows)
    notes.append(targets.check("predicted vs measured peak, worst % off", worst_pred * 100, 2, "%"))
    within = all(r["peak_planner"] <= r["bound"] for r in rows)
    notes.append("backward peak <= end-of-forward live + parameter grads + 2 activations at every depth: "
                 + ("yes" if within else "NO"))
    notes.append("peak lower with the planner at every depth: "
                 + ("yes" if all(r["peak_planner"] < r["peak_no_planner"] for r in rows) else "NO"))
    targets.table("memory").print()
    for n in notes:
        print("  " + n)
    plots = _plots(rows, net, x, y, F, memory)
    return harness.write_report("memory", {"rows": rows, "planner_step_ratio": cost, "plots": plots},
                                [table, targets.table("memory")], notes)


def timelines(net, x, y, F, memory, extra=None):
    """Live bytes after each op of one step: planner on, off, and any extra variants."""
    out = {}
    with planner(True):
        out["planner"] = _step(net, x, y, F, memory, timeline=True)[0].timeline
    with planner(False):
        out["no planner"] = _step(net, x, y, F, memory, timeline=True)[0].timeline
    for name, fn in (extra or {}).items():
        net.zero_grad()
        with memory.timeline() as m:
            fn()
        out[name] = m.timeline
    return out


def _plots(rows, net, x, y, F, memory):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib missing: no plots)")
        return []
    os.makedirs(harness.RESULTS_DIR, exist_ok=True)
    paths = []
    extra = {}
    try:
        from gpuad.checkpoint import checkpoint_sequential
        extra["checkpoint sqrt(L)"] = lambda: F.mse_loss(checkpoint_sequential(list(net), x), y).backward()
    except ImportError:
        pass
    tls = timelines(net, x, y, F, memory, extra)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, tl in tls.items():
        ax.plot(range(len(tl)), [v / 2 ** 20 for _, _, v in tl], label=name, drawstyle="steps-post")
    ax.set_xlabel("op (forward, then backward)")
    ax.set_ylabel("live MiB allocated by the step")
    ax.set_title("One training step of an 8-layer MLP (width 1024, batch 256)")
    ax.legend()
    fig.tight_layout()
    p = os.path.join(harness.RESULTS_DIR, "memory_timeline.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    d = [r["depth"] for r in rows]
    for key, label in (("peak_no_planner", "no planner"), ("peak_planner", "planner"),
                       ("predicted", "predicted"), ("floor", "floor")):
        ax.plot(d, [r[key] / 2 ** 20 for r in rows], marker="o", label=label)
    ax.set_xlabel("depth")
    ax.set_ylabel("peak MiB")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.legend()
    ax.set_title("Peak memory of one step vs depth")
    fig.tight_layout()
    p = os.path.join(harness.RESULTS_DIR, "memory_peaks.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    print(f"  plots: {', '.join(os.path.relpath(q) for q in paths)}")
    return paths

