"""python -m bench [suite ...] [--full]: run benchmark suites and write reports.

With no suite named, runs the default set (what `make bench` runs).
Reports: bench/results/<suite>.json and .md, and bench/results/summary.md.
"""
import os

# Idle BLAS and OpenMP threads must sleep, not spin: otherwise numpy's OpenBLAS
# threads keep spinning after each GEMM and steal the cores from whatever runs
# next (`python -m bench method`: torch's 8-layer MLP step took 166 ms right
# after numpy GEMMs, 80 ms with this set). Set before numpy or torch loads.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from . import harness  # noqa: E402

SUITES = ["overhead", "mlp", "memory", "checkpoint", "ops", "attention", "compile", "train", "cnn", "jacobian", "transforms", "distributed"]      # what `make bench` runs
EXTRA = ["method", "fusion"]                                          # by name only


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="*", help=f"suites to run (default: {' '.join(SUITES)}; also: {' '.join(EXTRA)})")
    p.add_argument("--full", action="store_true", help="more rounds and larger sizes (slower)")
    args = p.parse_args(argv)
    suites = args.suites or SUITES
    unknown = [s for s in suites if s not in SUITES + EXTRA]
    if unknown:
        p.error(f"unknown suite(s) {unknown}; choose from {SUITES + EXTRA}")
    t0 = time.time()
    parts = []
    for name in suites:
        mod = importlib.import_module(f"bench.{name}")
        parts.append(mod.run(full=args.full))
    os.makedirs(harness.RESULTS_DIR, exist_ok=True)
    m = harness.machine()
    head = (f"# gpuad benchmark summary\n\n{time.strftime('%Y-%m-%d')} on {m['cpus']} CPUs, "
            f"Python {m['python']}, numpy {m.get('numpy')}, torch {m.get('torch', 'absent')} "
            f"({m.get('torch_threads', '-')} threads)\n\n")
    with open(os.path.join(harness.RESULTS_DIR, "summary.md"), "w") as f:
        f.write(head + "\n".join(parts))
    print(f"\nreports in {os.path.relpath(harness.RESULTS_DIR)}/ ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
