"""python -m bench [suite ...] [--full]: run benchmark suites and write reports.

With no suite named, runs the default set (what `make bench` runs).
Reports: bench/results/<suite>.json and .md, and bench/results/summary.md.
"""
import argparse
import importlib
import os
import sys
import time

from . import harness

SUITES = ["overhead", "mlp", "memory"]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="*", help=f"suites to run (default: {' '.join(SUITES)})")
    p.add_argument("--full", action="store_true", help="more rounds and larger sizes (slower)")
    args = p.parse_args(argv)
    suites = args.suites or SUITES
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        p.error(f"unknown suite(s) {unknown}; choose from {SUITES}")
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
