"""Suite `jacobian`: full Jacobians of three chains of 8 dense tanh layers by forward
mode, reverse mode and gpuad.jacobian's matrix-chain order (auto), and the cost of
one jvp against one forward pass.

Chains (float32, one input vector): narrowing 1024 -> 8 (reverse mode is the
optimum), widening 8 -> 1024 (forward mode is), hourglass 512 -> 8 -> 512 (neither:
the matrix-chain program splits at the bottleneck: 8 vjps into it, 8 jvps out of
it, one 512 x 8 x 512 product). Time as ratios in one process, interleaved,
medians. jvp: an 8 x 256 tanh MLP on a batch of 64, one tangent, against its
no-grad forward.

Targets (issue 15): auto within 1.1x of the faster fixed mode on the narrowing and
widening chains, and at least 5x faster than both on the hourglass; a jvp at most
3x its forward pass.
"""
import numpy as np

from . import harness

CHAINS = {"narrowing": [int(v) for v in np.geomspace(1024, 8, 9)],
          "widening": [int(v) for v in np.geomspace(8, 1024, 9)],
          "hourglass": [512, 181, 64, 23, 8, 23, 64, 181, 512]}


def _chain(widths):
    import gpuad
    gpuad.manual_seed(0)
    return gpuad.nn.Sequential(*[gpuad.nn.Sequential(gpuad.nn.Linear(a, b), gpuad.nn.Tanh())
                                 for a, b in zip(widths, widths[1:])])


def run(full=False):
    import gpuad
    targets, notes, rows = harness.Targets(), [], []
    for name, widths in CHAINS.items():
        net = _chain(widths)
        x = gpuad.tensor(np.random.default_rng(0).standard_normal(widths[0]).astype(np.float32))
        plans = {}
        variants = {}
        for mode in ("auto", "forward", "reverse"):
            J, (plan, cost) = gpuad.jacobian(net, x, mode=mode, return_plan=True)
            plans[mode] = (plan[0], cost, J.numpy())
            variants[mode] = (lambda m=mode: gpuad.jacobian(net, x, mode=m))
        np.testing.assert_allclose(plans["auto"][2], plans["reverse"][2], rtol=1e-3, atol=1e-5)
        samples = harness.measure(variants, rounds=11 if full else 9, warmup=1, label=f"jacobian {name}")
        ms = {k: harness.median(v) * 1e3 for k, v in samples.items()}
        best = min(ms["forward"], ms["reverse"])
        rows.append((name, " -> ".join(map(str, [widths[0], min(widths), widths[-1]])), plans["auto"][0],
                     ms["auto"], ms["forward"], ms["reverse"], plans["auto"][1], plans["forward"][1], plans["reverse"][1]))
        if name == "hourglass":
            notes.append(targets.check("hourglass: auto time / the faster fixed mode", ms["auto"] / best, 0.2, "x"))
        else:
            notes.append(targets.check(f"{name}: auto time / the faster fixed mode", ms["auto"] / best, 1.1, "x"))
    t = harness.Table("jacobian: chains of 8 dense tanh layers, full Jacobian",
                      ["chain", "widths", "auto plan", "auto ms", "forward ms", "reverse ms",
                       "modelled FLOPs auto", "forward", "reverse"])
    for r in rows:
        t.add(*r[:6], f"{r[6]:.3g}", f"{r[7]:.3g}", f"{r[8]:.3g}")
    # one jvp against one forward pass
    gpuad.manual_seed(0)
    mlp = gpuad.nn.MLP([256] * 9, activation="tanh")
    rng = np.random.default_rng(1)
    xb = gpuad.tensor(rng.standard_normal((64, 256)).astype(np.float32))
    tb = gpuad.tensor(rng.standard_normal((64, 256)).astype(np.float32))
    f = lambda v: mlp(v)                    # noqa: E731

    def forward():
        with gpuad.no_grad():
            f(xb)
    samples = harness.measure({"forward": forward, "jvp": lambda: gpuad.jvp(f, (xb,), (tb,))},
                              rounds=21 if full else 11, warmup=2, label="jacobian: jvp")
    r = harness.ratio(samples, "jvp", "forward")
    notes.append(targets.check("jvp / forward, 8 x 256 tanh MLP, batch 64", r, 3.0, "x"))
    t2 = harness.Table("jacobian: one jvp against one forward pass", ["variant", "ms"])
    for k, v in samples.items():
        t2.add(k, harness.median(v) * 1e3)
    for tab in (t, t2):
        tab.print()
    targets.table("jacobian").print()
    for n in notes:
        print("  " + n)
    return harness.write_report("jacobian", {"rows": [list(r) for r in rows]}, [t, t2, targets.table("jacobian")],
                                notes)
