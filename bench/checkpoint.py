"""Suite `checkpoint`: memory and time of checkpointing policies on deep MLPs.

tanh MLPs, batch 256, float32: depths 16 and 64 at width 1024, and 256 at
width 256 (at width 1024 a 256-layer step takes seconds per policy, too long
for the default preset). Policies: no checkpointing; sqrt(L) segments; the
budget scheduler at the sqrt schedule's activation peak and at half of it;
and, when torch is installed, torch.utils.checkpoint.checkpoint_sequential
with the same sqrt(L) segments on the same weights.

Reported per policy: the step's peak bytes (parameters, their gradients and
the input included), its activation bytes (forward and recompute buffers,
gradients excluded, the chain input included), step time relative to no
checkpointing (median of per-round ratios, interleaved), and the number of
layer forwards recomputed.

Targets (issue 5): sqrt(L) activations <= 1.1 x 2 sqrt(L) a; sqrt(L) time <=
1.40x; at the sqrt peak the scheduler recomputes no more layers; at half of it
L=64 runs at most 2x slower; no measured activation peak exceeds its budget;
gpuad's sqrt(L) step at least as fast as torch's.
"""
import math
import os

import numpy as np

from . import harness


def _configs(full):
    return [(16, 1024), (64, 1024), (256, 256)]


def run(full=False):
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import memory, nn
    from gpuad.checkpoint import schedule_for

    batch = 256
    rounds = 9 if full else 5
    rows = []
    have_torch = harness.have_torch()
    configs = _configs(full)
    with harness.Progress(len(configs), "checkpoint") as tick:
        for depth, width in configs:
            rows += _one_depth(depth, width, batch, rounds, gpuad, F, memory, nn, schedule_for, have_torch)
            tick()
    mib = 1 / 2 ** 20
    table = harness.Table(f"checkpoint: one training step of a tanh MLP, batch {batch}, float32 "
                          f"(MiB; time vs no checkpointing, median of {rounds} interleaved rounds)",
                          ["depth x width", "policy", "peak", "activations", "act / (2 sqrt(L) a)",
                           "time", "recomputed layers"])
    for r in rows:
        table.add(f"{r['depth']} x {r['width']}", r["policy"], r["peak"] * mib if r["peak"] else "-",
                  r["activations"] * mib if r["activations"] else "-",
                  f"{r['act_vs_formula']:.3f}" if r["act_vs_formula"] else "-",
                  f"{r['time_ratio']:.3f}x", r["recomputed"] if r["recomputed"] is not None else "-")
    table.print()
    targets = harness.Targets()
    notes = _check_targets(rows, targets)
    targets.table("checkpoint").print()
    for n in notes:
        print("  " + n)
    plots = _plot(rows)
    return harness.write_report("checkpoint", {"rows": rows, "plots": plots}, [table, targets.table("checkpoint")],
                                notes)


def _one_depth(depth, width, batch, rounds, gpuad, F, memory, nn, schedule_for, have_torch):
    rng = np.random.default_rng(depth)
    gpuad.manual_seed(depth)
    net = nn.MLP([width] * (depth + 1), activation="tanh", output_activation="tanh")
    deep_init(net, rng)
    layers = list(net)
    x = gpuad.tensor(rng.standard_normal((batch, width)).astype(np.float32))
    y = gpuad.tensor(rng.standard_normal((batch, width)).astype(np.float32))
    a = x.nbytes
    param_bytes = sum(p.nbytes for p in net.parameters())
    k = math.ceil(math.sqrt(depth))

    def step(**how):
        def go():
            net.zero_grad()
            out = gpuad.checkpoint_sequential(layers, x, **how) if how else net(x)
            F.mse_loss(out, y).backward()
        return go

    def measure_memory(**how):
        net.zero_grad()
        with memory.track() as m:
            out = gpuad.checkpoint_sequential(layers, x, **how) if how else net(x)
            out.backward(gpuad.ones(out.shape))       # a loss would add buffers of its own
            del out
        s = m.stats()
        return param_bytes + 2 * a + s["peak_bytes"], s["activation_peak_bytes"] + a

    policies = {"none": {}, "sqrt(L)": {"segments": k}}
    sq_sched = schedule_for(layers, x, segments=k)
    mem = {name: measure_memory(**how) for name, how in policies.items()}
    sqrt_act = mem["sqrt(L)"][1] - a                    # the sqrt schedule's activation peak (budget units)
    for label, budget in (("budget = sqrt peak", sqrt_act), ("budget = sqrt peak / 2", sqrt_act // 2)):
        policies[label] = {"budget_bytes": int(budget)}
        mem[label] = measure_memory(budget_bytes=int(budget))
    variants = {name: step(**how) for name, how in policies.items()}
    torch_name = None
    if have_torch:
        torch_name = "torch checkpoint_sequential sqrt(L)"
        variants[torch_name] = _torch_step(net, x, y, k)
        variants["torch eager"] = _torch_step(net, x, y, None)
    samples = harness.measure(variants, rounds=rounds, warmup=1, label=f"checkpoint L={depth}")
    rows = []
    formula = 2 * math.sqrt(depth) * a
    for name, how in policies.items():
        sched = sq_sched if name == "sqrt(L)" else (
            schedule_for(layers, x, budget_bytes=how["budget_bytes"]) if "budget_bytes" in how else None)
        peak, act = mem[name]
        rows.append({"depth": depth, "width": width, "policy": name, "peak": peak, "activations": act,
                     "act_vs_formula": act / formula, "time_ratio": harness.ratio(samples, name, "none"),
                     "recomputed": sched.recomputed_layers if sched is not None else 0,
                     "budget": how.get("budget_bytes"), "activation_bytes_per_layer": a,
                     "ms": harness.median(samples[name]) * 1e3})
    if torch_name:
        for name in (torch_name, "torch eager"):
            rows.append({"depth": depth, "width": width, "policy": name, "peak": None, "activations": None,
                         "act_vs_formula": None, "time_ratio": harness.ratio(samples, name, "none"),
                         "recomputed": None, "budget": None, "activation_bytes_per_layer": a,
                         "ms": harness.median(samples[name]) * 1e3,
                         "gpuad_sqrt_vs_this": harness.ratio(samples, "sqrt(L)", name)})
    return rows


def deep_init(net, rng):
    """Xavier-uniform weights with tanh's gain 5/3, so signals and gradients keep their
    scale through hundreds of layers. With PyTorch's default init each tanh layer
    shrinks the gradient's variance about 3x, and by layer 100 backward runs on
    subnormal floats, which makes every GEMM (gpuad's and torch's) 10x slower."""
    for layer in net:
        n_in, n_out = layer.in_features, layer.out_features
        bound = 5 / 3 * math.sqrt(6 / (n_in + n_out))
        layer.weight.data[...] = rng.uniform(-bound, bound, size=(n_out, n_in))
        layer.bias.data[...] = 0


def _torch_step(net, x, y, segments):
    import torch
    from torch.utils.checkpoint import checkpoint_sequential as tcs
    mods = []
    for layer in net:
        lin = torch.nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(layer.weight.numpy()))
            lin.bias.copy_(torch.from_numpy(layer.bias.numpy()))
        mods += [lin, torch.nn.Tanh()]
    tnet = torch.nn.Sequential(*mods)
    xt, yt = torch.from_numpy(x.numpy()), torch.from_numpy(y.numpy())

    def go():
        tnet.zero_grad(set_to_none=True)
        out = tcs(tnet, segments, xt, use_reentrant=False) if segments else tnet(xt)
        torch.nn.functional.mse_loss(out, yt).backward()
    return go


def _check_targets(rows, targets):
    notes = []
    by = {(r["depth"], r["policy"]): r for r in rows}
    for depth in sorted({r["depth"] for r in rows}):
        sq = by[(depth, "sqrt(L)")]
        notes.append(targets.check(f"L={depth}: sqrt(L) activations, in units of 2 sqrt(L) a", sq["act_vs_formula"], 1.1))
        notes.append(targets.check(f"L={depth}: sqrt(L) time vs no checkpointing", sq["time_ratio"], 1.40, "x"))
        b1 = by[(depth, "budget = sqrt peak")]
        notes.append(f"L={depth}: scheduler at the sqrt peak recomputes {b1['recomputed']} layers vs "
                     f"sqrt(L)'s {sq['recomputed']}, time {b1['time_ratio']:.3f}x")
        b2 = by[(depth, "budget = sqrt peak / 2")]
        notes.append(targets.check(f"L={depth}: scheduler at half the sqrt peak, time", b2["time_ratio"], 2, "x")
                     if depth == 64 else f"L={depth}: scheduler at half the sqrt peak: time {b2['time_ratio']:.3f}x")
        over = [r["policy"] for r in rows if r["depth"] == depth and r["budget"] is not None
                and r["activations"] - r["activation_bytes_per_layer"] > r["budget"]]
        notes.append(f"L={depth}: measured activation peak within its budget: " + ("yes" if not over else f"NO {over}"))
        t = by.get((depth, "torch checkpoint_sequential sqrt(L)"))
        if t:
            notes.append(targets.check(f"L={depth}: gpuad sqrt(L) step vs torch checkpoint_sequential",
                                       t["gpuad_sqrt_vs_this"], 1, "x"))
    return notes


def _plot(rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(harness.RESULTS_DIR, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in ("none", "sqrt(L)", "budget = sqrt peak", "budget = sqrt peak / 2"):
        pts = [(r["depth"], r["activations"] / r["activation_bytes_per_layer"]) for r in rows
               if r["policy"] == policy]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    d = sorted({r["depth"] for r in rows})
    ax.plot(d, [2 * math.sqrt(L) for L in d], "k--", linewidth=1, label="2 sqrt(L) (lecture)")
    ax.plot(d, [L + 1 for L in d], "k:", linewidth=1, label="L + 1")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("depth L")
    ax.set_ylabel("peak activations (in layer outputs)")
    ax.set_title("Activation memory of one step: O(L) vs O(sqrt L)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(harness.RESULTS_DIR, "checkpoint_peaks.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    print(f"  plot: {os.path.relpath(p)}")
    return [p]
