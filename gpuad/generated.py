"""Generated Python source: compiled under a file name of its own and registered
with linecache, so a traceback through it shows its real lines.

Everything gpuad writes as source and runs goes through `load`: apply()'s
entries (ops/dispatch.py), the derivative table's VJPs and savers
(ops/derivatives.py, ops/registry.py), and the compiler's replays and fused
CPU loops (compiler/ir.py).

>>> from gpuad.generated import load
>>> scope = load("def twice(x):\\n    return 2 * x\\n", "example")
>>> scope["twice"](21)
42
>>> import inspect; inspect.getsource(scope["twice"]).strip()
'def twice(x):\\n    return 2 * x'
"""
import itertools
import linecache

_count = itertools.count()


def load(source, what, scope=None):
    """exec `source` into `scope` (a new dict when None) as file '<gpuad what #n>'; returns scope."""
    filename = f"<gpuad {what} #{next(_count)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = {"__name__": "gpuad.generated"} if scope is None else scope
    exec(compile(source, filename, "exec"), scope)
    return scope
