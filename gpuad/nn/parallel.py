"""DistributedDataParallel: one model per process, gradients averaged over all of them.

torch.nn.parallel.DistributedDataParallel's contract. At construction every
rank checks that all ranks hold the same parameters (names, shapes, dtypes) and
takes rank 0's parameters and buffers (BatchNorm's running statistics). With
broadcast_buffers=True (torch's default) every forward with gradients on first
takes rank 0's buffers again, so the ranks' running statistics never drift apart;
that costs one broadcast of the buffers' bytes per step (BatchNorm: 2 C + 1
numbers per layer). Each forward() through the wrapper prepares one
synchronising backward: gradients are all-reduced in buckets while backward
runs (gpuad/distributed/reducer.py), and backward() returns with .grad holding
the average over the ranks, so any optimizer steps as it would in one process.
With the batch split evenly over N ranks and a loss that is a mean, that average
is the gradient of the whole batch.

>>> import gpuad, numpy as np
>>> import gpuad.distributed as dist
>>> from gpuad import nn
>>> _ = dist.init()
>>> model = nn.parallel.DistributedDataParallel(nn.MLP([4, 8, 1]))
>>> loss = (model(gpuad.ones(2, 4)) ** 2).mean()
>>> loss.backward()                     # gradients are averaged when it returns
>>> [e[1] for e in model.events][-2:]
['backward_end', 'synced']
>>> dist.destroy()
"""
import contextlib

from ..graph import is_grad_enabled
from .modules import Module


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training (call gpuad.distributed.init() first).

    bucket_bytes: the largest bucket; a bucket's all-reduce starts when all its
    gradients are final. find_unused_parameters: parameters the loss does not
    reach in a step are found after forward (a walk over the graph) and reduced as
    zeros; left False, such a parameter makes backward() raise, naming it.
    gradient_as_bucket_view: after each synchronised backward, every .grad is a view
    of its bucket (as torch's option): the averages are not copied out, and the
    gradients take no memory beyond the buckets; with zero_grad(set_to_none=False)
    backward then accumulates into the buckets directly, which lowers the step's
    peak as well. A .grad kept across steps is overwritten by the next step's.
    broadcast_buffers: take rank 0's buffers before each forward with gradients on
    (torch's default); at construction they are taken either way.
    """

    def __init__(self, module, bucket_bytes=25 << 20, find_unused_parameters=False, gradient_as_bucket_view=False,
                 broadcast_buffers=True):
        super().__init__()
        from ..distributed.collectives import require_world
        from ..distributed.reducer import Reducer
        world = require_world()
        self.module = module
        named = list(module.named_parameters())
        _check_same_parameters(named, world)
        object.__setattr__(self, "_world", world)
        self.broadcast_buffers = broadcast_buffers
        self._broadcast(named + list(module.named_buffers()))
        trainable = [(n, p) for n, p in named if p.requires_grad]
        object.__setattr__(self, "reducer", Reducer([p for _, p in trainable], [n for n, _ in trainable], world,
                                                    bucket_bytes, find_unused_parameters, gradient_as_bucket_view))
        self.find_unused_parameters = find_unused_parameters
        self.require_backward_grad_sync = True
        self._hooks = [p.register_post_accumulate_grad_hook(lambda t, i=i: self.reducer.on_grad(i, t))
                       for i, (_, p) in enumerate(trainable)]

    def _broadcast(self, named):
        handles = [self._world.ibroadcast(t.data, 0, f"DistributedDataParallel broadcast of {n}") for n, t in named]
        for h in handles:
            h.wait()

    def forward(self, *args, **kwargs):
        if self.broadcast_buffers and is_grad_enabled():
            buffers = list(self.module.named_buffers())
            if buffers:
                self._broadcast(buffers)
        sync = self.require_backward_grad_sync and is_grad_enabled()
        self.reducer.prepare(sync)
        out = self.module(*args, **kwargs)
        if sync and self.find_unused_parameters:
            self.reducer.mark_unused(out)
        return out

    @contextlib.contextmanager
    def no_sync(self):
        """Forward passes inside accumulate their gradients locally, with no communication;
        the first synchronised backward after them all-reduces the accumulated sum::

            with ddp.no_sync():
                loss_fn(ddp(x1), y1).backward()     # local only
            loss_fn(ddp(x2), y2).backward()         # all-reduces the sum of both
        """
        before = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = before

    @property
    def events(self):
        """The last step's (time, kind, detail) log: forward, ready, start, done, backward_end, synced."""
        return self.reducer.events

    @property
    def buckets(self):
        """Parameter names per bucket, in the order their all-reduces start."""
        return [[self.reducer.names[i] for i, _, _ in b.members] for b in self.reducer.buckets]


def _check_same_parameters(named, world):
    """Every rank must hold the same parameters: a mismatch raises on all ranks alike, naming it."""
    mine = [(n, tuple(p.shape), str(p.dtype), bool(p.requires_grad)) for n, p in named]
    everyone = world.all_gather_object(mine, "DistributedDataParallel parameter check")
    ref = everyone[0]
    for r, theirs in enumerate(everyone[1:], 1):
        if theirs == ref:
            continue
        a, b = dict((s[0], s[1:]) for s in ref), dict((s[0], s[1:]) for s in theirs)
        for name in list(a) + [k for k in b if k not in a]:
            if a.get(name) != b.get(name):
                what = lambda s: "no such parameter" if s is None else f"shape {s[0]}, {s[1]}" + \
                    ("" if s[2] else ", requires_grad=False")                             # noqa: E731
                raise ValueError(f"DistributedDataParallel: parameter {name!r} differs across ranks: rank 0 "
                                 f"has {what(a.get(name))}, rank {r} has {what(b.get(name))}. Every rank must "
                                 f"build the same model.")
        raise ValueError(f"DistributedDataParallel: rank {r} registers the same parameters as rank 0 in a "
                         f"different order; every rank must build the same model.")


DDP = DistributedDataParallel
