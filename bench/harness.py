"""The timing method, tables and reports shared by every suite.

Method: every variant of a comparison runs once per round, in an order that
rotates from round to round, in one process. After warm-up rounds, each
figure is the median over rounds, and each ratio is the median of the
per-round ratios: noise from a shared machine hits both sides of a pair
alike and cancels.
"""
import json
import os
import platform
import statistics
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _progress():
    try:
        from rich.progress import Progress
        return Progress(transient=True)
    except ImportError:
        return None


class Progress:
    """A progress bar (rich) or nothing; `with Progress(total, label) as tick: tick()`."""

    def __init__(self, total, label):
        self.total, self.label = total, label
        self._bar = None

    def __enter__(self):
        if sys.stderr.isatty():
            self._bar = _progress()
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self.tick

    def tick(self):
        if self._bar is not None:
            self._bar.advance(self._task)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False


def measure(variants, rounds=9, warmup=2, label="timing", setup=None):
    """Time each callable in `variants` (name -> fn) interleaved over rounds.

    Returns {name: [seconds per round]} for the measured rounds.
    `setup`, if given, runs before each call and is not timed.
    """
    names = list(variants)
    samples = {n: [] for n in names}
    with Progress((rounds + warmup) * len(names), label) as tick:
        for r in range(rounds + warmup):
            k = r % len(names)
            order = names[k:] + names[:k]
            # odd rounds run backwards: a rotation alone keeps each variant behind the same
            # predecessor, whose caches and freed memory then bias it (a light call after a
            # heavy one measured 1.3x itself)
            for name in (order[::-1] if r % 2 else order):
                if setup is not None:
                    setup(name)
                t0 = time.perf_counter()
                variants[name]()
                dt = time.perf_counter() - t0
                if r >= warmup:
                    samples[name].append(dt)
                tick()
    return samples


def median(xs):
    return statistics.median(xs)


def ratio(samples, num, den):
    """Median of the per-round ratios num/den (both measured in the same round)."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den]))


def machine():
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


class Table:
    """Rows of (label, value...) printed with rich when present, plain otherwise."""

    def __init__(self, title, columns):
        self.title, self.columns, self.rows = title, list(columns), []

    def add(self, *row):
        self.rows.append([_fmt(v) for v in row])

    def markdown(self):
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def print(self):
        try:
            from rich.console import Console
            from rich.table import Table as RichTable
        except ImportError:
            widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
            print(f"\n{self.title}")
            print("  ".join(c.ljust(w) for c, w in zip(self.columns, widths)))
            for r in self.rows:
                print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
            return
        t = RichTable(title=self.title, title_justify="left")
        for c in self.columns:
            t.add_column(c)
        for r in self.rows:
            t.add_row(*r)
        Console().print(t)


def _fmt(v):
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


class Targets:
    """Each figure against its target, marked met or missed: a table for the terminal and
    the markdown report, and the note sentence for each.

    >>> t = Targets()
    >>> t.check("per-op time vs torch", 0.68, 0.6, "x")
    'per-op time vs torch: 0.680x (target <= 0.6x: missed)'
    """

    def __init__(self):
        self.rows = []

    def check(self, what, value, limit, unit="", fmt="{:.3f}", at_least=False):
        """value <= limit is met (value >= limit with at_least); returns the note sentence."""
        met = value >= limit if at_least else value <= limit
        bound = f"{'>=' if at_least else '<='} {limit}{unit}"
        self.rows.append((what, fmt.format(value) + unit, bound, "met" if met else "MISSED"))
        return f"{what}: {fmt.format(value)}{unit} (target {bound}: {'met' if met else 'missed'})"

    def table(self, suite):
        t = Table(f"{suite}: targets", ["figure", "value", "target", ""])
        for r in self.rows:
            t.add(*r)
        return t


def write_report(suite, data, tables, notes=()):
    """Write bench/results/<suite>.json and <suite>.md; return the markdown."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    payload = {"suite": suite, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **data}
    with open(os.path.join(RESULTS_DIR, f"{suite}.json"), "w") as f:
        json.dump(payload, f, indent=2, default=str)
    md = f"### {suite}\n\n" + "\n".join(t.markdown() for t in tables)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with open(os.path.join(RESULTS_DIR, f"{suite}.md"), "w") as f:
        f.write(md)
    return md


def have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False
