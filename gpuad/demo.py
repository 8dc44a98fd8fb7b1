"""python -m gpuad.demo: train the lecture's three architectures on small synthetic tasks.

Each task prints its loss curve as a few lines; every loss falls by well over
10x in a fixed number of steps with a fixed seed.

    mlp     regress y = sin(3 x1) cos(2 x2) with MLP([2, 32, 32, 1], tanh), Adam
    resnet  the same target with a ResNet of 4 residual tanh blocks, Adam
    rnn     sum a running sequence (BPTT over 12 steps) with an RNN + Linear head, Adam
    gpt     a character-level GPT on the short text below (written for gpuad), AdamW;
            `python -m gpuad.demo gpt --steps 300 --checkpoint sqrt` (sqrt, none, a
            segment count or a byte budget such as 8MiB)
"""
import numpy as np

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim


def _regression_data(rng, n=256):
    x = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    y = (np.sin(3 * x[:, :1]) * np.cos(2 * x[:, 1:])).astype(np.float32)
    return gpuad.tensor(x), gpuad.tensor(y)


def _fit(model, x, y, steps, lr, loss_fn=F.mse_loss, name="", verbose=True):
    opt = optim.Adam(list(model.parameters()), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if verbose:
        marks = np.linspace(0, steps - 1, 6).astype(int)
        curve = "  ".join(f"{i}:{losses[i]:.4f}" for i in marks)
        print(f"{name:7s} loss  {curve}   ({losses[0] / losses[-1]:.0f}x lower)")
    return losses


def train_mlp(verbose=True, steps=300):
    gpuad.manual_seed(0)
    x, y = _regression_data(np.random.default_rng(0))
    return _fit(nn.MLP([2, 32, 32, 1], activation="tanh"), x, y, steps, 0.01, name="mlp", verbose=verbose)


def train_resnet(verbose=True, steps=300):
    gpuad.manual_seed(1)
    x, y = _regression_data(np.random.default_rng(1))
    return _fit(nn.ResNet(2, 32, 4, 1, activation="tanh"), x, y, steps, 0.005, name="resnet", verbose=verbose)


class _SeqModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(1, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head(h)


def train_rnn(verbose=True, steps=300):
    gpuad.manual_seed(2)
    rng = np.random.default_rng(2)
    seq = rng.uniform(-1, 1, size=(12, 64, 1)).astype(np.float32)
    target = (seq.sum(axis=0) / 4).astype(np.float32)
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


def train_gpt(verbose=True, steps=300, checkpoint=None, block=32, batch=16):
    """A character-level GPT on TEXT; returns the losses (and prints progress and a sample)."""
    gpuad.manual_seed(4)
    chars = sorted(set(TEXT))
    ids = np.array([chars.index(c) for c in TEXT], np.int64)
    model = nn.GPT(len(chars), block, d_model=64, n_layers=2, n_heads=4, checkpoint=checkpoint)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(4)
    losses = []
    for step in range(steps):
        starts = rng.integers(0, len(ids) - block - 1, batch)
        x = gpuad.tensor(np.stack([ids[s:s + block] for s in starts]))
        y = gpuad.tensor(np.stack([ids[s + 1:s + block + 1] for s in starts]))
        opt.zero_grad()
        loss = F.cross_entropy(model(x).reshape(-1, len(chars)), y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if verbose and (step % max(steps // 10, 1) == 0 or step == steps - 1):
            print(f"gpt     step {step:4d}  loss {losses[-1]:.3f}", flush=True)
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


TASKS = {"mlp": train_mlp, "resnet": train_resnet, "rnn": train_rnn, "gpt": train_gpt}


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m gpuad.demo", description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="*", help=f"tasks to run (default: all of {', '.join(TASKS)})")
    p.add_argument("--steps", type=int, default=None, help="training steps per task")
    p.add_argument("--checkpoint", default=None, help="gpt only: sqrt, none, a segment count or a byte budget")
    args = p.parse_args(argv)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    for name in args.tasks or list(TASKS):
        kw = {"steps": args.steps} if args.steps else {}
        if name == "gpt" and args.checkpoint not in (None, "none"):
            kw["checkpoint"] = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
        TASKS[name](**kw)


if __name__ == "__main__":
    main()
