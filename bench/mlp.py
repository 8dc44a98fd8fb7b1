"""Suite `mlp`: one training step of an MLP (forward, MSE loss, backward).

Batch 256, width 1024, 8 tanh layers, float32: gpuad, the lecture's
hand-written numpy loop, and PyTorch eager (when installed), all with the
same weights, interleaved in one process. The GEMM floor is the time of the
step's 23 GEMMs alone (8 forward, 8 for dW, 7 for dX: the input needs no
gradient), run with numpy in the same rounds.

Targets (issue 3): gpuad <= 1.05x the numpy loop, <= 0.95x PyTorch, <= 1.25x
the GEMM floor.
"""
import numpy as np

from . import harness


def lecture_numpy_step(Ws, bs, x, y):
    """The lecture's forward/backward loop, row-major (batch, features), plain numpy.

    As on the slide: keep y_list in the forward pass, then walk the layers in
    reverse; sigma'(A y + b) = 1 - y_next^2 is taken from the stored output
    instead of recomputing the GEMM three times.
    """
    y_list = [x]
    h = x
    for W, b in zip(Ws, bs):
        h = np.tanh(h @ W.T + b)
        y_list.append(h)
    n = h.size
    loss = np.mean((h - y) ** 2)
    dy = 2.0 * (h - y) / n
    dWs, dbs = [None] * len(Ws), [None] * len(Ws)
    for ell in reversed(range(len(Ws))):
        dz = dy * (1.0 - y_list[ell + 1] ** 2)
        dWs[ell] = dz.T @ y_list[ell]
        dbs[ell] = dz.sum(axis=0)
        if ell > 0:
            dy = dz @ Ws[ell]
    return loss, dWs, dbs


def _gemm_floor(Ws, x, dz):
    for W in Ws:                    # forward: (B, K) @ (N, K)^T
        np.matmul(x, W.T)
    for W in Ws[1:]:                # dX: (B, N) @ (N, K)
        np.matmul(dz, W)
    for _ in Ws:                    # dW: (B, N)^T @ (B, K)
        np.matmul(dz.T, x)


def run(full=False, batch=256, width=1024, depth=8):
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import nn

    # The shared machines drift by +-30% over seconds: many short rounds, medians of ratios.
    rounds = 41 if full else 25
    rng = np.random.default_rng(0)
    gpuad.manual_seed(0)
    net = nn.MLP([width] * (depth + 1), activation="tanh", output_activation="tanh")
    Ws = [layer.weight.numpy() for layer in net]
    bs = [layer.bias.numpy() for layer in net]
    x = rng.standard_normal((batch, width)).astype(np.float32)
    y = rng.standard_normal((batch, width)).astype(np.float32) * 0.5
    xg, yg = gpuad.tensor(x), gpuad.tensor(y)

    def gpuad_step():
        net.zero_grad()
        F.mse_loss(net(xg), yg).backward()

    def numpy_step():
        lecture_numpy_step(Ws, bs, x, y)

    dz = rng.standard_normal((batch, width)).astype(np.float32)
    variants = {"gpuad": gpuad_step, "numpy loop": numpy_step,
                "GEMM floor": lambda: _gemm_floor(Ws, x, dz)}

    if harness.have_torch():
        import torch
        layers = []
        for W, b in zip(Ws, bs):
            lin = torch.nn.Linear(width, width)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W))
                lin.bias.copy_(torch.from_numpy(b))
            layers += [lin, torch.nn.Tanh()]
        tnet = torch.nn.Sequential(*layers)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            tnet.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(tnet(xt), yt).backward()
        variants["torch eager"] = torch_step

    _check_same_gradients(net, Ws, bs, x, y, xg, yg, F)
    samples = harness.measure(variants, rounds=rounds, warmup=3, label="mlp")
    med = {k: harness.median(v) * 1e3 for k, v in samples.items()}
    flops = 2.0 * batch * width * width * (3 * depth - 1)
    gflops = flops / (med["GEMM floor"] * 1e-3) / 1e9
    table = harness.Table(f"mlp: one training step, batch {batch}, width {width}, {depth} tanh layers, float32 "
                          f"(median of {rounds} interleaved rounds)",
                          ["variant", "ms per step", "gpuad / this"])
    ratios = {}
    for name in variants:
        if name != "gpuad":
            ratios[name] = harness.ratio(samples, "gpuad", name)
        table.add(name, med[name], f"{ratios[name]:.3f}x" if name in ratios else "")
    table.print()
    targets = harness.Targets()
    notes = [f"GEMM rate measured here: {gflops:.0f} GFLOP/s (numpy float32, {flops / 1e9:.1f} GFLOP per step)",
             targets.check("gpuad vs numpy loop", ratios["numpy loop"], 1.05, "x"),
             targets.check("gpuad vs GEMM floor", ratios["GEMM floor"], 1.25, "x")]
    if "torch eager" in ratios:
        notes.append(targets.check("gpuad vs torch eager", ratios["torch eager"], 0.95, "x"))
    targets.table("mlp").print()
    for n in notes:
        print("  " + n)
    data = {"ms": med, "ratios": ratios, "gemm_gflops": gflops, "step_gflop": flops / 1e9,
            "config": dict(batch=batch, width=width, depth=depth, rounds=rounds)}
    return harness.write_report("mlp", data, [table, targets.table("mlp")], notes)


def _check_same_gradients(net, Ws, bs, x, y, xg, yg, F):
    """The variants compute the same thing: gpuad's gradients equal the numpy loop's."""
    net.zero_grad()
    F.mse_loss(net(xg), yg).backward()
    _, dWs, dbs = lecture_numpy_step(Ws, bs, x, y)
    for layer, dW, db in zip(net, dWs, dbs):
        np.testing.assert_allclose(layer.weight.grad.numpy(), dW, rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(layer.bias.grad.numpy(), db, rtol=2e-3, atol=1e-6)
