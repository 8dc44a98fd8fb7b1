"""Suite `method` (not in the default run): the machine facts the other suites' design rests on.

  1. one GEMM (256x1024 @ 1024x1024^T, float32) in numpy (OpenBLAS) and in
     torch (MKL on the x86 wheels): why torch's MLP step runs near numpy's
     GEMM floor
  2. a dW-shaped GEMM writing a fresh 4 MB buffer that stays alive against
     writing reused memory: the page-fault cost the host pool removes
  3. an add with and without out=, on 1 element and on 1 MB: where writing
     in place starts to pay (the engine's INPLACE_MIN)
  4. torch's 8-layer MLP step right after numpy GEMMs, with idle BLAS and
     OpenMP threads spinning (the libraries' defaults) and sleeping (what the
     harness sets): why the harness sets OPENBLAS_THREAD_TIMEOUT and
     OMP_WAIT_POLICY. Each case runs in a fresh process, since both are read
     when the libraries load.

    python -m bench method
"""
import json
import os
import subprocess
import sys

import numpy as np

from . import harness

_SPIN_PROBE = r"""
import time, json, numpy as np, torch
mods = []
for _ in range(8): mods += [torch.nn.Linear(1024, 1024), torch.nn.Tanh()]
net = torch.nn.Sequential(*mods); x = torch.randn(256, 1024); y = torch.randn(256, 1024)
a = np.random.rand(256, 1024).astype(np.float32); w = np.random.rand(1024, 1024).astype(np.float32)
ts = []
for i in range(9):
    for _ in range(20): a @ w.T
    t = time.perf_counter(); net.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(net(x), y).backward(); ts.append(time.perf_counter() - t)
print(json.dumps(sorted(ts)[len(ts) // 2]))
"""


def _spin_case(sleep_threads):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}
    if sleep_threads:
        env.update(OPENBLAS_THREAD_TIMEOUT="4", OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run([sys.executable, "-c", _SPIN_PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1]) * 1e3


def run(full=False):
    rows, data = [], {}
    rng = np.random.default_rng(0)
    a = rng.random((256, 1024), dtype=np.float32)
    w = rng.random((1024, 1024), dtype=np.float32)
    variants = {"numpy GEMM": lambda: a @ w.T}
    if harness.have_torch():
        import torch
        ta, tw = torch.from_numpy(a), torch.from_numpy(w)
        variants["torch GEMM"] = lambda: ta @ tw.T
    s = harness.measure(variants, rounds=21, warmup=3, label="gemm")
    for k, v in s.items():
        data[k] = harness.median(v) * 1e3
        rows.append((k, f"{data[k]:.2f} ms"))
    if "torch GEMM" in s:
        rows.append(("numpy / torch", f"{harness.ratio(s, 'numpy GEMM', 'torch GEMM'):.3f}x"))

    # when out= pays: numpy parses the keyword on every call
    one, one2, big, big2 = np.ones(1), np.ones(1), np.ones(1 << 18, np.float32), np.ones(1 << 18, np.float32)
    held = []

    def big_fresh():
        held.append(np.add(big, big2))
        if len(held) > 40:
            held.clear()
    s = harness.measure({"1-element add": lambda: [np.add(one, one2) for _ in range(1000)],
                         "1-element add, out=": lambda: [np.add(one, one2, out=one) for _ in range(1000)],
                         "1 MB add into fresh memory kept alive": big_fresh,
                         "1 MB add, out=": lambda: np.add(big, big2, out=big)},
                        rounds=41, warmup=3, label="out=")
    for k, v in s.items():
        scale = 1e6 / 1000 if k.startswith("1-element") else 1e6
        data[k] = harness.median(v) * scale
        rows.append((k, f"{data[k]:.2f} us"))

    dz = rng.random((256, 1024), dtype=np.float32)
    reused = np.empty((1024, 1024), np.float32)
    kept = []

    def fresh():
        kept.append(np.matmul(dz.T, a))            # stays alive, like a parameter gradient
        if len(kept) > 8:
            kept.clear()
    s = harness.measure({"dW GEMM into reused memory": lambda: np.matmul(dz.T, a, out=reused),
                         "dW GEMM into fresh memory kept alive": fresh}, rounds=41, warmup=3, label="faults")
    for k, v in s.items():
        data[k] = harness.median(v) * 1e3
        rows.append((k, f"{data[k]:.2f} ms"))
    if harness.have_torch():
        for sleep in (False, True):
            k = f"torch MLP step after numpy GEMMs, idle threads {'sleep' if sleep else 'spin'}"
            data[k] = _spin_case(sleep)
            rows.append((k, f"{data[k]:.1f} ms"))
    table = harness.Table("method: machine facts behind the harness and the host pool", ["measurement", "value"])
    for r in rows:
        table.add(*r)
    table.print()
    return harness.write_report("method", data, [table])

