"""gpuad.compile: trace a step once, optimize its graph, plan its buffers, replay.

>>> import gpuad
>>> w = gpuad.tensor([1.0, 2.0], requires_grad=True)
>>> opt = gpuad.optim.SGD([w], lr=0.1)
>>> @gpuad.compile
... def step(x):
...     opt.zero_grad()
...     loss = (w * x).sum()
...     loss.backward()
...     opt.step()
...     return loss
>>> float(step(gpuad.tensor([1.0, 1.0]))), w.tolist()
(3.0, [0.8999999761581421, 1.899999976158142])
>>> float(step(gpuad.tensor([1.0, 1.0]))), w.tolist()     # a replay
(2.799999952316284, [0.7999999523162842, 1.7999999523162842])
"""
import functools
import time
import warnings

from ..errors import BranchError, CompileWarning
from .capture import capture
from .prims import same_value
from .state import describe_change, discover, guard_key
from .trace import GuardError, TraceError, active
from . import pipeline

RETRACE_WARN = 2         # warn, naming what changed, once a step has been traced again this many times
MAX_PATHS = 8            # fallback="eager": paths traced per set of arguments before they run eagerly
VARYING = 3              # ... or values seen at one branch site: more, and it is data, not a branch
_PATH = "another path"


class Compiled:
    """A step compiled by gpuad.compile: call it as the function; .graph(*args) prints
    what it runs, .plan(*args) its buffers."""

    def __init__(self, fn, budget_bytes=None, fallback="error", passes=None, cuda_graphs=True):
        if fallback not in ("error", "eager"):
            raise ValueError(f"gpuad.compile: fallback must be 'error' or 'eager', got {fallback!r}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.budget_bytes = budget_bytes
        self.fallback = fallback
        self.passes = passes
        self.cuda_graphs = cuda_graphs
        self.cache = {}          # guard key -> [entries], for steps that read the gradients they find
        self.any_grads = {}      # guard key without gradients -> [entries], for steps that do not
                                 # (several when the step branches on a setting: one per branch)
        self.traces = 0          # traces after the first: retraces
        self.history = []        # why each trace happened, in words (explain())
        self._last_key = None
        self.eager_keys = set()
        self.warmed_up = False   # the first call ran eagerly (it made the optimizer's state)
        self.sites = {}          # fallback="eager": branch site -> the values a replay met there

    def _entries(self, args, kwargs):
        """(the traced paths these arguments may take, most recently taken first; what a new
        path is traced with), tracing the first now if there is none; None to run eagerly."""
        found = discover(self.fn, ())
        key = guard_key(found, args, kwargs)
        base = tuple(item for item in key if item[0][0] != "gradient")
        entries = self.any_grads.get(base) or self.cache.get(key)
        held = _holding(entries)
        where = (key, base, found)
        if key in self.eager_keys:
            return None
        if not held:
            if self._last_key is None and not self.warmed_up and _creates_state(found):
                # the first call of a training step makes its optimizer's state: run it eagerly,
                # and trace the next, which the rest of the run looks like (one trace, not two)
                self.warmed_up = True
                return None
            entry = self._trace(key, base, found, args, kwargs, entries)
            if entry is None:
                return None
            held = [entry]
        return held, where

    def _trace(self, key, base, found, args, kwargs, entries=None, why=None):
        if why is None and entries:
            why = "; ".join(f"{slot} became {'nonzero' if not truth else 'zero'} (the step branches on it)"
                            for slot, truth in entries[-1].cap.branches if bool(slot.value()) != truth)
        elif why is None:
            why = "the first trace" if self._last_key is None else describe_change(self._last_key, key)
        self.history.append(why)
        if self._last_key is not None:
            self.traces += 1
            if self.traces >= RETRACE_WARN and not why.startswith(_PATH):
                warnings.warn(f"gpuad.compile: {self.fn.__name__} traced {self.traces + 1} times; what changed "
                              f"this time: {why} (step.explain() lists every trace)", CompileWarning,
                              stacklevel=4)
        self._last_key = key
        t0 = time.perf_counter()
        values = self.fallback == "eager"
        try:
            # traced with a gradient input for every parameter: a step that does not read the
            # gradients it finds (zero_grad() first) then serves calls with and without them
            cap = capture(self.fn, args, kwargs, found, phantom_grads=True, values=values)
            agnostic = not cap.grads_read
            if not agnostic and any(t.requires_grad and t.grad is None for t in found.tensors):
                cap = capture(self.fn, args, kwargs, found, values=values)   # it reads them: trace this call as it is
        except TraceError as e:
            if self.fallback == "error":
                raise
            warnings.warn(f"{e}\ngpuad.compile: running {self.fn.__name__} eagerly", CompileWarning, stacklevel=4)
            self.eager_keys.add(key)
            return None
        entry = pipeline.build(cap, budget_bytes=self.budget_bytes, passes=self.passes, groups=_groups(),
                               cuda_graphs=self.cuda_graphs)
        entry.compile_seconds = time.perf_counter() - t0
        (self.any_grads.setdefault(base, []) if agnostic else self.cache.setdefault(key, [])).append(entry)
        return entry

    def _new_path(self, where, miss, args, kwargs):
        """No traced path holds for this call: trace the one it takes (fallback="eager"), or,
        past MAX_PATHS, or where a value keeps changing, run these arguments eagerly."""
        key, base, found = where
        seen = self.sites.setdefault(miss.site, [])
        if miss.value is not None and not any(same_value(miss.value, v) for v in seen):
            seen.append(miss.value)
        paths = len(self.any_grads.get(base) or self.cache.get(key) or ())
        if paths >= MAX_PATHS or len(seen) > VARYING:
            self.eager_keys.add(key)
            reason = (f"{miss.site} changes from call to call ({len(seen)} values so far): the step uses it "
                      f"as data, not as a branch; return it, or log it through gpuad.compiler.disable"
                      if len(seen) > VARYING else f"{paths} paths are traced (MAX_PATHS)")
            warnings.warn(f"gpuad.compile: {self.fn.__name__} runs eagerly for these arguments from now on: "
                          f"{reason}", CompileWarning, stacklevel=3)
            return self.fn(*args, **kwargs)
        entry = self._trace(key, base, found, args, kwargs,
                            why=f"{_PATH}: {miss.site} differs from every traced path's")
        if entry is None:
            return self.fn(*args, **kwargs)
        return entry.run(args, kwargs)

    def explain(self):
        """Why the step was traced each time, in words: what changed in what the replay
        assumes (argument shapes, a setting that became zero, a module's mode, ...).

        >>> import gpuad
        >>> f = gpuad.compile(lambda x: (x * 2).sum())
        >>> _ = f(gpuad.ones(3)); _ = f(gpuad.ones(3)); _ = f(gpuad.ones(4))
        >>> print(f.explain())                                  # doctest: +ELLIPSIS
        <lambda>: traced 2 times
          1. the first trace
          2. argument 0: ('T', (3,), 'float32', False, ...) -> ('T', (4,), 'float32', False, ...)
        """
        n = self.traces + (self._last_key is not None)
        lines = [f"{self.fn.__name__}: traced {n} time{'s' if n != 1 else ''}"]
        if self.warmed_up:
            lines.append("  (its first call ran eagerly: it made the optimizer's state, which every later "
                         "call finds)")
        lines += [f"  {i}. {why}" for i, why in enumerate(self.history, 1)]
        return "\n".join(lines)

    def __call__(self, *args, **kwargs):
        got = self._entries(args, kwargs)
        if got is None:
            return self.fn(*args, **kwargs)
        entries, where = got
        if len(entries) == 1 and not entries[0].guarded:
            return entries[0].run(args, kwargs)
        miss = None
        for entry in entries:
            states = entry.rng_states()
            try:
                out = entry.run(args, kwargs)
            except BranchError as e:
                # another path: this replay stopped before writing anything back
                entry.restore_rng(states)
                miss = e
                continue
            except GuardError as e:
                # the replay writes nothing back before it ends, so this call runs eagerly from
                # where it started (the generators too): eager's result, and a warning
                entry.restore_rng(states)
                if not entry.warned:
                    entry.warned = True
                    warnings.warn(f"{e}; this call of {self.fn.__name__} ran eagerly (and will whenever "
                                  f"that happens again)", CompileWarning, stacklevel=2)
                return self.fn(*args, **kwargs)
            if entry is not entries[0]:
                entries.remove(entry)           # the path taken last is tried first next time
                entries.insert(0, entry)
            return out
        return self._new_path(where, miss, args, kwargs)

    def compiled(self, *args, **kwargs):
        """The compiled entry these arguments would run (traced if needed; of several paths,
        the one taken last)."""
        got = self._entries(args, kwargs)
        if got is None:
            raise TraceError(f"gpuad.compile: {self.fn.__name__} runs eagerly for these arguments")
        return got[0][0]

    def graph(self, *args, **kwargs):
        """The optimized graph these arguments run, as text (one line per op), with its
        planned peak."""
        return self.compiled(*args, **kwargs).describe()

    def source(self, *args, **kwargs):
        """The generated Python of the replay."""
        return self.compiled(*args, **kwargs).source

    def kernels(self, *args, **kwargs):
        """The generated Triton kernel of each fused group these arguments run, as text
        (groups with a member that has no Triton form say which)."""
        from .codegen import triton_groups
        parts = []
        for e in self.compiled(*args, **kwargs).graph.eqns:
            if e.prim == "fused":
                k = e.params["kernel"].value
                try:
                    parts.append(f"# group {e.params['kernel'].name}\n{triton_groups.source(k)}")
                except triton_groups.Unsupported as u:
                    parts.append(f"# group {e.params['kernel'].name}: no Triton kernel ({u})\n")
        return "\n".join(parts)


def _holding(entries):
    """The entries whose branches on optimizer settings hold now (SGD's momentum nonzero),
    in their order (several: the paths of a step that branches on values)."""
    return [e for e in entries or () if all(bool(slot.value()) == truth for slot, truth in e.cap.branches)]



def _creates_state(found):
    """Whether a reachable optimizer has no state yet for a parameter that requires grad."""
    return any(not opt.state.get(p) for opt in found.optimizers for p in opt.params)


def compile(fn=None, *, budget_bytes=None, fallback="error", passes=None, cuda_graphs=True):
    """Compile a training step (or any function of Tensors) into one traced,
    optimized, buffer-planned replay; usable as a decorator, with or without
    arguments.

    fn: a PyTorch-style step (forward, loss.backward(), opt.step() in place) or a
    JAX-style function such as gpuad.value_and_grad(loss_fn). The first call
    traces it on shapes; later calls with the same shapes, dtypes, parameters and
    settings replay. budget_bytes: the most bytes the replay may hold at once;
    values are recomputed to fit. fallback: "error" raises on value-dependent
    Python (`if t:`, `int(t)`, `np.asarray(t)`); "eager" traces such a step on the
    values of the call, checks them at each replay and traces each path a call
    takes (see gpuad.compiler.concrete); what still cannot trace runs eagerly,
    with a warning.
    cuda_graphs: on a GPU, replay the whole step as one captured CUDA graph from
    the second call on (gpuad/compiler/graphs.py); False launches op by op.

    >>> import gpuad
    >>> f = gpuad.compile(gpuad.value_and_grad(lambda x: (x * x).sum()))
    >>> v, g = f(gpuad.tensor([1.0, 2.0], requires_grad=True))
    >>> float(v), g.tolist()
    (5.0, [2.0, 4.0])
    """
    if fn is None:
        return lambda f: Compiled(f, budget_bytes, fallback, passes, cuda_graphs)
    return Compiled(fn, budget_bytes, fallback, passes, cuda_graphs)


def _groups():
    """'triton' when gpuad.set_kernels('triton') runs Triton on CPU arrays (the
    interpreter): then fused groups run as their generated Triton kernels, as on a GPU."""
    from ..backends import numpy_ns
    from ..providers import provider_name
    return "triton" if provider_name(numpy_ns) == "triton" else None


__all__ = ["compile", "Compiled", "CompileWarning", "TraceError"]


def disable(fn):
    """Run fn eagerly inside a compiled step: at each call, on the step's values, in the
    step's order (torch.compiler.disable, jax.debug.callback). For the part of a step that
    cannot be traced and feeds nothing back into it: logging, metrics, printing .item()s.
    It returns None inside a compiled step; outside one, fn runs as it is.

    >>> import gpuad
    >>> seen = []
    >>> log = gpuad.compiler.disable(lambda loss: seen.append(f"{loss.item():.1f}"))
    >>> @gpuad.compile
    ... def step(x):
    ...     loss = (x * 2).sum()
    ...     log(loss)
    ...     return loss
    >>> for n in (1.0, 2.0, 3.0):
    ...     _ = step(gpuad.full((2,), n))
    >>> seen
    ['4.0', '8.0', '12.0']
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tr = active()
        if tr is None:
            return fn(*args, **kwargs)
        tr.callback(fn, args, kwargs)
        return None
    return wrapper
