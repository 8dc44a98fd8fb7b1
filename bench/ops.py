"""Suite `ops`: single ops on large arrays where gpuad's numpy code differs from a
plain ufunc: exact GELU (numpy has no erf; float32 goes through gpuad's erf
table), forward plus backward, 4M float32 elements, against torch eager; with the
CPU kernels (Numba: GELU's forward in one pass, its gradient in two around numpy's
exp, the erf table in one parallel pass) and without (GPUAD_CPU_KERNELS=numpy).

Before the erf table (issue 10) exact GELU took 25x torch's time, erf running
per element in Python; with the table and numpy's passes, 9-12x.
"""
import os

from . import harness


def _kernels_off(fn):
    def run():
        os.environ["GPUAD_CPU_KERNELS"] = "numpy"
        try:
            fn()
        finally:
            del os.environ["GPUAD_CPU_KERNELS"]
    return run


def run(full=False):
    import numpy as np
    import gpuad
    rounds = 15 if full else 7
    x = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32)
    g = gpuad.tensor(x, requires_grad=True)
    variants = {"gpuad gelu": lambda: gpuad.gelu(g).sum().backward(),
                "gpuad gelu, CPU kernels off": _kernels_off(lambda: gpuad.gelu(g).sum().backward()),
                "gpuad gelu, tanh form": lambda: gpuad.gelu(g, approximate="tanh").sum().backward()}
    if harness.have_torch():
        import torch
        t = torch.tensor(x, requires_grad=True)
        variants["torch gelu"] = lambda: torch.nn.functional.gelu(t).sum().backward()
        variants["torch gelu, tanh form"] = lambda: torch.nn.functional.gelu(t, approximate="tanh").sum().backward()
    samples = harness.measure(variants, rounds=rounds, warmup=1, label="ops")
    table = harness.Table(f"ops: GELU forward+backward on 4M float32 (median of {rounds} interleaved rounds)",
                          ["variant", "ms", "vs torch"])
    ratios = {}
    for name in variants:
        peer = name.replace("gpuad", "torch").replace(", CPU kernels off", "")
        r = ""
        if name.startswith("gpuad") and peer in samples:
            ratios[name] = harness.ratio(samples, name, peer)
            r = f"{ratios[name]:.1f}x"
        table.add(name, harness.median(samples[name]) * 1e3, r)
    table.print()
    notes = []
    targets = harness.Targets()
    if "gpuad gelu" in ratios:
        notes.append(f"exact GELU: {ratios['gpuad gelu']:.1f}x torch with the CPU kernels, "
                     f"{ratios['gpuad gelu, CPU kernels off']:.1f}x without (25x before the erf table); the tanh "
                     f"form {ratios.get('gpuad gelu, tanh form', float('nan')):.1f}x (no kernel: numpy's tanh)")
        notes.append(targets.check("exact GELU fwd+bwd on 4M float32 vs torch", ratios["gpuad gelu"], 1.5, "x"))
    for n in notes:
        print("  " + n)
    return harness.write_report("ops", {"ratios_vs_torch": ratios}, [table, targets.table("ops")], notes)
