"""Random programs for the differential tests: one op table, written once against a
library adapter, run on gpuad (eager, compiled, forward mode) and on torch.

Every op maps two values of the program's shape (R, C) to a third of that shape,
so ops compose at any size; inside, they broadcast, reduce over rows and columns,
index, write in place and call fused primitives. The constants an op needs
(index arrays, low-rank weights, class targets) are drawn per program from its
seed, as numpy arrays, so both libraries see the same ones.

    >>> import gpuad
    >>> prog = program(3, (4, 5), length=3)
    >>> out = run_grad(Lib(gpuad), prog)
    >>> len(out["grads"]) == len(prog.leaves)
    True
"""
import numpy as np

import gpuad
from gpuad.ops import REGISTRY


class Lib:
    """What differs between gpuad and torch, in one place."""

    def __init__(self, lib):
        self.lib = lib
        self.torch = lib.__name__ == "torch"
        if self.torch:
            import torch.nn.functional as F
        else:
            import gpuad.nn.functional as F
        self.F = F

    def tensor(self, a, requires_grad=False):
        if self.torch:
            return self.lib.tensor(np.array(a), requires_grad=requires_grad)
        return gpuad.tensor(np.array(a), requires_grad=requires_grad)

    def linear(self, x, w, b, act):
        if not self.torch:
            return self.F.linear(x, w, b, act)
        z = self.F.linear(x, w, b)
        return z if act is None else getattr(self.F, act)(z)

    def checkpoint(self, fn, x):
        return fn(x) if self.torch else gpuad.checkpoint(fn, x)

    def vmap(self, fn):
        import torch
        return torch.func.vmap(fn) if self.torch else gpuad.vmap(fn)

    def no_grad(self):
        return self.lib.no_grad()

    def grad(self, loss, xs):
        return self.lib.autograd.grad(loss, xs, allow_unused=True)

    def numpy(self, t):
        if isinstance(t, np.ndarray):          # gpuad's optimizer state is arrays
            return t.copy()
        if hasattr(t, "get"):                  # ... on a device
            return t.get()
        return t.detach().numpy().copy() if self.torch else np.array(t.numpy())


# unary elementwise primitives whose torch function has another name
_TORCH_UNARY = {"negative": "neg", "gelu": ("F", "gelu"), "softplus": ("F", "softplus")}
# declared only by the tests (tests/fixture_ops.py): no torch counterpart
TEST_ONLY = {"fixture_cube"}


def _squash(L, a, domain):
    """a mapped into the op's smooth domain, differentiably: lo + (hi - lo) sigmoid(a)."""
    if domain is None or domain == "away0":
        return a
    lo, hi = domain
    return L.lib.sigmoid(a) * (hi - lo) + lo


def _unary(name, domain):
    def op(L, a, b, c):
        if not L.torch:
            return getattr(gpuad, name)(_squash(L, a, domain))
        t = _TORCH_UNARY.get(name, name)
        fn = getattr(L.F, t[1]) if isinstance(t, tuple) else getattr(L.lib, t)
        return fn(_squash(L, a, domain))
    return op


def unary_ops():
    """One op per unary elementwise primitive of the registry: a new one joins the
    programs with its declaration."""
    return {f"u_{n}": (1, _unary(n, p.domain)) for n, p in sorted(REGISTRY.items())
            if p.kind == "unary" and p.differentiable and n not in TEST_ONLY}


def _inplace_view(L, a, b, c):
    y = a * 1.0
    v = y[:, c.half:]
    v.mul_(2.0)                 # through the view into y (recorded)
    return y + b


def _setitem(L, a, b, c):
    y = a * 1.0
    y[c.t(c.unique_rows)] = b[c.t(c.unique_rows)] * 0.5
    return y


def _iadd(L, a, b, c):
    y = a * b
    y.add_(a)
    y.sub_(b * 0.25)
    y.mul_(0.5)
    y.div_(1.5)
    return y


def _detached_update(L, a, b, c):
    d = a.detach().clone()
    with L.no_grad():
        d.mul_(2.0)
        d.add_(b.detach())
    return d * a + b


def _sdpa(L, a, b, c, **kw):
    return L.F.scaled_dot_product_attention(a, b, a * 0.5, **kw)


def _low_rank(L, a, b, c, act):
    z = L.linear(a, c.t(c.wd), None, None)
    return L.linear(z, c.t(c.wu), c.t(c.bu), act) + b


_FUNCTIONS = {}


def mul_tanh(lib):
    """A user-defined autograd Function, x * tanh(y) with its backward written by hand, for
    gpuad (gpuad.autograd.Function) or torch (torch.autograd.Function); made once per lib."""
    cls = _FUNCTIONS.get(lib.__name__)
    if cls is None:
        class MulTanh(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x, y):
                ctx.save_for_backward(x, y)
                return x * y.tanh()

            @staticmethod
            def backward(ctx, g):
                x, y = ctx.saved_tensors
                t = y.tanh()
                return g * t, g * x * (1 - t * t)
        cls = _FUNCTIONS[lib.__name__] = MulTanh
    return cls


def _custom_function(L, a, b, c):
    return mul_tanh(L.lib).apply(a, b)


OPS = {
    # binary elementwise and comparisons (comparisons inside where: no gradient of their own)
    "add": (2, lambda L, a, b, c: a + b),
    "sub": (2, lambda L, a, b, c: a - b),
    "mul": (2, lambda L, a, b, c: a * b),
    "div": (2, lambda L, a, b, c: a / (b * b + 1.0)),
    "rdiv": (1, lambda L, a, b, c: 2.0 / (a * a + 1.0)),
    "pow": (2, lambda L, a, b, c: (a * a + 0.5) ** (b * 0.5)),
    "pow_scalar": (1, lambda L, a, b, c: (a * a + 0.5) ** 1.5),
    "square": (1, lambda L, a, b, c: a.square()),
    "maximum": (2, lambda L, a, b, c: L.lib.maximum(a, b)),
    "minimum": (2, lambda L, a, b, c: L.lib.minimum(a, b)),
    "atan2": (2, lambda L, a, b, c: L.lib.atan2(a, b)),
    "remainder": (2, lambda L, a, b, c: L.lib.remainder(a, b * b + 1.0)),
    "floor_divide": (2, lambda L, a, b, c: b * L.lib.floor_divide(a.detach(), 0.7)),
    "where": (2, lambda L, a, b, c: L.lib.where(a > b, a, b)),
    "where_logic": (2, lambda L, a, b, c: L.lib.where(L.lib.logical_or(L.lib.logical_and(a > 0, b < 0.5),
                                                                       L.lib.logical_xor(a <= b, b >= 0.2)),
                                                      a, b * 2.0)),
    "where_not": (2, lambda L, a, b, c: L.lib.where(L.lib.logical_not(L.lib.isnan(a)), a, b)
                  * L.lib.where(L.lib.isinf(b) | L.lib.isfinite(a).logical_not(), 0.0, 1.0)),
    "eq_ne": (2, lambda L, a, b, c: L.lib.where((a == b) | (a != a), b, a)),
    "clamp": (1, lambda L, a, b, c: L.lib.clamp(a, -0.7, 0.8)),
    "detach": (1, lambda L, a, b, c: a.detach() * 2.0 + a),
    "astype": (1, lambda L, a, b, c: a.float().double() * a if a.dtype == L.lib.float64 else a.double().float() * a),
    # broadcasting: a row, a column, a vector
    "row_bcast": (2, lambda L, a, b, c: a + b[0:1, :]),
    "col_bcast": (2, lambda L, a, b, c: a * b[:, -1:]),
    "vec_bcast": (2, lambda L, a, b, c: a - b.mean(0)),
    # reductions over rows and over columns
    "sum_keep": (1, lambda L, a, b, c: a.sum(dim=c.k % 2, keepdim=True) * 0.1 + a),
    "sum_all": (2, lambda L, a, b, c: a.sum() * 1e-3 + b),
    "mean": (1, lambda L, a, b, c: a.mean(dim=1 - c.k % 2, keepdim=True) * a),
    "amax": (1, lambda L, a, b, c: L.lib.amax(a, dim=c.k % 2, keepdim=True) - a),
    "amin": (1, lambda L, a, b, c: L.lib.amin(a, dim=1 - c.k % 2, keepdim=True) + a),
    "max_all": (2, lambda L, a, b, c: a.max() * b),
    "norm": (1, lambda L, a, b, c: a / (L.lib.norm(a, dim=c.k % 2, keepdim=True) + 1.0)),
    "var": (1, lambda L, a, b, c: a.var(dim=c.k % 2, keepdim=True) + a),
    "std": (1, lambda L, a, b, c: a.std(dim=1 - c.k % 2, keepdim=True) * a),
    "lse": (1, lambda L, a, b, c: L.lib.logsumexp(a, dim=c.k % 2, keepdim=True) - a),
    "softmax": (1, lambda L, a, b, c: L.lib.softmax(a, dim=c.k % 2)),
    "log_softmax": (1, lambda L, a, b, c: L.lib.log_softmax(a, dim=1 - c.k % 2)),
    "cumsum": (1, lambda L, a, b, c: L.lib.cumsum(a, dim=c.k % 2) * 0.1),
    "cumprod": (1, lambda L, a, b, c: L.lib.cumprod(L.lib.sigmoid(a) * 0.2 + 0.9, dim=0)),
    # matrix products (low rank: the sizes reach 20000 columns)
    "matmul": (2, lambda L, a, b, c: (a @ c.t(c.u)) @ c.t(c.v) + b),
    "matmul_t": (2, lambda L, a, b, c: c.t(c.r) @ (a.T @ c.t(c.r)).T * 0.1 + b),
    "einsum": (1, lambda L, a, b, c: L.lib.einsum("ij,jk->ik", L.lib.einsum("ij,jk->ik", a, c.t(c.u)), c.t(c.v))),
    "linear": (2, lambda L, a, b, c: _low_rank(L, a, b, c, None)),
    "linear_relu": (2, lambda L, a, b, c: _low_rank(L, a, b, c, "relu")),
    "linear_tanh": (2, lambda L, a, b, c: _low_rank(L, a, b, c, "tanh")),
    "linear_sigmoid": (2, lambda L, a, b, c: _low_rank(L, a, b, c, "sigmoid")),
    "linear_gelu": (2, lambda L, a, b, c: _low_rank(L, a, b, c, "gelu")),
    # fused primitives
    "layer_norm": (1, lambda L, a, b, c: L.F.layer_norm(a, (a.shape[1],), c.t(c.gain), c.t(c.bias))),
    "rms_norm": (1, lambda L, a, b, c: L.F.rms_norm(a, (a.shape[1],), c.t(c.gain), eps=1e-5)),
    "conv": (1, lambda L, a, b, c: L.F.conv2d(a[None, None], c.t(c.k3), padding=1)[0, 0] + a),
    "conv_transpose": (1, lambda L, a, b, c: L.F.conv_transpose2d(a[None, None], c.t(c.k3), padding=1)[0, 0]),
    "conv_weight": (2, lambda L, a, b, c: L.F.conv2d(b[None, None], a[:2, :2][None, None], padding="same")[0, 0]),
    "max_pool": (1, lambda L, a, b, c: L.F.max_pool2d(a[None, None], 3, 1, 1)[0, 0] * a),
    "batch_norm": (2, lambda L, a, b, c: L.F.batch_norm(L.lib.stack([a, b]), None, None, training=True,
                                                        eps=1e-3)[0] * b),
    "cross_entropy": (1, lambda L, a, b, c: a + L.F.cross_entropy(a, c.t(c.targets))),
    "cross_entropy_none": (1, lambda L, a, b, c: a * L.F.cross_entropy(a, c.t(c.targets), reduction="none")[:, None]),
    "sdpa": (2, lambda L, a, b, c: _sdpa(L, a, b, c)),
    "sdpa_causal": (2, lambda L, a, b, c: _sdpa(L, a, b, c, is_causal=True)),
    "checkpoint": (1, lambda L, a, b, c: L.checkpoint(lambda x: (x * x).sin() + x, a)),
    "vmap": (1, lambda L, a, b, c: L.vmap(lambda r: (r * r[0]).sin() + r.sum())(a)),
    # indexing, views and joins
    "index_rep": (2, lambda L, a, b, c: a[c.t(c.rows)] * b),
    "index_select": (1, lambda L, a, b, c: a.index_select(0, c.t(c.rows)) + a),
    "gather": (1, lambda L, a, b, c: a.gather(1, c.t(c.cols)) * a),
    "take_along": (1, lambda L, a, b, c: L.lib.take_along_dim(a, c.t(c.cols), dim=1) - a),
    "scatter_add": (2, lambda L, a, b, c: a.scatter_add(0, c.t(c.rows2d), b)),
    "index_add": (2, lambda L, a, b, c: a.index_add(0, c.t(c.rows), b)),
    "slice_cat": (1, lambda L, a, b, c: L.lib.cat([a[:, c.half:], a[:, :c.half]], dim=1)),
    "stack": (2, lambda L, a, b, c: L.lib.stack([a, b], dim=c.k % 3).sum(dim=c.k % 3)),
    "transpose": (1, lambda L, a, b, c: a.T.reshape(a.shape) + a),
    "flip": (1, lambda L, a, b, c: L.lib.flip(a, (c.k % 2,)) * a),
    "roll": (1, lambda L, a, b, c: L.lib.roll(a, c.k + 1, c.k % 2) + a),
    "tril": (1, lambda L, a, b, c: L.lib.tril(a, c.k - 2) + L.lib.triu(a, 1) * 0.5),
    "masked_fill": (1, lambda L, a, b, c: a.masked_fill(c.t(c.mask), 0.25)),
    "broadcast_to": (2, lambda L, a, b, c: a.sum(0).broadcast_to(a.shape) * 0.1 + b),
    # in-place writes: recorded ones, through a view, and under no_grad
    "setitem": (2, _setitem),
    "iadd": (2, _iadd),
    "inplace_view": (2, _inplace_view),
    "detached_update": (2, _detached_update),
    "custom_function": (2, _custom_function),
    "clamp_": (1, lambda L, a, b, c: (a * 1.0).clamp_(-0.5, 0.6)),
}

# ops that draw from the generator: compared compiled against eager only (torch draws other masks)
RANDOM_OPS = {
    "dropout": (1, lambda L, a, b, c: L.F.dropout(a, 0.3) + a),
    "sdpa_dropout": (2, lambda L, a, b, c: _sdpa(L, a, b, c, dropout_p=0.2)),
}


def all_ops(random=True):
    ops = dict(unary_ops())
    ops.update(OPS)
    if random:
        ops.update(RANDOM_OPS)
    return ops


class Consts:
    """The numpy constants of one program at one shape; t() makes a tensor of the library."""

    def __init__(self, rng, shape, dtype):
        R, C = shape
        f = lambda *s: rng.uniform(-1.0, 1.0, s).astype(dtype)  # noqa: E731
        self.half = max(1, C // 2)
        self.u, self.v = f(C, 4) * 0.5, f(4, C) * 0.5
        self.r = f(R, 3)
        self.wd, self.wu, self.bu = f(4, C) * 0.5, f(C, 4) * 0.5, f(C)
        self.gain, self.bias = f(C) + 1.0, f(C)
        self.targets = rng.integers(0, C, R)
        self.rows = rng.integers(0, R, R)                       # repeats: a non-unique scatter
        self.unique_rows = rng.permutation(R)[:max(1, R // 2)]
        self.rows2d = rng.integers(0, R, (R, C))
        self.cols = rng.integers(0, C, (R, C))
        self.mask = rng.random((R, C)) < 0.3
        self.k3 = (np.linspace(-1.0, 1.0, 9).reshape(1, 1, 3, 3) * 0.5).astype(dtype)   # (no draws: the
        self.k = 0                                                                         # programs stay)
        self.lib = None

    def t(self, a):
        return self.lib.tensor(a)


class Program:
    def __init__(self, seed, shape, dtype, steps, leaves, grey, weights, direction, consts):
        self.seed, self.shape, self.dtype = seed, shape, dtype
        self.steps, self.leaves, self.grey, self.weights = steps, leaves, grey, weights
        self.direction, self.consts = direction, consts

    @property
    def random(self):
        return any(name in RANDOM_OPS for name, *_ in self.steps)

    def __repr__(self):
        return f"program(seed={self.seed}, shape={self.shape}, dtype={np.dtype(self.dtype).name}): " + \
            " ".join(s[0] for s in self.steps)


def program(seed, shape, length=8, dtype=np.float64, random=True, ops=None):
    """A random program: `length` ops drawn from `ops` (all of them by default)."""
    rng = np.random.default_rng(seed)
    names = sorted(ops if ops is not None else all_ops(random))
    steps = [(names[rng.integers(len(names))], int(rng.integers(1 << 20)), int(rng.integers(1 << 20)),
              int(rng.integers(6))) for _ in range(length)]
    leaves = [rng.uniform(-1.5, 1.5, shape).astype(dtype) for _ in range(int(rng.integers(1, 4)))]
    grey = rng.uniform(-1.5, 1.5, shape).astype(dtype)
    weights = rng.uniform(0.5, 1.5, length + len(leaves) + 1)
    direction = [rng.standard_normal(shape).astype(dtype) for _ in leaves]
    return Program(seed, shape, dtype, steps, leaves, grey, weights, direction, Consts(rng, shape, dtype))


def forward(L, prog, xs):
    """The program's values (leaves, a constant, then one per step) and its loss."""
    ops = all_ops()
    c = prog.consts
    c.lib = L
    if not L.torch:
        gpuad.manual_seed(prog.seed)        # dropout masks: the same draws eager and compiled
    values = list(xs) + [L.tensor(prog.grey)]
    for name, i, j, k in prog.steps:
        c.k = k
        values.append(ops[name][1](L, values[i % len(values)], values[j % len(values)], c))
    loss = sum(w * v.sum() for w, v in zip(prog.weights, values[:len(prog.weights)]))
    return values, loss


def run_grad(L, prog, compiled=False):
    """Values, loss and gradients of the program; compiled: through gpuad.compile."""
    def f(*xs):
        values, loss = forward(L, prog, xs)
        # the values computed from the leaves (one made of constants alone is baked into a
        # compiled step, which refuses to hand it out)
        return [loss] + list(L.grad(loss, xs)) + [v for v in values[len(xs) + 1:] if v.requires_grad]
    xs = [L.tensor(v, requires_grad=True) for v in prog.leaves]
    out = (gpuad.compile(f) if compiled else f)(*xs)
    n = len(xs)
    arr = lambda t: None if t is None else L.numpy(t)  # noqa: E731
    return {"loss": arr(out[0]), "grads": [arr(g) for g in out[1:1 + n]], "values": [arr(v) for v in out[1 + n:]]}


OPTIMIZERS = {
    "sgd": lambda o, ps: o.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    "adam": lambda o, ps: o.Adam(ps, lr=0.01, weight_decay=0.01, amsgrad=True),
    "adamw": lambda o, ps: o.AdamW(ps, lr=0.01),
}


def run_step(L, prog, opt_name, compiled=False, steps=2):
    """Two training steps (zero_grad, loss, backward, optimizer step): the losses, the
    parameters and gradients after them, and the optimizer's state."""
    ps = [L.tensor(v, requires_grad=True) for v in prog.leaves]
    opt = OPTIMIZERS[opt_name](L.lib.optim, ps)

    def step():
        for p in ps:
            p.grad = None
        _, loss = forward(L, prog, ps)
        loss.backward()
        opt.step()
        return loss
    fn = gpuad.compile(step) if compiled else step
    losses = [L.numpy(fn()) for _ in range(steps)]
    state = [L.numpy(v) for p in ps for k, v in sorted(opt.state[p].items())
             if hasattr(v, "shape") and tuple(v.shape) == tuple(p.shape)]
    return {"losses": losses, "params": [L.numpy(p) for p in ps],
            "grads": [None if p.grad is None else L.numpy(p.grad) for p in ps], "state": state}


def primitives_of(L, name, shape=(5, 6), seed=0):
    """The primitives one op records, by walking its graph from the output."""
    prog = program(seed, shape, length=0)
    c = prog.consts
    c.lib, c.k = L, 1
    a, b = (L.tensor(v, requires_grad=True) for v in (prog.leaves[0], prog.grey))
    out = all_ops()[name][1](L, a, b, c)
    # the VJPs' primitives too (conv_weight is only ever reached as conv's gradient)
    grads = L.lib.autograd.grad(out.sum(), (a, b), allow_unused=True, create_graph=True)
    seen, stack, names = set(), [out._node] + [g._node for g in grads if g is not None], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op is not None:
            names.add(node.op.name)
        stack.extend(node.parents)
    return names
