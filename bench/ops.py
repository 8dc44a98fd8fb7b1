"""Suite `ops`: single ops on large arrays where gpuad's numpy code differs from a
plain ufunc: exact GELU (numpy has no erf; float32 goes through gpuad's erf
table), forward plus backward, 4M float32 elements, against torch eager; with the
CPU kernels (Numba: GELU's forward in one pass, its gradient in two around numpy's
exp, the erf table in one parallel pass) and without (GPUAD_CPU_KERNELS=numpy); each
CPU kernel alone against the numpy code it replaces (erf, a sum over the batch, layer
norm's forward, layer and rms norm, softmax and cross-entropy forward+backward, Adam's update
in one pass) and what waking the kernels' sleeping threads costs; and a GEMM right
after a parallel kernel.

Before the erf table (issue 10) exact GELU took 25x torch's time, erf running
per element in Python; with the table and numpy's passes, 9-12x.
"""
import os
import time

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
    ktable, kernel_ratios = _single_kernels(rounds)
    notes += [f"{name}: the kernel {r:.2f}x the numpy code's time" if "vs torch" not in name else
              f"{name}: {r:.2f}x" for name, r in kernel_ratios.items()]
    # a BLAS GEMM right after a parallel CPU kernel, against one after a numpy pass: the
    # kernels' idle threads must sleep (OpenMP's passive wait), not spin on the cores
    from gpuad.backends import cpu_kernels
    from gpuad.backends.numpy_backend import ERF_TABLE
    a = np.random.default_rng(1).standard_normal((512, 512)).astype(np.float32)
    y = np.empty_like(x)

    def gemm_after(before):
        def run():
            before()
            t0 = time.perf_counter()
            a @ a
            return time.perf_counter() - t0
        return run
    after = {"GEMM after a numpy pass": gemm_after(lambda: np.multiply(x, 2.0, out=y)),
             "GEMM after a parallel CPU kernel": gemm_after(lambda: cpu_kernels.erf(x, ERF_TABLE, y))}
    times = {k: [] for k in after}
    for _ in range(rounds * 3):
        for k, fn in after.items():
            times[k].append(fn())
    slow = harness.median([p / q for p, q in zip(times["GEMM after a parallel CPU kernel"],
                                                 times["GEMM after a numpy pass"])])
    gtable = harness.Table("ops: a 512 x 512 float32 GEMM right after ...", ["before it", "ms"])
    for k in after:
        gtable.add(k, harness.median(times[k]) * 1e3)
    gtable.print()
    notes.append(targets.check("GEMM after a parallel kernel vs after a numpy pass", slow, 1.1, "x"))
    if "gpuad gelu" in ratios:
        notes.append(f"exact GELU: {ratios['gpuad gelu']:.1f}x torch with the CPU kernels, "
                     f"{ratios['gpuad gelu, CPU kernels off']:.1f}x without (25x before the erf table); the tanh "
                     f"form {ratios.get('gpuad gelu, tanh form', float('nan')):.1f}x (no kernel: numpy's tanh)")
        notes.append(targets.check("exact GELU fwd+bwd on 4M float32 vs torch", ratios["gpuad gelu"], 1.5, "x"))
    for n in notes:
        print("  " + n)
    return harness.write_report("ops", {"ratios_vs_torch": ratios, "gemm_after_kernel": slow,
                                        "kernels_vs_numpy": kernel_ratios},
                                [table, ktable, gtable, targets.table("ops")], notes)


def _single_kernels(rounds):
    """The CPU kernels one at a time against the numpy code they replace (the same bits),
    and torch where it has the op: erf of 4M float32, a sum over the batch (a bias
    gradient, 1024 x 4096), layer norm's forward (4096 x 1024), an Adam step on 4M
    parameters (torch's too); and the erf of one 16K
    chunk on all threads against one (what waking the sleeping pool costs)."""
    import numpy as np
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import providers
    from gpuad.backends.numpy_backend import ERF_TABLE
    rng = np.random.default_rng(2)
    x = gpuad.tensor(rng.standard_normal(1 << 22).astype(np.float32))
    g = gpuad.tensor(rng.standard_normal((1024, 4096)).astype(np.float32))
    h = gpuad.tensor(rng.standard_normal((4096, 1024)).astype(np.float32))
    w, b = gpuad.ones(1024), gpuad.zeros(1024)
    hg = gpuad.tensor(h.numpy(), requires_grad=True)
    wg, bg = gpuad.ones(1024, requires_grad=True), gpuad.zeros(1024, requires_grad=True)
    up = gpuad.tensor(rng.standard_normal((4096, 1024)).astype(np.float32))
    p = gpuad.nn.Parameter(gpuad.tensor(rng.standard_normal(1 << 22).astype(np.float32)))
    p.grad = gpuad.tensor(rng.standard_normal(1 << 22).astype(np.float32))
    adam = gpuad.optim.Adam([p], lr=1e-3)
    cg = gpuad.tensor(rng.standard_normal((4096, 2048)).astype(np.float32), requires_grad=True)
    cu = gpuad.tensor(rng.standard_normal((4096, 2048)).astype(np.float32))
    ct = gpuad.tensor(rng.integers(0, 2048, 4096))
    ops = {"erf, 4M float32": lambda: gpuad.erf(x),
           "sum over the batch, 1024 x 4096": lambda: g.sum(dim=0),
           "layer_norm forward, 4096 x 1024": lambda: F.layer_norm(h, (1024,), w, b),
           "layer_norm forward+backward, 4096 x 1024": lambda: F.layer_norm(hg, (1024,), wg, bg).backward(up),
           "rms_norm forward+backward, 4096 x 1024": lambda: F.rms_norm(hg, (1024,), wg).backward(up),
           "Adam step, 4M float32 parameters": adam.step,
           "softmax forward+backward, 4096 x 2048": lambda: F.softmax(cg, -1).backward(cu),
           "cross_entropy forward+backward, 4096 x 2048": lambda: F.cross_entropy(cg, ct).backward()}
    variants = {}
    for name, fn in ops.items():
        variants[f"{name}: kernels"] = fn
        variants[f"{name}: numpy"] = _kernels_off(fn)
    if harness.have_torch():
        import torch
        ht, wt, bt = torch.tensor(h.numpy()), torch.ones(1024), torch.zeros(1024)
        variants["layer_norm forward, 4096 x 1024: torch"] = lambda: torch.nn.functional.layer_norm(ht, (1024,), wt, bt)
        htg, wtg, btg = (torch.tensor(a.numpy(), requires_grad=True) for a in (hg, wg, bg))
        upt = torch.tensor(up.numpy())
        variants["layer_norm forward+backward, 4096 x 1024: torch"] = \
            lambda: torch.nn.functional.layer_norm(htg, (1024,), wtg, btg).backward(upt)
        variants["rms_norm forward+backward, 4096 x 1024: torch"] = \
            lambda: torch.nn.functional.rms_norm(htg, (1024,), wtg).backward(upt)
        cgt, cut, ctt = torch.tensor(cg.numpy(), requires_grad=True), torch.tensor(cu.numpy()), torch.tensor(ct.numpy())
        variants["softmax forward+backward, 4096 x 2048: torch"] = lambda: torch.softmax(cgt, -1).backward(cut)
        variants["cross_entropy forward+backward, 4096 x 2048: torch"] = \
            lambda: torch.nn.functional.cross_entropy(cgt, ctt).backward()
        pt = torch.nn.Parameter(torch.tensor(p.numpy()))
        pt.grad = torch.tensor(p.grad.numpy())
        variants["Adam step, 4M float32 parameters: torch"] = torch.optim.Adam([pt], lr=1e-3).step
    m = providers.cpu_kernel_module()
    chunk = x.numpy()[:1 << 14]
    out = np.empty_like(chunk)
    (c0, c1, c2, c3), last = ERF_TABLE
    last = np.float32(last)
    if m is not None:
        def after_numpy(kernel):
            def run():
                np.multiply(x.numpy(), 2.0)            # the pool falls asleep meanwhile
                kernel(chunk, out, c0, c1, c2, c3, last)
            return run
        variants["erf of a 16K chunk after a numpy pass: all threads"] = after_numpy(m.erf32)
        variants["erf of a 16K chunk after a numpy pass: one thread"] = after_numpy(m.erf32_serial)
    samples = harness.measure(variants, rounds=rounds, warmup=1, label="ops kernels")
    table = harness.Table(f"ops: the CPU kernels against the numpy code they replace (median of {rounds} "
                          f"interleaved rounds)", ["variant", "ms"])
    for name in variants:
        table.add(name, harness.median(samples[name]) * 1e3)
    table.print()
    ratios = {name: harness.ratio(samples, f"{name}: kernels", f"{name}: numpy") for name in ops}
    if "layer_norm forward, 4096 x 1024: torch" in samples:
        ratios["layer_norm forward vs torch"] = harness.ratio(samples, "layer_norm forward, 4096 x 1024: kernels",
                                                              "layer_norm forward, 4096 x 1024: torch")
    for name in ("layer_norm forward+backward, 4096 x 1024", "rms_norm forward+backward, 4096 x 1024",
                 "softmax forward+backward, 4096 x 2048", "cross_entropy forward+backward, 4096 x 2048"):
        if f"{name}: torch" in samples:
            ratios[f"{name.split(',')[0]} vs torch"] = harness.ratio(samples, f"{name}: kernels", f"{name}: torch")
    if "Adam step, 4M float32 parameters: torch" in samples:
        ratios["Adam step vs torch"] = harness.ratio(samples, "Adam step, 4M float32 parameters: kernels",
                                                     "Adam step, 4M float32 parameters: torch")
    return table, ratios
