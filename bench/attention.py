"""Suite `attention`: scaled_dot_product_attention forward+backward against sequence
length, and one GPT training step against torch eager.

Attention (batch 2 x 4 heads, E = 64, float32, L = S): gpuad's fused primitive
(tiled over keys, saves the row log-sum-exp), gpuad naive (matmul, softmax,
matmul from primitives: the L x S scores saved), and torch's CPU
scaled_dot_product_attention. Time as ratios in one process, interleaved; peak
bytes from gpuad.memory (torch's CPU allocations are not visible to it).

GPT: the same model and initialization in gpuad and torch (weights copied), one
AdamW step; gpuad's peak with and without per-block checkpointing.

Targets (issue 12): fused peak at L = 4096 at most 1/8 of naive (make bench
measures the 4096 peaks once, untimed; make bench-full also times it); fused at L = 1024
at most 1.2x torch (issue 24; 1.5x in issue 12), beside the floor its numpy GEMMs
alone set; GPT step at most 1.1x torch eager; per-block checkpointing
cuts the step's activation peak at least 3x at most 1.4x the time.
"""
import numpy as np

from . import harness


def _naive(q, k, v):
    import gpuad
    s = (q @ k.transpose(-2, -1)) * (1.0 / np.sqrt(q.shape[-1]))
    return gpuad.softmax(s, dim=-1) @ v


def _gemms(arrays):
    """The numpy matmuls the fused primitive makes in one forward+backward (gpuad/ops/
    attention.py: per key tile, two forward, five backward), nothing else: the floor of
    its time with numpy's batched matmul."""
    from gpuad.ops.attention import TILE
    q, k, v = arrays
    g = v.copy()

    def run():
        for s0 in range(0, k.shape[-2], TILE):
            kt, vt = k[..., s0:s0 + TILE, :], v[..., s0:s0 + TILE, :]
            p = q @ kt.swapaxes(-1, -2)
            p @ vt
            p = q @ kt.swapaxes(-1, -2)
            p.swapaxes(-1, -2) @ g
            dp = g @ vt.swapaxes(-1, -2)
            dp @ kt
            dp.swapaxes(-1, -2) @ q
    return run


def _attention_rows(lengths, rounds, targets, notes, peak_only=()):
    """One row per L; lengths in peak_only run once each for the peaks, untimed."""
    import gpuad
    import gpuad.nn.functional as F
    rows = []
    rng = np.random.default_rng(0)
    for L in tuple(lengths) + tuple(peak_only):
        arrays = [rng.standard_normal((2, 4, L, 64)).astype(np.float32) for _ in range(3)]
        qg = [gpuad.tensor(a, requires_grad=True) for a in arrays]
        w = gpuad.tensor(rng.standard_normal((2, 4, L, 64)).astype(np.float32))

        def fused():
            (F.scaled_dot_product_attention(*qg) * w).sum().backward()

        def naive():
            (_naive(*qg) * w).sum().backward()
        variants = {"gpuad fused": fused, "gpuad naive": naive, "the fused primitive's GEMMs alone": _gemms(arrays)}
        if harness.have_torch():
            import torch
            qt = [torch.tensor(a, requires_grad=True) for a in arrays]
            wt = torch.tensor(w.numpy())

            def torch_sdpa():
                (torch.nn.functional.scaled_dot_product_attention(*qt) * wt).sum().backward()
            variants["torch sdpa"] = torch_sdpa
        peaks = {}
        for name, fn in (("gpuad fused", fused), ("gpuad naive", naive)):
            with gpuad.memory.track() as m:
                fn()
            peaks[name] = m.stats()["peak_bytes"]
        if L in peak_only:
            rows.append({"L": L, "fused_peak": peaks["gpuad fused"], "naive_peak": peaks["gpuad naive"]})
            continue
        samples = harness.measure(variants, rounds=rounds, warmup=1, label=f"attention L={L}")
        row = {"L": L, "fused_ms": harness.median(samples["gpuad fused"]) * 1e3,
               "naive_ms": harness.median(samples["gpuad naive"]) * 1e3,
               "fused_peak": peaks["gpuad fused"], "naive_peak": peaks["gpuad naive"],
               "fused_vs_naive_time": harness.ratio(samples, "gpuad fused", "gpuad naive")}
        row["gemm_ms"] = harness.median(samples["the fused primitive's GEMMs alone"]) * 1e3
        if "torch sdpa" in samples:
            row["torch_ms"] = harness.median(samples["torch sdpa"]) * 1e3
            row["fused_vs_torch"] = harness.ratio(samples, "gpuad fused", "torch sdpa")
        rows.append(row)
    return rows


def _gpt_step(full):
    import gpuad
    import gpuad.nn.functional as F
    from gpuad import nn, optim
    V, T, D, NL, H, B = 64, 128, 128, 4, 4, 8
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, (B, T + 1))
    x, y = gpuad.tensor(ids[:, :-1]), gpuad.tensor(ids[:, 1:])
    models = {}
    for name, ck in (("gpuad", None), ("gpuad, per-block checkpoint", NL)):
        gpuad.manual_seed(5)
        m = nn.GPT(V, T, D, NL, H, checkpoint=ck)
        models[name] = (m, optim.AdamW(m.parameters(), lr=1e-3))

    def step(name):
        m, opt = models[name]
        opt.zero_grad()
        F.cross_entropy(m(x).reshape(-1, V), y.reshape(-1)).backward()
        opt.step()
    variants = {name: (lambda n=name: step(n)) for name in models}
    if harness.have_torch():
        import torch
        tm = _torch_gpt(models["gpuad"][0], V, T, D, NL, H)
        topt = torch.optim.AdamW(tm.parameters(), lr=1e-3)
        xt, yt = torch.tensor(ids[:, :-1]), torch.tensor(ids[:, 1:])

        def torch_step():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tm(xt).reshape(-1, V), yt.reshape(-1)).backward()
            topt.step()
        variants["torch eager"] = torch_step
    peaks = {}
    for name in models:
        with gpuad.memory.track() as m:
            step(name)
        s = m.stats()
        peaks[name] = (s["peak_bytes"], s["activation_peak_bytes"])
    samples = harness.measure(variants, rounds=7 if full else 5, warmup=1, label="gpt step")
    return samples, peaks


def _torch_gpt(g, V, T, D, NL, H):
    """The same GPT in torch, weights copied from gpuad's."""
    import torch
    from torch import nn as tnn

    def lin(src, act=None):
        layer = tnn.Linear(src.in_features, src.out_features, bias=src.bias is not None)
        layer.weight.data = torch.tensor(src.weight.numpy().copy())
        if src.bias is not None:
            layer.bias.data = torch.tensor(src.bias.numpy().copy())
        return layer

    class Block(tnn.Module):
        def __init__(self, b):
            super().__init__()
            self.ln1, self.ln2 = tnn.LayerNorm(D), tnn.LayerNorm(D)
            self.qkv, self.out = lin(b.attn.qkv), lin(b.attn.out_proj)
            self.fc, self.proj = lin(b.fc), lin(b.proj)

        def forward(self, x):
            bsz, t, d = x.shape
            qkv = self.qkv(self.ln1(x)).reshape(bsz, t, 3, H, d // H).permute(2, 0, 3, 1, 4)
            a = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
            x = x + self.out(a.permute(0, 2, 1, 3).reshape(bsz, t, d))
            return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))

    class GPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = tnn.Embedding(V, D), tnn.Embedding(T, D)
            self.tok.weight.data = torch.tensor(g.tok.weight.numpy().copy())
            self.pos.weight.data = torch.tensor(g.pos.weight.numpy().copy())
            self.blocks = tnn.Sequential(*[Block(b) for b in g.blocks.layers])
            self.ln = tnn.LayerNorm(D)

        def forward(self, ids):
            x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            return self.ln(self.blocks(x)) @ self.tok.weight.T
    return GPT()


def run(full=False):
    # make bench times up to 2048 and measures the 4096 peaks once, untimed (~10 s)
    lengths = (256, 1024, 2048, 4096) if full else (256, 1024, 2048)
    targets, notes = harness.Targets(), []
    rows = _attention_rows(lengths, 5 if full else 3, targets, notes, peak_only=() if full else (4096,))
    mib = 1 / 2 ** 20
    table = harness.Table("attention: SDPA forward+backward, batch 2 x 4 heads, E = 64, float32",
                          ["L = S", "fused ms", "naive ms", "torch ms", "fused's GEMMs alone ms", "fused vs torch",
                           "fused peak MiB", "naive peak MiB", "fused / naive peak"])
    for r in rows:
        table.add(r["L"], r.get("fused_ms", "-"), r.get("naive_ms", "-"), r.get("torch_ms", "-"), r.get("gemm_ms", "-"),
                  f"{r['fused_vs_torch']:.2f}x" if "fused_vs_torch" in r else "-", r["fused_peak"] * mib,
                  r["naive_peak"] * mib, f"{r['fused_peak'] / r['naive_peak']:.3f}")
    table.print()
    longest = rows[-1]
    notes.append(targets.check(f"fused / naive peak at L = {longest['L']}", longest["fused_peak"] / longest["naive_peak"],
                               0.125))
    at1024 = next(r for r in rows if r["L"] == 1024)
    if "fused_vs_torch" in at1024:
        notes.append(targets.check("fused vs torch SDPA at L = 1024", at1024["fused_vs_torch"], 1.2, "x"))
        notes.append(f"at L = 1024 the fused primitive's numpy GEMMs alone take {at1024['gemm_ms']:.1f} ms, "
                     f"{at1024['gemm_ms'] / at1024['torch_ms']:.2f}x torch's whole forward+backward")
    samples, peaks = _gpt_step(full)
    gtable = harness.Table("attention: one GPT step (vocab 64, T 128, d 128, 4 blocks, 4 heads, batch 8, AdamW)",
                           ["variant", "ms", "peak MiB", "activation peak MiB"])
    for name in samples:
        p = peaks.get(name)
        gtable.add(name, harness.median(samples[name]) * 1e3, p[0] * mib if p else "-", p[1] * mib if p else "-")
    gtable.print()
    if "torch eager" in samples:
        notes.append(targets.check("GPT step vs torch eager", harness.ratio(samples, "gpuad", "torch eager"), 1.1, "x"))
    plain, ck = peaks["gpuad"][1], peaks["gpuad, per-block checkpoint"][1]
    notes.append(f"per-block checkpointing: activation peak {plain / ck:.2f}x lower (target >= 3x: "
                 f"{'met' if plain / ck >= 3 else 'missed'})")
    notes.append(targets.check("per-block checkpointing, step time", harness.ratio(
        samples, "gpuad, per-block checkpoint", "gpuad"), 1.4, "x"))
    targets.table("attention").print()
    for n in notes:
        print("  " + n)
    return harness.write_report("attention", {"rows": rows, "gpt_peaks": peaks},
                                [table, gtable, targets.table("attention")], notes)
