"""Suite `cnn`: a ResNet-style CNN training step on the CPU, against torch eager.

gpuad.demo.SmallResNet with three stages of two basic blocks (16, 32, 64 channels;
conv, batch norm, ReLU, residual adds, global pooling), 32 x 32 x 3 images, batch 64,
float32, SGD with momentum: the step (zero_grad, forward, cross-entropy, backward,
step) eager, compiled (gpuad.compile), with each block checkpointed, and torch's on
the same weights; times are medians of per-round ratios, interleaved.

Memory: the step's peak and its activation peak (forward and recompute buffers) as
gpuad.memory measures them, without and with per-block checkpointing, and the
backward peak the planner predicts against the measured one.

Where the eager step's time goes: the primitives' numpy calls (through gpuad's xp
namespace) timed by name: GEMMs (matmul), im2col (stack), padding, reductions.

The im2col workspace: one convolution of the widest layer (16 -> 16 channels at
32 x 32, batch 64) at the default WORKSPACE and at a quarter of it: the bytes it
holds beyond its input and output, measured (gpuad.memory, and tracemalloc for
numpy's own count), against the bound max(WORKSPACE, one sample's columns) plus
one chunk's GEMM result.

Targets (issue 25): step <= 1.5x torch eager; compiled <= 1.2x torch; per-block
checkpointing (the stem and each block) cuts the activation peak >= 2.5x at <= 1.4x
the time; the planned backward peak equals the measured one (without checkpointing:
with it the planner's recompute figure is an upper estimate, reported); the
workspace within its bound.
"""
import math
import tracemalloc

import numpy as np

from . import harness

BATCH, SIZE, BLOCKS = 64, 32, (2, 2, 2)


def _make(checkpoint=False):
    import gpuad
    from gpuad.demo import SmallResNet
    gpuad.manual_seed(0)
    return SmallResNet(in_channels=3, blocks=BLOCKS, checkpoint=checkpoint)


def _gpuad_step(net, x, y):
    import gpuad
    import gpuad.nn.functional as F
    opt = gpuad.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def torch_twin(net):
    """The same network in torch, with net's parameters and buffers (torch's keys)."""
    import torch
    import torch.nn as tn

    class Block(tn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tn.BatchNorm2d(cout)
            self.conv2 = tn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tn.BatchNorm2d(cout)
            self.skip = tn.Sequential(tn.Conv2d(cin, cout, 1, stride, bias=False), tn.BatchNorm2d(cout)) \
                if stride != 1 or cin != cout else tn.Identity()

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))

    class Net(tn.Module):
        def __init__(self):
            super().__init__()
            w = net.stem[0].out_channels
            self.stem = tn.Sequential(tn.Conv2d(net.stem[0].in_channels, w, 3, 1, 1, bias=False),
                                      tn.BatchNorm2d(w), tn.ReLU())
            self.blocks = tn.Sequential(*[Block(b.conv1.in_channels, b.conv1.out_channels, b.conv1.stride[0])
                                          for b in net.blocks])
            c = net.head[2].in_features
            self.head = tn.Sequential(tn.AdaptiveAvgPool2d(1), tn.Flatten(), tn.Linear(c, net.head[2].out_features))

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    t = Net()
    t.load_state_dict({k: torch.from_numpy(np.array(v.numpy())) for k, v in net.state_dict().items()})
    return t


def _torch_step(net, x, y):
    import torch
    tnet = torch_twin(net)
    opt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x.numpy()), torch.from_numpy(y.numpy())

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tnet(xt), yt)
        loss.backward()
        opt.step()
        return loss
    return step


def _memory(checkpoint, x, y):
    """(peak, activation peak, predicted backward peak, measured backward peak) of one step."""
    import gpuad
    import gpuad.nn.functional as F
    net = _make(checkpoint)
    with gpuad.memory.track() as m:
        loss = F.cross_entropy(net(x), y)
        predicted = gpuad.memory.predict_backward_peak(loss)
        with gpuad.memory.track() as mb:
            loss.backward()
        del loss
    s = m.stats()
    return s["peak_bytes"], s["activation_peak_bytes"], predicted, mb.peak_bytes_absolute


def _workspace(workspace):
    """One conv of the widest layer: (bytes held beyond input and output by gpuad.memory's
    count, by tracemalloc's, the bound, whole-batch columns)."""
    import gpuad
    from gpuad.backends import numpy_ns
    from gpuad.ops import conv as K
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 16, SIZE, SIZE)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    pad = ((1, 1), (1, 1))
    before = K.WORKSPACE
    K.WORKSPACE = workspace
    try:
        def run():
            return K.conv.fwd(numpy_ns, x, w, None, (1, 1), pad, (1, 1), 1)
        run()
        tracemalloc.start()
        with gpuad.memory.track() as m:
            y = run()
        real = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        K.WORKSPACE = before
    padded = 16 * BATCH * (SIZE + 2) ** 2 * 4            # the channels-first padded input
    per_sample = 16 * 9 * SIZE * SIZE * 4
    chunk = max(1, workspace // per_sample)
    bound = max(workspace, per_sample) + 16 * min(chunk, BATCH) * SIZE * SIZE * 4    # columns + one GEMM result
    held = m.stats()["peak_bytes"] - y.nbytes - padded
    return held, real - y.nbytes - padded, bound, per_sample * BATCH


def _by_call(step, calls=3):
    """Where an eager step's time goes: each numpy call the primitives make through the
    xp namespace (numpy_ns), timed and summed by name over `calls` steps; the rest
    (Python, the engine, ops the generated entries call directly) is the remainder."""
    import time
    from gpuad.backends import numpy_ns
    names = ("matmul", "stack", "pad", "mean", "sum", "add", "subtract", "multiply", "divide", "where",
             "less_equal", "concatenate", "swapaxes", "reshape", "getitem", "maximum", "sqrt", "exp", "log")
    spent = {}

    def timed(fn, name):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return call
    patched = [n for n in names if hasattr(numpy_ns, n)]
    for n in patched:
        setattr(numpy_ns, n, timed(getattr(numpy_ns, n), n))
    try:
        step()
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        total = (time.perf_counter() - t0) / calls
    finally:
        for n in patched:
            delattr(numpy_ns, n)
    rows = sorted(((n, v / calls) for n, v in spent.items()), key=lambda r: -r[1])
    return total, rows


def _layers(rounds, have_torch):
    """One 3 x 3 convolution forward per stage width (batch 64, padding 1), gpuad against
    torch.nn.functional.conv2d: {width: (gpuad ms, torch ms or None, GFLOP)}."""
    import gpuad
    import gpuad.nn.functional as F
    out = {}
    for c, s in ((16, SIZE), (32, SIZE // 2), (64, SIZE // 4)):
        rng = np.random.default_rng(c)
        x = rng.standard_normal((BATCH, c, s, s)).astype(np.float32)
        w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
        xg, wg = gpuad.tensor(x), gpuad.tensor(w)
        variants = {"gpuad": lambda: F.conv2d(xg, wg, padding=1)}
        if have_torch:
            import torch
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            variants["torch"] = lambda: torch.nn.functional.conv2d(xt, wt, padding=1)
        t = harness.measure(variants, rounds=rounds, warmup=2, label=f"conv {c}")
        out[c] = (harness.median(t["gpuad"]) * 1e3, harness.median(t["torch"]) * 1e3 if have_torch else None,
                  2 * c * c * 9 * s * s * BATCH / 1e9, s)
    return out


def run(full=False):
    import gpuad
    rounds = 9 if full else 5
    rng = np.random.default_rng(0)
    x = gpuad.tensor(rng.standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32))
    y = gpuad.tensor(rng.integers(0, 10, BATCH))
    variants = {"gpuad eager": _gpuad_step(_make(), x, y),
                "gpuad compiled": gpuad.compile(_gpuad_step(_make(), x, y)),
                "gpuad, each block checkpointed": _gpuad_step(_make(checkpoint=True), x, y)}
    have_torch = harness.have_torch()
    if have_torch:
        variants["torch eager"] = _torch_step(_make(), x, y)
    base = "torch eager" if have_torch else "gpuad eager"
    samples = harness.measure(variants, rounds=rounds, warmup=2, label="cnn")
    times = harness.Table(f"cnn: a SmallResNet{BLOCKS} training step, {SIZE}x{SIZE}x3, batch {BATCH}, float32, "
                          f"SGD (median of {rounds} interleaved rounds)", ["variant", "ms", f"vs {base}",
                                                                          "vs gpuad eager"])
    rows = {}
    for name in variants:
        rows[name] = {"ms": harness.median(samples[name]) * 1e3, "vs_base": harness.ratio(samples, name, base),
                      "vs_eager": harness.ratio(samples, name, "gpuad eager")}
        times.add(name, rows[name]["ms"], f"{rows[name]['vs_base']:.2f}x", f"{rows[name]['vs_eager']:.2f}x")
    times.print()
    total, calls = _by_call(variants["gpuad eager"])
    ctab = harness.Table(f"cnn: where the eager step's time goes ({total * 1e3:.0f} ms per step with the "
                         f"timers; the primitives' xp calls, summed by name)", ["xp call", "ms per step", "share"])
    for name, sec in calls[:8]:
        ctab.add(name, sec * 1e3, f"{sec / total:.0%}")
    rest = total - sum(sec for _, sec in calls[:8])
    ctab.add("everything else", rest * 1e3, f"{rest / total:.0%}")
    ctab.print()

    layers = _layers(rounds, have_torch)
    ltab = harness.Table(f"cnn: one 3x3 convolution forward, batch {BATCH}, padding 1 (median ms; GFLOP/s)",
                         ["channels, size", "gpuad ms", "GFLOP/s", "torch ms", "GFLOP/s"])
    for c, (g_ms, t_ms, gf, sz) in layers.items():
        ltab.add(f"{c} -> {c}, {sz}x{sz}", g_ms, gf / g_ms * 1e3, t_ms if t_ms else "-", gf / t_ms * 1e3 if t_ms else "-")
    ltab.print()

    mib = 1 / 2 ** 20
    mem = {"none": _memory(False, x, y), "per block": _memory(True, x, y)}
    mtab = harness.Table("cnn: one step's memory (gpuad.memory, MiB)",
                         ["checkpointing", "peak", "activation peak", "backward peak planned", "measured"])
    for k, (peak, act, planned, measured) in mem.items():
        mtab.add(k, peak * mib, act * mib, planned * mib, measured * mib)
    mtab.print()

    work = {w: _workspace(w) for w in (32 << 20, 8 << 20)}
    wtab = harness.Table("cnn: the im2col workspace of one 16 -> 16 conv at 32x32, batch 64 (MiB)",
                         ["WORKSPACE", "held (gpuad.memory)", "held (tracemalloc)", "bound", "all columns"])
    for w, (held, real, bound, whole) in work.items():
        wtab.add(w * mib, held * mib, real * mib, bound * mib, whole * mib)
    wtab.print()

    targets = harness.Targets()
    notes = []
    if have_torch:
        notes.append(targets.check("eager step vs torch eager", rows["gpuad eager"]["vs_base"], 1.5, "x"))
        notes.append(targets.check("compiled step vs torch eager", rows["gpuad compiled"]["vs_base"], 1.2, "x"))
    cut = mem["none"][1] / mem["per block"][1]
    notes.append(targets.check("per-block checkpointing: activation peak cut", cut, 2.5, "x", at_least=True))
    notes.append(targets.check("per-block checkpointing: time vs eager",
                               rows["gpuad, each block checkpointed"]["vs_eager"], 1.4, "x"))
    planned, measured = mem["none"][2:]
    notes.append(targets.check("planned backward peak / measured", planned / measured, 1.0, "", fmt="{:.4f}"))
    planned, measured = mem["per block"][2:]
    notes.append(f"with per-block checkpointing the planner's figure is an upper estimate (each recompute "
                 f"counted at its whole forward's bytes, gpuad/checkpoint.py _inner_peak): {planned / measured:.2f}x "
                 f"the measured backward peak")
    for w, (held, real, bound, _) in work.items():
        notes.append(targets.check(f"workspace held / bound at WORKSPACE {w >> 20} MiB", held / bound, 1.0))
    targets.table("cnn").print()
    for n in notes:
        print("  " + n)
    data = {"rows": rows, "memory": {k: dict(zip(("peak", "activation_peak", "planned_backward_peak",
                                                  "measured_backward_peak"), v)) for k, v in mem.items()},
            "workspace": {str(w): dict(zip(("held", "held_tracemalloc", "bound", "all_columns"), v))
                          for w, v in work.items()},
            "per_block_activation_cut": cut}
    assert math.isfinite(cut)
    data["eager_by_call_ms"] = {n: v * 1e3 for n, v in calls}
    data["conv_layers"] = {str(c): dict(zip(("gpuad_ms", "torch_ms", "gflop", "size"), v)) for c, v in layers.items()}
    return harness.write_report("cnn", data, [times, ctab, ltab, mtab, wtab, targets.table("cnn")], notes)
