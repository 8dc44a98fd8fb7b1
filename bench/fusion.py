"""Suite `fusion` (by name only: `python -m bench fusion`): why gpuad.compile
generates chunked numpy code for fused groups instead of calling numexpr.

One fused group, tanh(x * w + b) + x on 1024 x 4096 float32 (numexpr has no
erf, so GELU is not a fair common ground), evaluated three ways in one
process, interleaved: numpy op by op (eager: full-size temporaries), numexpr
(one thread, to compare code and not cores; and with its default threads),
and gpuad.compile's generated kernel for the same group (16K-element chunks
through L2 scratch). Skipped cleanly where numexpr is not installed.
"""
import numpy as np

from . import harness


def run(full=False):
    import gpuad
    try:
        import numexpr
    except ImportError:
        print("fusion: numexpr is not installed (pip install numexpr); skipped")
        return harness.write_report("fusion", {"skipped": True}, [], ["numexpr not installed: skipped"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 4096)).astype(np.float32)
    w, b = (rng.standard_normal(4096).astype(np.float32) for _ in range(2))
    out = np.empty_like(x)
    f = gpuad.compile(lambda x, w, b: gpuad.tanh(x * w + b) + x)
    xt, wt, bt = gpuad.tensor(x), gpuad.tensor(w), gpuad.tensor(b)
    f(xt, wt, bt)
    kernel = next(e.params["kernel"].value for e in f.compiled(xt, wt, bt).graph.eqns if e.prim == "fused")
    threads = numexpr.nthreads

    def ne(n):
        def go():
            numexpr.set_num_threads(n)
            numexpr.evaluate("tanh(x * w + b) + x", local_dict={"x": x, "w": w, "b": b}, out=out)
            numexpr.set_num_threads(threads)
        return go
    variants = {"numpy op by op": lambda: np.add(np.tanh(x * w + b), x, out=out),
                "numexpr, 1 thread": ne(1), f"numexpr, {threads} threads": ne(threads),
                "gpuad fused kernel": lambda: kernel(x, w, b, outs=(out,))}
    ref = np.tanh(x * w + b) + x
    kernel(x, w, b, outs=(out,))
    np.testing.assert_array_equal(out, ref)
    samples = harness.measure(variants, rounds=9 if full else 5, warmup=1, label="fusion")
    t = harness.Table("fusion: tanh(x*w+b)+x, 1024 x 4096 float32", ["variant", "ms", "vs numpy op by op"])
    for k in samples:
        t.add(k, harness.median(samples[k]) * 1e3, f"{harness.ratio(samples, k, 'numpy op by op'):.2f}x")
    t.print()
    return harness.write_report("fusion", {"ms": {k: harness.median(v) * 1e3 for k, v in samples.items()}}, [t])
