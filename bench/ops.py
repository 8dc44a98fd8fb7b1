"""Suite `ops`: single ops on large arrays where gpuad's numpy code differs from a
plain ufunc: exact GELU (numpy has no erf; float32 goes through gpuad's erf
table), forward plus backward, 4M float32 elements, against torch eager.

Before the erf table (issue 10) exact GELU took 25x torch's time, erf running
per element in Python.
"""
from . import harness


def run(full=False):
    import numpy as np
    import gpuad
    rounds = 15 if full else 7
    x = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32)
    g = gpuad.tensor(x, requires_grad=True)
    variants = {"gpuad gelu": lambda: gpuad.gelu(g).sum().backward(),
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
        peer = name.replace("gpuad", "torch")
        r = ""
        if name.startswith("gpuad") and peer in samples:
            ratios[name] = harness.ratio(samples, name, peer)
            r = f"{ratios[name]:.1f}x"
        table.add(name, harness.median(samples[name]) * 1e3, r)
    table.print()
    notes = []
    if "gpuad gelu" in ratios:
        notes.append(f"exact GELU: {ratios['gpuad gelu']:.1f}x torch (25x before the erf table); the tanh form "
                     f"{ratios.get('gpuad gelu, tanh form', float('nan')):.1f}x")
    for n in notes:
        print("  " + n)
    return harness.write_report("ops", {"ratios_vs_torch": ratios}, [table], notes)
