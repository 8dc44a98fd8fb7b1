"""CUDA graph replay: the whole compiled step captured once, relaunched each call.

A replay launches one kernel or cuBLAS call per equation: hundreds of launches
for a GPT step, each a few microseconds of CPU. Captured into a CUDA graph they
cost one launch. A graph bakes in every pointer, so:

- arguments (a new batch each call) are copied into buffers of the graph's own
  (read N bytes, write N), never into the caller's arrays;
- state (parameters, gradients, optimizer state) is captured by pointer; when an
  array there is replaced rather than updated in place, the graph is captured
  again;
- every buffer allocated while capturing is held by the graph, through an
  allocator that records it, so nothing else reuses that memory between
  launches;
- what the step hands out (a loss, new gradients) is copied out of the graph's
  buffers after each launch. The next launch rewrites them.

The first call runs plainly: it compiles the Triton kernels and fills CuPy's
pool, so capture then allocates nothing new. Any failure to capture warns once
and the step keeps running without a graph.

`GraphReplay` is written against a small backend (capture, launch, copy, clone).
`CupyGraphs` is the CUDA one. Tests drive the same logic with a CPU stand-in.
"""
import warnings


class GraphReplay:
    """Wraps a generated replay `fn(inputs) -> outputs`. `is_arg[i]`: input i comes
    from the call's arguments (copied into the graph's buffer); `escapes[j]`: output j
    is handed to the caller (copied out after each launch)."""

    def __init__(self, fn, is_arg, escapes, backend):
        self.fn, self.is_arg, self.escapes, self.backend = fn, list(is_arg), list(escapes), backend
        self.calls = 0
        self.graph = None
        self.static = None
        self.outs = None
        self.failed = False
        self.captures = 0

    def __call__(self, inputs):
        self.calls += 1
        if self.failed:
            return self.fn(inputs)
        if self.calls == 1:
            warmup = getattr(self.backend, "warmup", None)
            return self.fn(inputs) if warmup is None else warmup(self.fn, inputs)
        if self.graph is None or self._state_moved(inputs):
            if not self._capture(inputs):
                return self.fn(inputs)
        else:
            for i, a in enumerate(inputs):
                if self.is_arg[i] and a is not self.static[i]:
                    self.backend.copy(self.static[i], a)
        self.backend.launch(self.graph)
        return [self.backend.clone(o) if esc else o for o, esc in zip(self.outs, self.escapes)]

    def _state_moved(self, inputs):
        return any(not arg and a is not s for a, s, arg in zip(inputs, self.static, self.is_arg))

    def _capture(self, inputs):
        static = [self.backend.clone(a) if arg else a for a, arg in zip(inputs, self.is_arg)]
        try:
            self.graph, self.outs = self.backend.capture(self.fn, static)
        except Exception as e:                      # noqa: BLE001 (any capture failure: run without)
            warnings.warn(f"gpuad.compile: capturing the step as a CUDA graph failed "
                          f"({type(e).__name__}: {e}); it runs without one", RuntimeWarning, stacklevel=4)
            self.failed = True
            return False
        self.static = static
        self.captures += 1
        return True


class CupyGraphs:
    """The CUDA backend: CuPy stream capture into a memory pool of the graph's own.

    The first call (which compiles the Triton kernels) and every capture run on one
    stream of the replay's own (CUDA refuses to capture the legacy default stream),
    allocating from one private pool. So the capture reuses the blocks the first call
    warmed (CuPy's pools keep an arena per stream), a block freed during the capture
    is reused by a later allocation of the same capture (the graph holds the step's
    peak of temporaries, not their sum), and no allocation outside the graph gets a
    block of it between launches (torch's private graph pools). The caller's stream
    and the replay's are ordered both ways by events."""

    def __init__(self):
        import cupy
        self.cupy = cupy
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _on_stream(self, run):
        cuda = self.cupy.cuda
        caller = cuda.get_current_stream()
        self.stream.wait_event(caller.record())            # after the caller's work so far
        with cuda.using_allocator(self.pool.malloc), self.stream:
            out = run()
        caller.wait_event(self.stream.record())            # the caller's next work after this
        return out

    def warmup(self, fn, inputs):
        return self._on_stream(lambda: fn(inputs))

    def capture(self, fn, inputs):
        stream = self.stream

        def run():
            stream.begin_capture()
            try:
                outs = fn(inputs)
            finally:
                graph = stream.end_capture()
            return graph, outs
        return self._on_stream(run)

    def launch(self, graph):
        graph.launch(self.cupy.cuda.get_current_stream())     # ordered after the argument copies

    def copy(self, dst, src):
        self.cupy.copyto(dst, src)

    def clone(self, a):
        return a.copy() if hasattr(a, "copy") else a

    def pool_bytes(self):
        """Bytes the replay's private pool holds (what its first call and graphs cost)."""
        return self.pool.total_bytes()
