"""Suite `transforms`: vmap, jacobians by structure, mixed precision (issue 27).

- per-example gradients: vmap(grad(loss), in_dims=(None, 0, 0)) of an 8 x 256 tanh MLP
  over a batch of 256, against one batched backward of the mean loss (target <= 3x);
- jacfwd of a 512-input function (512 -> 256 -> 64, tanh), vmapped over the basis,
  against the loop it replaced, one jvp per input element (target >= 10x faster);
- an hourglass written as a plain function (512 -> 4 -> 512, six tanh layers):
  gpuad.jacobian's auto mode, which finds the cuts in the trace, against the faster
  of forward and reverse mode (target <= 0.2x), and the same shape at 2048 wide;
- the GPT demo trained 300 steps with bfloat16 autocast against float32: the mean
  loss of the last 10 steps (target within 2%), and the time ratio.

Times are ratios within one process, interleaved, medians.
"""
import numpy as np

from . import harness


def _mlp(widths):
    import gpuad
    gpuad.manual_seed(0)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [gpuad.nn.Linear(a, b), gpuad.nn.Tanh()]
    return gpuad.nn.Sequential(*layers[:-1])


def per_example(targets, full):
    import gpuad
    import gpuad.nn.functional as F
    net = _mlp([256] * 9)
    rng = np.random.default_rng(0)
    x = gpuad.tensor(rng.standard_normal((256, 256)).astype(np.float32))
    y = gpuad.tensor(rng.integers(0, 256, 256))
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, xb, yb):
        return F.cross_entropy(gpuad.func.functional_call(net, p, (xb[None],)), yb[None])
    per = gpuad.vmap(gpuad.grad(loss), in_dims=(None, 0, 0))

    def batched():
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
    g = per(params, x, y)
    batched()
    mean = {k: v.numpy().mean(0) for k, v in g.items()}
    for k, p in net.named_parameters():          # the per-example mean is the batch gradient
        np.testing.assert_allclose(mean[k], p.grad.numpy(), rtol=2e-3, atol=1e-6)
    variants = {"per-example (vmap of grad)": lambda: per(params, x, y), "one batched backward": batched}
    if harness.have_torch():                     # the same computation in torch.func, for scale
        import torch
        tnet = torch.nn.Sequential(*[m for _ in range(8) for m in (torch.nn.Linear(256, 256), torch.nn.Tanh())][:-1])
        tp = {k: v.detach() for k, v in tnet.named_parameters()}
        tx, ty = torch.tensor(x.numpy()), torch.tensor(y.numpy())

        def tloss(p, xb, yb):
            return torch.nn.functional.cross_entropy(torch.func.functional_call(tnet, p, (xb[None],)), yb[None])
        tper = torch.func.vmap(torch.func.grad(tloss), in_dims=(None, 0, 0))

        def tbatched():
            tnet.zero_grad()
            torch.nn.functional.cross_entropy(tnet(tx), ty).backward()
        variants["torch.func per-example"] = lambda: tper(tp, tx, ty)
        variants["torch one batched backward"] = tbatched
    # (9 rounds: a call writes 512 MiB of per-example gradients, and on a VM the page faults of
    # memory the pool cannot hand back make single calls vary several-fold)
    samples = harness.measure(variants, rounds=11 if full else 9, warmup=1, label="transforms: per-example")
    r = harness.ratio(samples, "per-example (vmap of grad)", "one batched backward")
    note = targets.check("per-example gradients / one batched backward, 8 x 256 MLP, batch 256", r, 3.0, "x")
    if "torch.func per-example" in samples:
        note += (f"; torch.func: {harness.ratio(samples, 'torch.func per-example', 'torch one batched backward'):.1f}x "
                 f"its own batched backward, gpuad's per-example step "
                 f"{harness.ratio(samples, 'per-example (vmap of grad)', 'torch.func per-example'):.2f}x torch.func's")
    return samples, note


def jacfwd_vs_loop(targets, full):
    import gpuad
    rng = np.random.default_rng(1)
    w1 = gpuad.tensor((rng.standard_normal((256, 512)) / 22).astype(np.float32))
    w2 = gpuad.tensor((rng.standard_normal((64, 256)) / 16).astype(np.float32))
    f = lambda v: gpuad.tanh(w2 @ gpuad.tanh(w1 @ v))                # noqa: E731
    x = gpuad.tensor(rng.standard_normal(512).astype(np.float32))

    def loop():                        # what jacfwd did before: one jvp per input element
        cols = []
        for i in range(512):
            e = np.zeros(512, np.float32)
            e[i] = 1
            cols.append(gpuad.jvp(f, (x,), (gpuad.tensor(e),))[1].numpy())
        return np.stack(cols, -1)
    np.testing.assert_allclose(gpuad.jacfwd(f)(x).numpy(), loop(), rtol=1e-4, atol=1e-6)
    samples = harness.measure({"jacfwd (vmap)": lambda: gpuad.jacfwd(f)(x), "loop of jvps": loop},
                              rounds=5 if full else 3, warmup=1, label="transforms: jacfwd")
    r = harness.ratio(samples, "loop of jvps", "jacfwd (vmap)")
    return samples, targets.check("jacfwd of a 512-input function: the loop's time / jacfwd's", r, 10.0, "x",
                                  at_least=True)


def hourglass(targets, full):
    import gpuad
    samples, notes = {}, []
    for widths in ([512, 128, 32, 4, 32, 128, 512], [2048, 512, 64, 4, 64, 512, 2048]):
        gpuad.manual_seed(0)
        ws = [(gpuad.randn(b, a) / float(np.sqrt(a)), gpuad.randn(b) * 0.1) for a, b in zip(widths, widths[1:])]

        def f(v, ws=ws):               # a plain function: no list of layers to read widths from
            for w, b in ws:
                v = gpuad.tanh(w @ v + b)
            return v
        x = gpuad.randn(widths[0])
        J, (plan, cost) = gpuad.jacobian(f, x, return_plan=True)
        np.testing.assert_allclose(J.numpy(), gpuad.jacobian(f, x, mode="reverse").numpy(), rtol=1e-3, atol=1e-5)
        tag = f"{widths[0]} -> 4 -> {widths[-1]}"
        s = harness.measure({f"{tag} {m}": (lambda m=m, f=f, x=x: gpuad.jacobian(f, x, mode=m))
                             for m in ("auto", "forward", "reverse")},
                            rounds=5 if full else 3, warmup=1, label=f"transforms: hourglass {tag}")
        samples.update(s)
        ms = {k.split()[-1]: harness.median(v) * 1e3 for k, v in s.items()}
        r = ms["auto"] / min(ms["forward"], ms["reverse"])
        where = f"; auto's plan: {plan[0]} at the width-{min(w for _, w in plan.cuts)} cut, {len(plan.cuts)} cuts kept"
        if widths[0] == 512:
            notes.append(targets.check(f"hourglass as a plain function ({tag}, six tanh layers): auto / the "
                                       f"faster fixed mode", r, 0.2, "x") + where)
        else:
            notes.append(f"hourglass {tag} (FLOPs, not Python, dominate): auto / the faster fixed mode "
                         f"{r:.3f}x" + where)
    return samples, "\n  ".join(notes)


def autocast_gpt(targets, full):
    import time
    from gpuad.demo import train_gpt
    t0 = time.perf_counter()
    fp32 = train_gpt(verbose=False, steps=300)
    t1 = time.perf_counter()
    bf16 = train_gpt(verbose=False, steps=300, autocast="bfloat16")
    t2 = time.perf_counter()
    r = float(np.mean(bf16[-10:]) / np.mean(fp32[-10:]))
    note = targets.check("GPT demo, 300 steps: bfloat16-autocast loss / float32 loss (last 10 steps)",
                         abs(r - 1.0), 0.02, "", fmt="{:.4f}")
    return {"float32": [t1 - t0], "bfloat16 autocast": [t2 - t1]}, \
        note + f" (ratio {r:.4f}; time {(t2 - t1) / (t1 - t0):.2f}x float32's: bfloat16 is stored by ml_dtypes " \
               f"and computed in float32 on the CPU, so each op converts)"


def run(full=False):
    targets, notes = harness.Targets(), []
    t = harness.Table("transforms: times", ["measurement", "variant", "ms"])
    for name, part in (("per-example gradients", per_example), ("jacfwd", jacfwd_vs_loop),
                       ("hourglass jacobian", hourglass), ("autocast GPT", autocast_gpt)):
        samples, note = part(targets, full)
        notes.append(note)
        for k, v in samples.items():
            t.add(name, k, harness.median(v) * 1e3)
    t.print()
    targets.table("transforms").print()
    for n in notes:
        print("  " + n)
    return harness.write_report("transforms", {}, [t, targets.table("transforms")], notes)
