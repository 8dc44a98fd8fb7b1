"""Suite `overhead`: the Python cost of one recorded op.

A chain of 1,000 elementwise ops (repeating: multiply by a constant, sin,
add the input, tanh) on 1-element float64 tensors, forward plus backward,
against PyTorch eager on the same machine in the same process. Also the
no-grad forward alone. At this size the arithmetic is nothing: what is
measured is dispatch, recording, and the backward walk.

Targets (issues 2 and 22): forward+backward at most 0.6x PyTorch's time per op;
no-grad forward at most 1.5 us per op.
"""
from . import harness

N_OPS = 1000


def _chain(x, n=N_OPS):
    y = x
    for _ in range(n // 4):
        y = y * 1.0001
        y = y.sin()
        y = y + x
        y = y.tanh()
    return y


def run(full=False):
    import gpuad
    rounds = 101 if full else 51
    xg = gpuad.tensor([0.3], dtype="float64", requires_grad=True)
    variants = {}

    def gpuad_fwd_bwd():
        _chain(xg).sum().backward()

    def gpuad_nograd():
        with gpuad.no_grad():
            _chain(xg)

    def gpuad_accounted():
        with gpuad.memory.track():
            _chain(xg).sum().backward()
    variants["gpuad fwd+bwd"] = gpuad_fwd_bwd
    variants["gpuad no-grad fwd"] = gpuad_nograd
    variants["gpuad fwd+bwd, accounting on"] = gpuad_accounted
    if harness.have_torch():
        import torch
        xt = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)

        def torch_fwd_bwd():
            _chain(xt).sum().backward()

        def torch_nograd():
            with torch.no_grad():
                _chain(xt)
        variants["torch fwd+bwd"] = torch_fwd_bwd
        variants["torch no-grad fwd"] = torch_nograd

    samples = harness.measure(variants, rounds=rounds, warmup=3, label="overhead")
    per_op = {k: harness.median(v) / N_OPS * 1e6 for k, v in samples.items()}
    table = harness.Table(f"overhead: chain of {N_OPS} elementwise ops, 1-element float64 "
                          f"(median of {rounds} interleaved rounds)",
                          ["variant", "us per op", "vs torch (median of per-round ratios)"])
    data = {"per_op_us": per_op, "n_ops": N_OPS, "rounds": rounds}
    ratios = {}
    for name in variants:
        r = ""
        peer = name.replace("gpuad", "torch")
        if name.startswith("gpuad") and peer in samples:
            ratios[name] = harness.ratio(samples, name, peer)
            r = f"{ratios[name]:.2f}x"
        table.add(name, per_op[name], r)
    data["ratios_vs_torch"] = ratios
    table.print()
    notes, targets = [], harness.Targets()
    if "gpuad fwd+bwd" in ratios:
        notes.append(targets.check("forward+backward vs PyTorch per op", ratios["gpuad fwd+bwd"], 0.6, "x", "{:.2f}"))
    notes.append(targets.check("no-grad forward per op", per_op["gpuad no-grad fwd"], 1.5, " us", "{:.2f}"))
    extra = per_op["gpuad fwd+bwd, accounting on"] - per_op["gpuad fwd+bwd"]
    notes.append(f"memory accounting (gpuad.memory.track) adds {extra:.2f} us per op, about two arrays "
                 f"(an output and a gradient) per op")
    targets.table("overhead").print()
    for n in notes:
        print("  " + n)
    split = _breakdown(gpuad, xg, rounds)
    data["breakdown_us"] = split
    btable = harness.Table("overhead: where gpuad's time per op goes (gpuad alone, no torch variant "
                           "interleaved; median of rounds)", ["part", "us per op"])
    for k, v in split.items():
        btable.add(k, v)
    btable.print()
    return harness.write_report("overhead", data, [table, targets.table("overhead"), btable], notes)


def _breakdown(gpuad, xg, rounds):
    """gpuad's own split of a recorded op: forward, the walk, and the collector's share."""
    import gc

    def fwd():
        _chain(xg)

    def fwd_bwd():
        _chain(xg).sum().backward()

    def nograd():
        with gpuad.no_grad():
            _chain(xg)
    on = harness.measure({"fwd": fwd, "fwd+bwd": fwd_bwd, "no-grad": nograd}, rounds=rounds, warmup=3,
                         label="overhead breakdown")
    was = gc.isenabled()
    gc.disable()
    try:
        off = harness.measure({"fwd+bwd": fwd_bwd}, rounds=rounds, warmup=3, label="overhead, collector off")
    finally:
        if was:
            gc.enable()
    us = {k: harness.median(v) / N_OPS * 1e6 for k, v in on.items()}
    return {"forward+backward, alone": us["fwd+bwd"],
            "recorded forward": us["fwd"],
            "of which recording (forward minus no-grad)": us["fwd"] - us["no-grad"],
            "the backward walk (forward+backward minus forward)": us["fwd+bwd"] - us["fwd"],
            "the garbage collector (forward+backward, collector on minus off)":
                us["fwd+bwd"] - harness.median(off["fwd+bwd"]) / N_OPS * 1e6}
