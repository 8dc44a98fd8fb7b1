"""Every way `xp` code writes into an array, traced (#28): each becomes a new SSA value
that the replay computes, or the tracer refuses it loudly. Never a graph that misses a
write (its DCE would then drop what fed it, as it dropped relu's mask).

Each case is a function of (xp, arrays) run twice: eagerly on numpy arrays, and traced
on Tracers, then optimized (dce, cse, fold, fuse), buffer-planned and replayed. The
return values and the final contents of every input agree bitwise. Sizes straddle
INPLACE_MIN (the engine's donation size) and CHUNK (the fused executor's pass size).
"""
import numpy as np
import pytest

import gpuad
from gpuad.backends import numpy_ns
from gpuad.compiler.codegen import python_replay
from gpuad.compiler.passes import buffers, cse, dce, fold, fuse
from gpuad.compiler.trace import Trace, TraceError, tracing

SHAPES = [(3, 5), (8, 1024), (40, 1024)]


def traced(fn, arrays):
    """(results, final inputs) of fn run through a trace, the passes and a planned replay."""
    tr = Trace()
    with tracing(tr):
        ins = [tr.new_input(a.shape, a.dtype, f"x{i}") for i, a in enumerate(arrays)]
        out = fn(tr.ns, *ins)
    out = out if isinstance(out, tuple) else (out,)
    g = tr.graph
    g.outputs = [o.var for o in out] + [t.var for t in ins]
    for p in (dce.run, cse.run, fold.run, dce.run, fuse.run):
        g = p(g)
    plan = buffers.plan(g)
    plan.arenas_allocated = plan.allocate()
    replay, _ = python_replay.generate(g, plan)
    got = replay([a.copy() for a in arrays] + [a for a, _ in tr.ext_inputs])
    return [np.array(r) for r in got[:len(out)]], [np.array(r) for r in got[len(out):]]


def eager(fn, arrays):
    arrays = [a.copy() for a in arrays]
    out = fn(numpy_ns, *arrays)
    out = out if isinstance(out, tuple) else (out,)
    return [np.array(o) for o in out], arrays


def check(fn, *arrays):
    (want, want_in), (got, got_in) = eager(fn, arrays), traced(fn, arrays)
    for a, b in zip(got + got_in, want + want_in):
        np.testing.assert_array_equal(a, b)


def _data(shape, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(k)]


CASES = {
    # gpuad's own: a VJP writing zeros into the gradient it was donated (relu, floor, sign)
    "zero_where": lambda xp, g, x: (xp.zero_where(g, xp.less_equal(x, 0.0)), g),
    "zero_where_then_read": lambda xp, g, x: xp.multiply(xp.zero_where(g, xp.greater(x, 0.5)), 2.0),
    # out=, keyword and positional, into an input, into a fresh buffer, into an alias
    "out_kw": lambda xp, a, b: (xp.multiply(a, b, out=a), a),
    "out_positional": lambda xp, a, b: xp.add(a, b, a),
    "out_tuple": lambda xp, a, b: (np.subtract(a, b, out=(b,)), b),
    "out_where": lambda xp, a, b: (xp.multiply(a, 3.0, out=a, where=xp.greater(b, 0)), a),
    "out_reduction": lambda xp, a, b: xp.sum(a, axis=1, keepdims=True, out=xp.sum(b, axis=1, keepdims=True)),
    "out_matmul": lambda xp, a, b: xp.matmul(a, xp.swapaxes(b, 0, 1), out=xp.matmul(b, xp.swapaxes(a, 0, 1))),
    "out_erf": lambda xp, a, b: (xp.erf(a, out=a), a),
    "out_clip": lambda xp, a, b: (np.clip(a, -0.5, 0.5, out=a), a),
    # copyto, with and without a mask; fill
    "copyto": lambda xp, a, b: (xp.copyto(a, b), a)[1],
    "copyto_where": lambda xp, a, b: (xp.copyto(a, b, where=xp.greater(b, 0)), a)[1],
    "np_copyto_scalar": lambda xp, a, b: (np.copyto(a, 0.0, where=xp.less(b, 0)), xp.add(a, b))[1],
    "fill": lambda xp, a, b: (a.fill(2.0), xp.multiply(a, b))[1],
    # in-place operators and indexed assignment
    "iadd": lambda xp, a, b: _iops(a, b),
    "setitem": lambda xp, a, b: _set(a, b),
    "ufunc_at": lambda xp, a, b: (np.add.at(a, (np.array([0, 2, 0]),), b[:3]), a)[1],
    # writes into views reach their base; views of a written base see the write
    "write_into_slice": lambda xp, a, b: _slice_write(a, b),
    "write_into_transpose": lambda xp, a, b: _transpose_write(a, b),
    "view_of_written_base": lambda xp, a, b: _view_then_write(xp, a, b),
    "write_into_flip": lambda xp, a, b: _flip_write(xp, a, b),
}


def _iops(a, b):
    a += b
    a *= 2.0
    a -= b
    a /= 3.0
    return a


def _set(a, b):
    a[1:] = b[:-1]
    a[0] = 5.0
    return a


def _slice_write(a, b):
    v = a[1:, :2]
    v += b[1:, :2]
    a[:1] *= 2.0              # x[i] op= v: a write through the view __getitem__ made
    return a


def _transpose_write(a, b):
    t = a.T
    t[0] = 7.0
    return a


def _view_then_write(xp, a, b):
    v = a[:, 1:]
    w = xp.reshape(a, (1,) + tuple(a.shape))       # length-1 axes added: always a view
    xp.multiply(a, b, out=a)
    return xp.add(v, 1.0), w


def _flip_write(xp, a, b):
    f = xp.flip(xp.cumsum(a, axis=1), 1)
    xp.divide(f, 2.0, out=f)                       # cumprod's VJP writes into its flipped cumsum
    return f


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_write_is_a_value(name, shape):
    check(CASES[name], *_data(shape))


def test_every_write_case_is_tested_at_sizes_across_the_donation_size():
    from gpuad.memory.pool import INPLACE_MIN
    from gpuad.compiler.codegen.python_replay import CHUNK
    sizes = [r * c for r, c in SHAPES]
    assert min(sizes) < INPLACE_MIN <= max(sizes) and min(sizes) < CHUNK <= max(sizes)


# -- refused loudly ----------------------------------------------------------------------------

REFUSED = {
    "np.put": lambda xp, a, b: np.put(a, [0, 1], b[0, :2]),
    "np.putmask": lambda xp, a, b: np.putmask(a, xp.greater(b, 0), b),
    "np.place": lambda xp, a, b: np.place(a, xp.greater(b, 0), b),
    "np.fill_diagonal": lambda xp, a, b: np.fill_diagonal(a, 1.0),
    "ndarray.sort": lambda xp, a, b: a.sort(),
    "where= without out=": lambda xp, a, b: xp.multiply(a, b, where=xp.greater(b, 0)),
    "a write into a broadcast view": lambda xp, a, b: xp.add(xp.broadcast_to(a[:1], a.shape), 1.0,
                                                             out=xp.broadcast_to(a[:1], a.shape)),
    "a reshape of a written array, read": lambda xp, a, b: _reshaped_then_written(xp, a, b),
}


def _reshaped_then_written(xp, a, b):
    r = xp.reshape(a, (-1,))         # numpy may or may not copy (layout): the trace cannot know
    xp.add(a, b, out=a)
    return xp.multiply(r, 2.0)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_writes_without_a_traced_form_are_refused(name):
    a, b = _data((4, 6))
    with pytest.raises(TraceError, match="gpuad.compile"):
        traced(REFUSED[name], [a, b])


def test_an_unknown_call_returning_its_argument_is_refused():
    """A shape rule that hands back its own argument may be a write: refused unless the
    call is a declared alias (astype to the same dtype)."""
    from gpuad.backends import abstract
    abstract.AbstractNamespace._test_inplace = lambda self, a: a
    try:
        with pytest.raises(TraceError, match="returns its own argument"):
            traced(lambda xp, a, b: xp._test_inplace(a), _data((2, 3)))
    finally:
        del abstract.AbstractNamespace._test_inplace
    check(lambda xp, a, b: xp.multiply(xp.astype(a, a.dtype), b), *_data((2, 3)))


# -- the fused executor's in-place where -------------------------------------------------------

@pytest.mark.parametrize("n", [1024, 40 * 1024])
def test_a_fused_where_planned_into_its_own_input_reads_it_first(n):
    """where(isfinite(v), v, 0) planned in place of v: the kernel's two masked copies
    must not overwrite v before reading it (they once did: the result was all zeros)."""
    v = np.random.default_rng(0).standard_normal((4, n))
    v[:, :3] = [np.inf, -np.inf, np.nan]

    def fn(xp, a, b):
        m = xp.max(a, axis=0, keepdims=True)           # made outside the group, dies in it
        return xp.add(xp.where(xp.isfinite(m), m, 0.0), b)
    check(fn, v, v + 1)


# -- at the Tensor level: gpuad.compile against eager --------------------------------------------

def _compiled_vs_eager(step, *arrays):
    def run(fn):
        xs = [gpuad.tensor(a, requires_grad=True) for a in arrays]
        out = fn(*xs)
        return [o.numpy().copy() for o in out]
    want, got = run(step), run(gpuad.compile(step))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tensor_writes_through_views_compiled_equal_eager(shape):
    a, b = _data(shape)

    def step(x, w):
        y = x * w
        y[:, 1:].mul_(2.0)                       # recorded, through a view: y's gradient sees it
        z = (x * 1.0).T
        z[0].add_(w[:, 0])
        c = gpuad.tensor(b) * 1.0                # a constant, then written with traced values
        c[1:] = x[:-1] * 0.5
        loss = (y * w).sum() + (z * 2.0).sum() + (c * c).sum()
        return [loss] + list(gpuad.autograd.grad(loss, [x, w]))
    _compiled_vs_eager(step, a, b)


def test_detach_shares_the_buffer_under_compile():
    a, b = _data((8, 1024))

    def step(x, w):
        y = x * w
        d = y.detach()
        with gpuad.no_grad():
            d.mul_(3.0)                          # writes y's buffer too, as torch's detach shares it
        return [(y * 1.0).sum(), y.detach() * 1.0]
    _compiled_vs_eager(step, a, b)
