"""gpuad.memory's counters and regions: turn accounting on, read it, track a region.

>>> import gpuad
>>> with gpuad.memory.track() as m:
...     y = gpuad.ones(1024) * 2
>>> m.stats()["allocations"] >= 1
True
"""
from .accounting import accountant
from .pool import host_pool


def enable():
    """Turn accounting on for the whole program (GPUAD_ACCOUNTING=1 does the same at import)."""
    accountant.enable()


def disable():
    accountant.disable()


def is_enabled():
    return accountant.active is not None


def stats():
    """Global counters (bytes): live_bytes, peak_bytes, allocations, bytes_read,
    bytes_written (the traffic model), and the host pool's in-use and cached bytes.

    Counts only what happened while accounting was on (track() or enable()).
    """
    s = accountant.snapshot()
    s.update(host_pool.stats())
    s["accounting"] = is_enabled()
    return s


def reset_peak():
    """Set the peak to the live bytes now."""
    accountant.peak_bytes = accountant.live_bytes


def empty_cache():
    """Return the host pool's cached free blocks to the system."""
    host_pool.empty_cache()


class track:
    """Record a region: `with gpuad.memory.track() as m: ...`, then m.stats(), m.by_op().

    Figures are for the region: live_bytes is what was allocated inside and is
    still alive, peak_bytes the most that was, as tracemalloc would count
    them; activation_peak_bytes the most held by forward (and recompute)
    buffers, gradients excluded. peak_bytes_absolute is the program-wide live bytes at that peak.
    With timeline=True, m.timeline lists (phase, op, live bytes) after every
    op of the forward and backward passes.
    """

    def __init__(self, timeline=False):
        self.want_timeline = timeline
        self.timeline = None
        self._end = None

    def __enter__(self):
        a = accountant
        a.enable()
        self._outer_peak = a.peak_bytes
        a.peak_bytes = a.live_bytes
        self._outer_act_peak = a.activation_peak
        a.activation_peak = a.activation_bytes
        self._start = a.snapshot()
        self._ops_start = {k: v.as_dict() for k, v in a.by_op.items()}
        if self.want_timeline:
            self._outer_timeline = a.timeline
            a.timeline = self.timeline = []
            a.phase = "forward"
        return self

    def __exit__(self, *exc):
        a = accountant
        self._end = self._now()
        self._ops = self._op_delta()
        a.peak_bytes = max(self._outer_peak, a.peak_bytes)
        a.activation_peak = max(self._outer_act_peak, a.activation_peak)
        if self.want_timeline:
            a.timeline = self._outer_timeline
            base = self._start["live_bytes"]
            self.timeline = [(ph, op, live - base) for ph, op, live in self.timeline]
        a.disable()
        return False

    def _now(self):
        a, s = accountant, self._start
        return {"live_bytes": a.live_bytes - s["live_bytes"],
                "peak_bytes": a.peak_bytes - s["live_bytes"],
                "allocations": a.allocations - s["allocations"],
                "bytes_read": a.bytes_read - s["bytes_read"],
                "bytes_written": a.bytes_written - s["bytes_written"],
                "activation_peak_bytes": a.activation_peak - s["activation_bytes"]}

    def stats(self):
        return dict(self._end) if self._end is not None else self._now()

    @property
    def peak_bytes_absolute(self):
        """Program-wide live bytes at this region's peak."""
        return self.stats()["peak_bytes"] + self._start["live_bytes"]

    def _op_delta(self):
        out = {}
        for name, s in accountant.by_op.items():
            now, before = s.as_dict(), self._ops_start.get(name)
            d = {k: now[k] - (before[k] if before else 0) for k in now}
            if any(d.values()):
                out[name] = d
        return out

    def by_op(self):
        """Per-op breakdown: calls, allocations, allocated_bytes, bytes_read, bytes_written."""
        return dict(self._ops) if self._end is not None else self._op_delta()


def timeline():
    """track(timeline=True): live bytes after each op of the forward and backward passes."""
    return track(timeline=True)

