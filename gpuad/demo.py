"""python -m gpuad.demo: train the lecture's three architectures on small synthetic tasks.

Each task prints its loss curve as a few lines; every loss falls by well over
10x in a fixed number of steps with a fixed seed.

    mlp     regress y = sin(3 x1) cos(2 x2) with MLP([2, 32, 32, 1], tanh), Adam
    resnet  the same target with a ResNet of 4 residual tanh blocks, Adam
    rnn     sum a running sequence (BPTT over 12 steps) with an RNN + Linear head, Adam
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


TASKS = {"mlp": train_mlp, "resnet": train_resnet, "rnn": train_rnn}


def main():
    for run in TASKS.values():
        run()


if __name__ == "__main__":
    main()
