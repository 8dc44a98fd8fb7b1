"""The recorded graph: one Node per op, numbered in creation order.

Creation order is a linear topological order (every input of a node was made
before it), so backward needs no sort: it pops nodes by decreasing index.

A Node holds everything backward needs as plain data the planner can see:

    op       the primitive (None for a leaf: a tensor with requires_grad=True)
    parents  one entry per input: the input's Node if it is BLACK, else None (GREY)
    saved    the arrays the op's VJP reads, in the order its registry entry declares;
             FREED once backward has consumed them
    params   the op's non-array arguments (axis, shapes, indices), or None
    needs    one bool per input: does a gradient have to flow there
    index    creation number, the topological key
    shape, dtype   of the output (what its gradient must look like)

It never holds a forward value that no backward step reads: inputs are reached
through their nodes, not their tensors.

>>> import gpuad
>>> x = gpuad.tensor(2.0, requires_grad=True)
>>> y = (x * x).sin()
>>> [n.op.name for n in (y._node, y._node.parents[0])]
['sin', 'multiply']
"""
import contextlib
import itertools

from .generated import load

_next_index = itertools.count().__next__
_NODE_MAKERS = []        # the globals of every module that compiled NEW_NODE (set_index_source)


def index_source():
    """The plain counter that numbers nodes."""
    return _plain_index


def set_index_source(fn):
    """Number new nodes with fn (None: the plain counter) everywhere NEW_NODE was compiled.
    Anomaly mode (engine/anomaly.py) passes a counter that also records each creation
    stack; swapping the function keeps the plain path's code exactly as it is."""
    fn = _plain_index if fn is None else fn
    for g in _NODE_MAKERS:
        g["_next_index"] = fn


class _Freed:
    """Marks a node whose saved values backward has already released."""
    __slots__ = ()

    def __repr__(self):
        return "FREED"


FREED = _Freed()


class Extra:
    """What few nodes carry: a weakref to their tensor (leaves, retain_grad) and hooks."""
    __slots__ = ("ref", "hooks")

    def __init__(self):
        self.ref = None
        self.hooks = None


class Node:
    __slots__ = ("op", "parents", "saved", "params", "needs", "index", "shape", "dtype",
                 "grad", "owned", "extra", "__weakref__")

    def __new__(cls, *args):
        return new_node(*args)

    @property
    def ref(self):
        """Weakref to the tensor whose .grad receives this gradient (leaves, retain_grad())."""
        return self.extra.ref if self.extra is not None else None

    @ref.setter
    def ref(self, value):
        if self.extra is None:
            self.extra = Extra()
        self.extra.ref = value

    @property
    def hooks(self):
        """Tensor hooks, run when this gradient is complete."""
        return self.extra.hooks if self.extra is not None else None

    @hooks.setter
    def hooks(self, value):
        if self.extra is None:
            self.extra = Extra()
        self.extra.hooks = value

    @property
    def is_leaf(self):
        return self.op is None

    def __repr__(self):
        name = "leaf" if self.op is None else self.op.name
        return f"<Node #{self.index} {name} {self.shape} {self.dtype}>"


# The one constructor, as source: every node, leaf or op, recorded or recomputed, is made
# by these lines. new_node() below is compiled from them; apply()'s generated core
# (ops/dispatch.py) splices them in, since a call there costs about a twelfth of a
# recorded 1-element op (`python -m bench overhead`). One text, so the two cannot differ.
# (Not a class with __init__: calling one costs twice a plain function, on every op.)
NEW_NODE = """
n = _new(Node)
n.op = op
n.parents = parents
n.saved = saved
n.params = params
n.needs = needs
n.index = _next_index()
n.shape = shape
n.dtype = dtype
n.grad = None      # the gradient arriving during backward, popped once consumed
n.owned = False    # True when backward may write into .grad in place (engine/policy.py)
n.extra = None     # Extra: tensor weakref and hooks; None on the hot path
"""


def indented(source, spaces):
    """source with every line indented by `spaces` (to splice it into a generated body)."""
    return "".join(" " * spaces + line + "\n" for line in source.strip("\n").splitlines())


_new = object.__new__
new_node = load("def new_node(op, parents, saved, params, needs, shape, dtype):\n"
                + indented(NEW_NODE, 4) + "    return n\n", "graph new_node", globals())["new_node"]
new_node.__doc__ = "The one constructor of a Node (see NEW_NODE)."
_plain_index = _next_index
_NODE_MAKERS.append(globals())


def reachable(roots):
    """Nodes reachable from roots, in backward order (decreasing creation index).
    An explicit stack: no recursion, whatever the depth."""
    seen, stack = set(), [r for r in roots if r is not None]
    order = []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        order.append(n)
        stack.extend(p for p in n.parents if p is not None and p not in seen)
    order.sort(key=lambda n: -n.index)
    return order


def leaf_node(tensor):
    """The node of a parameter (a BLACK input node of the lecture)."""
    import weakref
    node = Node(None, (), (), None, (), tensor.data.shape, tensor.data.dtype)
    node.ref = weakref.ref(tensor)
    return node


# ---------------------------------------------------------------------------
# Recording state. A plain module-level flag: reading it costs one attribute
# lookup per op, which matters at microsecond op costs. It is not thread-local.

class _Mode:
    enabled = True
    checkpoint = None   # a CheckpointScope while a checkpoint runs or recomputes its function
    post_hooks = 0      # post-accumulate hooks registered and not removed: backward then finishes
                        # each such leaf as soon as its last consumer has sent its gradient


class CheckpointScope:
    """Recording inside gpuad.checkpoint (see checkpoint.py).

    capture: during the first run nothing is recorded, but every BLACK node an
             op reads is appended here (the checkpoint's inputs, parameters
             included); ops return GREY tensors.
    remaps:  during recompute, outer nodes are replaced by local leaves (dicts
             applied outermost first), so the local graph never reaches the
             outer one; `start` is the first node index of the recompute, and
             an outer node read without a remap means the function changed.
    """
    __slots__ = ("capture", "remaps", "start", "record", "outer")

    def __init__(self, capture=None, remaps=(), start=0, record=False, outer=None):
        self.capture = capture
        self.remaps = remaps
        self.start = start
        self.record = record
        self.outer = outer

    def map(self, node):
        for r in self.remaps:
            node = r.get(node, node)
        return node

    def parents(self, op, parents):
        """The parents to record for `op` inside this scope: None on the first run
        (record nothing, capture the BLACK inputs), local leaves while recomputing."""
        mapped = [None if p is None else self.map(p) for p in parents]
        if self.capture is not None:
            for p in mapped:
                if p is not None and p not in self.capture:
                    self.capture.append(p)
            return None
        if not self.record:
            return None
        for p in mapped:
            if p is not None and p.index < self.start:
                raise RuntimeError(
                    f"gpuad.checkpoint: while recomputing, {op.name} read a tensor that requires grad "
                    f"(node #{p.index}) which the first run did not read: the checkpointed function is not "
                    f"deterministic in which tensors it uses, so its gradients would be wrong")
        return mapped


def is_recomputing():
    """Whether a checkpointed segment is being run again during backward (at any depth of
    nesting): ops with side effects (batch norm's running statistics) take them once,
    on the first run, not again here.

    >>> import gpuad
    >>> seen = []
    >>> x = gpuad.ones(2, requires_grad=True)
    >>> y = gpuad.checkpoint(lambda t: (seen.append(is_recomputing()), t * 2)[1], x)
    >>> y.sum().backward(); seen
    [False, True]
    """
    scope = _Mode.checkpoint
    while scope is not None:
        if scope.record:
            return True
        scope = scope.outer
    return False


def is_grad_enabled():
    """Whether ops on BLACK tensors are being recorded."""
    return _Mode.enabled or (_Mode.checkpoint is not None and _Mode.checkpoint.record)


class _GradMode(contextlib.ContextDecorator):
    """Recording on or off inside a `with` block or a decorated function; the mode before
    comes back on exit."""

    def __init__(self, mode=True):
        self.mode = bool(mode)
        self._prev = []

    def __enter__(self):
        self._prev.append(_Mode.enabled)
        _Mode.enabled = self.mode
        return self

    def __exit__(self, *exc):
        _Mode.enabled = self._prev.pop()
        return False


class set_grad_enabled(_GradMode):
    """Turn recording on or off: called as a function it takes effect at once (as torch's);
    as a `with` block or a decorator it holds inside and restores the mode after.

    >>> import gpuad
    >>> x = gpuad.tensor(1.0, requires_grad=True)
    >>> with gpuad.set_grad_enabled(False):
    ...     (x * 2).requires_grad
    False
    >>> _ = gpuad.set_grad_enabled(False); gpuad.is_grad_enabled()
    False
    >>> _ = gpuad.set_grad_enabled(True); gpuad.is_grad_enabled()
    True
    """

    def __init__(self, mode=True):
        super().__init__(mode)
        self._before = _Mode.enabled
        self._armed = True              # the first `with` restores what was there before the call
        _Mode.enabled = self.mode

    def __enter__(self):
        if self._armed:
            self._armed = False
            self._prev.append(self._before)
            _Mode.enabled = self.mode
            return self
        return super().__enter__()

    def __call__(self, func):
        # as a decorator nothing changes now: the mode holds only while func runs
        _Mode.enabled, self._armed = self._before, False
        return super().__call__(func)


class no_grad(_GradMode):
    """Run ops without recording them: every result is GREY.

    >>> import gpuad
    >>> w = gpuad.tensor([1.0, 2.0], requires_grad=True)
    >>> with gpuad.no_grad():
    ...     y = w * 3
    >>> y.requires_grad
    False
    >>> @gpuad.no_grad()
    ... def f(t): return t + 1
    >>> f(w).requires_grad
    False
    """

    def __init__(self):
        super().__init__(False)


class enable_grad(_GradMode):
    """Record again inside a no_grad region.

    >>> import gpuad
    >>> w = gpuad.tensor(1.0, requires_grad=True)
    >>> with gpuad.no_grad(), gpuad.enable_grad():
    ...     (w * 2).requires_grad
    True
    """

    def __init__(self):
        super().__init__(True)


class inference_mode(_GradMode):
    """torch.inference_mode: no recording inside (as no_grad; gpuad keeps no version
    counters a mode could skip). inference_mode(False) changes nothing.

    >>> import gpuad
    >>> w = gpuad.tensor([1.0], requires_grad=True)
    >>> with gpuad.inference_mode():
    ...     (w * 2).requires_grad, gpuad.is_inference_mode_enabled()
    (False, True)
    """

    _depth = 0

    def __init__(self, mode=True):
        super().__init__(False)
        self.on = bool(mode)

    def __enter__(self):
        self._prev.append(_Mode.enabled)
        if self.on:
            _Mode.enabled = False
            inference_mode._depth += 1
        return self

    def __exit__(self, *exc):
        _Mode.enabled = self._prev.pop()
        if self.on:
            inference_mode._depth -= 1
        return False


def is_inference_mode_enabled():
    """Whether an inference_mode() block is open."""
    return inference_mode._depth > 0
