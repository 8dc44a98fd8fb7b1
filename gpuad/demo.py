"""python -m gpuad.demo: train the lecture's three architectures on small synthetic tasks.

Each task prints its loss curve as a few lines; every loss falls by well over
10x in a fixed number of steps with a fixed seed.

    mlp     regress y = sin(3 x1) cos(2 x2) with MLP([2, 32, 32, 1], tanh), Adam
    resnet  the same target with a ResNet of 4 residual tanh blocks, Adam
    rnn     sum a running sequence (BPTT over 12 steps) with an RNN + Linear head, Adam
    gpt     a character-level GPT on the short text below (written for gpuad), AdamW;
            `python -m gpuad.demo gpt --steps 300 --checkpoint sqrt` (sqrt, none, a
            segment count or a byte budget such as 8MiB); `--autocast bfloat16` trains
            in mixed precision
    cnn     a small ResNet-style CNN (conv, batch norm, ReLU, residual blocks, global
            pooling) on real images: the 1,797 8 x 8 handwritten digits shipped in
            gpuad/data (UCI optdigits, CC BY 4.0); reports test accuracy.
            `python -m gpuad.demo cnn --checkpoint block` recomputes each block

--ddp trains data-parallel over the processes of an MPI launcher: each rank takes
its shard of every batch and the gradients are averaged (DistributedDataParallel),
so the losses match one process on the whole batch:

    mpiexec -n 2 python -m gpuad.demo mlp --ddp
"""
import numpy as np

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim


def _regression_data(rng, n=256):
    x = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    y = (np.sin(3 * x[:, :1]) * np.cos(2 * x[:, 1:])).astype(np.float32)
    return gpuad.tensor(x), gpuad.tensor(y)


class _Parallel:
    """--ddp: the model wrapped in DistributedDataParallel, each batch cut to this rank's
    rows, and losses averaged over the ranks; without it, all three do nothing."""

    def __init__(self, ddp):
        self.on = ddp
        if ddp:
            import gpuad.distributed as dist
            if not dist.is_initialized():
                dist.init()
            self.dist = dist
            self.rank, self.size = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.size = 0, 1

    def wrap(self, model):
        return nn.parallel.DistributedDataParallel(model) if self.on else model

    def shard(self, arr):
        """This rank's rows of a batch (a numpy array): the DistributedSampler's split."""
        if not self.on:
            return arr
        return arr[self.dist.DistributedSampler(len(arr), shuffle=False).indices()]

    def mean(self, loss):
        if not self.on:
            return loss.item()
        t = loss.detach()
        self.dist.all_reduce(t, op="avg")
        return t.item()

    @property
    def main(self):
        return self.rank == 0


def _fit(model, x, y, steps, lr, loss_fn=F.mse_loss, name="", verbose=True, ddp=False):
    par = _Parallel(ddp)
    model = par.wrap(model)
    x, y = gpuad.tensor(par.shard(x.numpy())), gpuad.tensor(par.shard(y.numpy()))
    opt = optim.Adam(list(model.parameters()), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(par.mean(loss))
    verbose = verbose and par.main
    if verbose and ddp:
        print(f"{name:7s} data parallel over {par.size} ranks, {len(x)} of each batch's rows per rank")
    if verbose:
        marks = np.linspace(0, steps - 1, 6).astype(int)
        curve = "  ".join(f"{i}:{losses[i]:.4f}" for i in marks)
        print(f"{name:7s} loss  {curve}   ({losses[0] / losses[-1]:.0f}x lower)")
    return losses


def train_mlp(verbose=True, steps=300, ddp=False):
    gpuad.manual_seed(0)
    x, y = _regression_data(np.random.default_rng(0))
    return _fit(nn.MLP([2, 32, 32, 1], activation="tanh"), x, y, steps, 0.01, name="mlp", verbose=verbose,
                ddp=ddp)


def train_resnet(verbose=True, steps=300, ddp=False):
    gpuad.manual_seed(1)
    x, y = _regression_data(np.random.default_rng(1))
    return _fit(nn.ResNet(2, 32, 4, 1, activation="tanh"), x, y, steps, 0.005, name="resnet", verbose=verbose,
                ddp=ddp)


class _SeqModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(1, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head(h)


def train_rnn(verbose=True, steps=300, ddp=False):
    gpuad.manual_seed(2)
    rng = np.random.default_rng(2)
    seq = rng.uniform(-1, 1, size=(12, 64, 1)).astype(np.float32)
    target = (seq.sum(axis=0) / 4).astype(np.float32)
    if ddp:
        raise SystemExit("python -m gpuad.demo: --ddp shards the batch axis, which is not the first in the rnn "
                         "task; run mlp, resnet or gpt with --ddp")
    return _fit(_SeqModel(), gpuad.tensor(seq), gpuad.tensor(target), steps, 0.01, name="rnn", verbose=verbose)


TEXT = """\
Backpropagation walks the graph backwards. Every value the forward pass made is
kept until its gradient has been formed, and then it is let go. The order is the
reverse of creation, so nothing is waited for and nothing is done twice. A chain
of operations becomes a product of small matrices, and the product is taken from
the end, where the output is a single number and the vectors are short.
Memory is the price. The activations of a deep network outweigh its weights,
and a careful engine frees each one at the moment its last reader is done.
When the budget is tight, some activations are thrown away and computed again,
a little time spent to save a lot of space. Attention is the hungriest layer:
its scores grow with the square of the sequence, so the fused kernel keeps only
one row of statistics and recomputes the rest while it walks back.
"""


def train_gpt(verbose=True, steps=300, checkpoint=None, block=32, batch=16, ddp=False, autocast=None):
    """A character-level GPT on TEXT; returns the losses (and prints progress and a sample).
    autocast: "bfloat16" or "float16" runs the forward in an autocast region (float32
    parameters and gradients, as torch's mixed precision)."""
    par = _Parallel(ddp)
    gpuad.manual_seed(4)
    chars = sorted(set(TEXT))
    ids = np.array([chars.index(c) for c in TEXT], np.int64)
    gpt = nn.GPT(len(chars), block, d_model=64, n_layers=2, n_heads=4, checkpoint=checkpoint)
    model = par.wrap(gpt)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(4)                  # the same batches on every rank; each takes its rows
    losses = []
    verbose = verbose and par.main
    if verbose and ddp:
        print(f"gpt     data parallel over {par.size} ranks, {len(par.shard(np.arange(batch)))} of each "
              f"batch's {batch} sequences per rank")
    for step in range(steps):
        starts = par.shard(rng.integers(0, len(ids) - block - 1, batch))
        x = gpuad.tensor(np.stack([ids[s:s + block] for s in starts]))
        y = gpuad.tensor(np.stack([ids[s + 1:s + block + 1] for s in starts]))
        opt.zero_grad()
        with gpuad.autocast(x.device, dtype=autocast, enabled=autocast is not None):
            loss = F.cross_entropy(model(x).reshape(-1, len(chars)), y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(par.mean(loss))
        if verbose and (step % max(steps // 10, 1) == 0 or step == steps - 1):
            print(f"gpt     step {step:4d}  loss {losses[-1]:.3f}", flush=True)
    model = gpt
    if verbose:
        print("gpt     sample: " + repr(sample(model, chars, "Back", 80)))
    return losses


def sample(model, chars, prompt, n, temperature=0.8):
    """Continue prompt by n characters, drawing from the model's distribution."""
    model.eval()
    out = [chars.index(c) for c in prompt]
    rng = np.random.default_rng(0)
    with gpuad.no_grad():
        for _ in range(n):
            ctx = gpuad.tensor(np.array([out[-model.block_size:]]))
            logits = model(ctx).numpy()[0, -1] / temperature
            p = np.exp(logits - logits.max())
            out.append(int(rng.choice(len(chars), p=p / p.sum())))
    model.train()
    return "".join(chars[i] for i in out)


def load_digits():
    """(images (1797, 1, 8, 8) float32 in 0..1, labels (1797,) int64): gpuad/data/digits.csv.gz.

    >>> x, y = load_digits()
    >>> x.shape, y.shape, int(y.max())
    ((1797, 1, 8, 8), (1797,), 9)
    """
    import gzip
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.csv.gz")
    with gzip.open(path, "rt") as f:
        a = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return (a[:, :64] / 16.0).reshape(-1, 1, 8, 8), a[:, 64].astype(np.int64)


class _Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus the input (a strided 1 x 1 conv and BN
    when the shape changes), then ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class SmallResNet(nn.Module):
    """A ResNet for small images: a 3 x 3 stem conv, stages of basic blocks (stage i has
    width 2^i channels; each stage after the first starts with a stride-2 block), global
    average pooling and a linear head. checkpoint=True recomputes the stem and each block
    in backward (the activations kept are their inputs alone).

    >>> import gpuad
    >>> SmallResNet(in_channels=3, blocks=(1, 1))(gpuad.ones((2, 3, 16, 16))).shape
    (2, 10)
    """

    def __init__(self, in_channels=1, width=16, blocks=(1, 2), classes=10, checkpoint=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        layers, c = [], width
        for i, n in enumerate(blocks):
            out = width * 2 ** i
            for j in range(n):
                layers.append(_Block(c, out, stride=2 if i and not j else 1))
                c = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))
        self.checkpoint = checkpoint

    def forward(self, x):
        for block in (self.stem,) + tuple(self.blocks):
            x = gpuad.checkpoint(block, x) if self.checkpoint and self.training else block(x)
        return self.head(x)


def train_cnn(verbose=True, steps=None, epochs=12, batch=64, checkpoint=None, ddp=False):
    """SmallResNet (stem, three residual blocks: 16, 32, 32 channels) on a seeded 80/20 split
    of the digits; returns the test accuracy."""
    if ddp:
        raise SystemExit("python -m gpuad.demo: the cnn task runs in one process; run mlp, resnet or gpt with --ddp")
    gpuad.manual_seed(5)
    x, y = load_digits()
    order = np.random.default_rng(5).permutation(len(y))
    test, train = order[:360], order[360:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    model = SmallResNet(checkpoint=checkpoint not in (None, "none", False))
    per_epoch = -(-len(train) // batch)
    total = steps if steps else epochs * per_epoch
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, total)
    rng = np.random.default_rng(6)
    step, losses = 0, []
    import time
    t0 = time.perf_counter()
    while step < total:
        perm = rng.permutation(train)
        for i in range(0, len(perm), batch):
            if step == total:
                break
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(gpuad.tensor(x[idx])), gpuad.tensor(y[idx]))
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if verbose and (step % per_epoch == 0 or step == total):
                print(f"cnn     step {step:4d}  epoch {step / per_epoch:4.1f}  loss {np.mean(losses[-per_epoch:]):.4f}",
                      flush=True)
    model.eval()
    with gpuad.no_grad():
        pred = model(gpuad.tensor(x[test])).numpy().argmax(axis=1)
    acc = float(np.mean(pred == y[test]))
    if verbose:
        how = ", each block checkpointed" if model.checkpoint else ""
        print(f"cnn     test accuracy {acc:.2%} on {len(test)} held-out digits "
              f"({time.perf_counter() - t0:.1f} s of training{how})")
    return acc


TASKS = {"mlp": train_mlp, "resnet": train_resnet, "rnn": train_rnn, "gpt": train_gpt, "cnn": train_cnn}


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m gpuad.demo", description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="*", help=f"tasks to run (default: all of {', '.join(TASKS)})")
    p.add_argument("--steps", type=int, default=None, help="training steps per task")
    p.add_argument("--checkpoint", default=None,
                   help="gpt: sqrt, none, a segment count or a byte budget; cnn: block (recompute each block)")
    p.add_argument("--autocast", default=None, choices=("bfloat16", "float16"),
                   help="gpt: mixed precision, the forward in an autocast region of this dtype")
    p.add_argument("--ddp", action="store_true",
                   help="data parallel over the ranks of an MPI launcher (mpiexec -n 2 python -m gpuad.demo mlp --ddp)")
    args = p.parse_args(argv)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    for name in args.tasks or list(TASKS):
        kw = {"steps": args.steps} if args.steps else {}
        if args.ddp:
            kw["ddp"] = True
        if name == "gpt" and args.autocast:
            kw["autocast"] = args.autocast
        if name == "gpt" and args.checkpoint not in (None, "none"):
            kw["checkpoint"] = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
        if name == "cnn" and args.checkpoint not in (None, "none"):
            if args.checkpoint != "block":
                p.error(f"cnn: --checkpoint takes block or none, not {args.checkpoint!r}")
            kw["checkpoint"] = "block"
        TASKS[name](**kw)


if __name__ == "__main__":
    main()
