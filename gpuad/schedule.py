"""Checkpoint schedules for a chain of layers: the fastest one that fits a memory budget.

A chain has L layers; x_0 is its input and layer l maps x_l to x_{l+1}. A
schedule is a tree over the segment [0, L):

    ("store", i, j)                 run layers i..j-1 recording everything
    ("split", i, k, j, left, right) run [i, k) without recording, keep x_k,
                                    handle [k, j) by `right`; when backward
                                    reaches x_k, rerun [i, k) from x_i by `left`

Splits nest, so recomputation happens at several levels, as in revolve and
Rotor. The dynamic program below finds, for a memory budget, the tree with
the least recomputation; it is memoised on each segment's layer signature, so
a homogeneous chain (an MLP) costs O(L^2) vector operations.

Memory model of gpuad's engine, in activation bytes: buffers the forward
pass and recomputes allocate (gpuad.memory counts them as
activation_peak_bytes). Parameters, their gradients and the gradients in
flight are not part of the budget; nor is the chain's input, which the
caller holds.
    peak(store i..j)      = sum(keep[i:j])      (everything the layers keep)
    peak(split i, k, j)   = max(act[k] + peak(right), held + peak(left))
                            (x_k is held while the right part runs; by the
                            time the left part is recomputed, x_k is dead,
                            but the chain's output, which the caller holds
                            until backward ends, is `held` when j = L)
    extra cost(split)     = fwd[i:k] + cost(left) + cost(right)

The same program with the unit model of revolve (one snapshot per stored
state, advancing k steps costs k, a single step reverses from its stored
input) gives Griewank's closed form; tests check that.

>>> from gpuad.schedule import Chain, optimal
>>> chain = Chain(fwd=[1.0] * 8, act=[100] * 9, keep=[100] * 8)
>>> s = optimal(chain, 600)
>>> s.peak_bytes <= 600, s.recomputed_layers, s.stored
(True, 3, [3])
"""
import math

import numpy as np

INF = math.inf


class Chain:
    """Per-layer costs: forward cost, activation bytes (act[0] is the input),
    and the bytes each layer keeps for backward when recorded (its output included)."""

    def __init__(self, fwd, act, keep, output_held=True):
        self.output_held = output_held
        self.fwd = [float(f) for f in fwd]
        self.act = [int(a) for a in act]
        self.keep = [int(k) for k in keep]
        self.L = len(self.fwd)
        if len(self.act) != self.L + 1 or len(self.keep) != self.L:
            raise ValueError(f"gpuad.schedule.Chain: {self.L} layers need {self.L + 1} activation sizes and "
                             f"{self.L} keep sizes, got {len(self.act)} and {len(self.keep)}")
        self._fwd_prefix = np.concatenate([[0.0], np.cumsum(self.fwd)])
        self._keep_prefix = np.concatenate([[0], np.cumsum(self.keep)])

    def fwd_cost(self, i, j):
        return float(self._fwd_prefix[j] - self._fwd_prefix[i])

    def store_peak(self, i, j):
        return int(self._keep_prefix[j] - self._keep_prefix[i])

    def signature(self, i, j):
        return (tuple(self.fwd[i:j]), tuple(self.act[i:j + 1]), tuple(self.keep[i:j]), j == self.L)

    def split_terms(self, i, k, j):
        """(recompute cost, memory held while doing the right part, ... the left part)."""
        held = self.act[self.L] if (j == self.L and self.output_held) else 0
        return self.fwd_cost(i, k), self.act[k], held

    @classmethod
    def homogeneous(cls, L, fwd, act, keep, output_held=True):
        return cls([fwd] * L, [act] * (L + 1), [keep] * L, output_held)


class Schedule:
    """A schedule tree with its predicted peak (bytes) and recomputation."""

    def __init__(self, tree, chain, budget=None):
        self.tree = tree
        self.chain = chain
        self.budget = budget
        self.peak_bytes = peak_of(tree, chain)
        self.recompute_cost = cost_of(tree, chain)
        self.recomputed_layers = layers_recomputed(tree)
        self.stored = sorted(stored_of(tree))

    @property
    def depth(self):
        return _depth(self.tree)

    def __repr__(self):
        L = self.chain.L
        marks = "".join("|" if l in self.stored else "." for l in range(1, L)) if L <= 100 else "..."
        budget = f", budget {_mib(self.budget)}" if self.budget is not None else ""
        return (f"Schedule({L} layers{budget}: stores x_{{{', '.join(map(str, self.stored)) or '-'}}} "
                f"[{marks}], predicted activation peak {_mib(self.peak_bytes)}, recomputes "
                f"{self.recomputed_layers} layer forwards (cost {self.recompute_cost:g}), recompute levels "
                f"{self.depth})")


def _mib(b):
    return f"{b / 2 ** 20:.2f} MiB" if b >= 2 ** 20 else f"{b} B"


# --- evaluating a tree --------------------------------------------------------------

def peak_of(tree, chain):
    if tree[0] == "store":
        return chain.store_peak(tree[1], tree[2])
    _, i, k, j, left, right = tree
    _, held_right, held_left = chain.split_terms(i, k, j)
    return max(held_right + peak_of(right, chain), held_left + peak_of(left, chain))


def cost_of(tree, chain):
    if tree[0] == "store":
        return 0.0
    _, i, k, j, left, right = tree
    return chain.fwd_cost(i, k) + cost_of(left, chain) + cost_of(right, chain)


def layers_recomputed(tree):
    if tree[0] == "store":
        return 0
    _, i, k, j, left, right = tree
    return (k - i) + layers_recomputed(left) + layers_recomputed(right)


def stored_of(tree):
    if tree[0] == "store":
        return set()
    _, i, k, j, left, right = tree
    return {k} | stored_of(left) | stored_of(right)


def _depth(tree):
    """Levels of recomputation: a segment recomputed inside a recomputed segment is level 2."""
    if tree[0] == "store":
        return 0
    return max(1 + _depth(tree[4]), _depth(tree[5]))


# --- fixed schedules ----------------------------------------------------------------

def segments_tree(L, segments):
    """`segments` equal segments; all but the last are recomputed (as PyTorch's checkpoint_sequential)."""
    if not 1 <= segments <= L:
        raise ValueError(f"gpuad.checkpoint_sequential: segments must be between 1 and {L} (the number of "
                         f"layers), got {segments}")
    bounds = [round(L * s / segments) for s in range(segments + 1)]
    tree = ("store", bounds[-2], L)
    for s in range(segments - 2, -1, -1):
        i, k = bounds[s], bounds[s + 1]
        tree = ("split", i, k, L, ("store", i, k), tree)
    return tree


def sqrt_segments(L):
    """The lecture's k = sqrt(L): ceil(sqrt(L)) segments."""
    return max(1, math.ceil(math.sqrt(L)))


# --- the dynamic program ------------------------------------------------------------

class _DP:
    """min recompute cost for every segment and every budget 0..n units, vectorised over the budget."""

    def __init__(self, chain, unit, n):
        self.chain, self.unit, self.n = chain, unit, n
        self.memo = {}

    def units(self, b):
        return int(math.ceil(b / self.unit))

    def solve(self, i, j):
        """(cost[m], choice[m]) for segment [i, j); choice -1: store, else split offset k - i."""
        key = self.chain.signature(i, j)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        n = self.n
        cost = np.full(n + 1, INF)
        choice = np.full(n + 1, -2, dtype=np.int64)          # -2: infeasible
        store = self.chain.store_peak(i, j)
        need = self.units(store) if store is not None else n + 1
        if need <= n:
            cost[need:] = 0.0
            choice[need:] = -1
        for k in range(i + 1, j):
            f, held_right, held_left = self.chain.split_terms(i, k, j)
            ar, al = self.units(held_right), self.units(held_left)
            if max(ar, al) > n:
                continue
            right, _ = self.solve(k, j)
            left, _ = self.solve(i, k)
            cand = np.full(n + 1, INF)
            # the right part runs with x_k held (ar), the left part after it (al)
            lo = max(ar, al)
            cand[lo:] = f + right[lo - ar:n + 1 - ar] + left[lo - al:n + 1 - al]
            better = cand < cost
            cost = np.where(better, cand, cost)
            choice = np.where(better, k - i, choice)
        self.memo[key] = (cost, choice)
        return cost, choice

    def tree(self, i, j, m):
        _, choice = self.solve(i, j)
        c = int(choice[m])
        if c == -1:
            return ("store", i, j)
        if c < 0:
            raise RuntimeError("gpuad.schedule: internal error, infeasible segment in a feasible plan")
        k = i + c
        _, held_right, held_left = self.chain.split_terms(i, k, j)
        return ("split", i, k, j, self.tree(i, k, m - self.units(held_left)),
                self.tree(k, j, m - self.units(held_right)))


def min_peak(chain):
    """The smallest activation peak any schedule reaches (bytes)."""
    memo = {}

    def best(i, j):
        key = chain.signature(i, j)
        if key in memo:
            return memo[key]
        b = chain.store_peak(i, j)
        for k in range(i + 1, j):
            _, held_right, held_left = chain.split_terms(i, k, j)
            b = min(b, max(held_right + best(k, j), held_left + best(i, k)))
        memo[key] = b
        return b
    return best(0, chain.L)


def optimal(chain, budget_bytes, resolution=512):
    """The schedule with the least recomputation whose activation peak fits budget_bytes.

    Memory is counted in budget/resolution units, rounded up, so the plan's
    true peak never exceeds the budget. Raises ValueError, stating the smallest
    budget that would fit, when none does.
    """
    budget_bytes = int(budget_bytes)
    floor = min_peak(chain)
    if budget_bytes < floor:
        raise ValueError(f"gpuad.checkpoint: no schedule of these {chain.L} layers fits in {budget_bytes:,} bytes "
                         f"of activations; the smallest budget that fits is {floor:,} bytes ({_mib(floor)})")
    # Memory units: the sizes' common divisor when that is fine enough (exact, as
    # for an MLP, where every size is a multiple of one activation), else
    # budget/resolution with every requirement rounded up.
    g = 0
    for v in list(getattr(chain, "act", [])) + list(getattr(chain, "keep", [])):
        g = math.gcd(g, int(v))
    unit = g if g and budget_bytes // g <= 8 * resolution else max(1, math.ceil(budget_bytes / resolution))
    n = budget_bytes // unit
    dp = _DP(chain, unit, n)
    cost, _ = dp.solve(0, chain.L)
    if not np.isfinite(cost[n]):
        # rounding up to units lost the last few bytes: retry finer
        if resolution < 8192:
            return optimal(chain, budget_bytes, resolution * 4)
        raise ValueError(f"gpuad.checkpoint: no schedule fits in {budget_bytes:,} bytes at this resolution; "
                         f"the smallest budget that fits is {floor:,} bytes")
    return Schedule(dp.tree(0, chain.L, n), chain, budget_bytes)


# --- revolve's unit model, for comparison --------------------------------------------

def revolve_steps(l, s):
    """Minimal forward steps to reverse l steps with s snapshots (Griewank's closed form):
    t*l - C(s+t, s+1), with t the least integer such that C(s+t, s) >= l."""
    if l <= 1:
        return 0
    if s < 1:
        raise ValueError("revolve needs at least one snapshot for more than one step")
    t = 0
    while math.comb(s + t, s) < l:
        t += 1
    return t * l - math.comb(s + t, s + 1)


class RevolveChain:
    """Revolve's unit model as a chain for the same dynamic program: memory counts
    snapshots, storing x_k takes one for the right part and gives it back for the
    left, advancing k steps costs k, and only a single step reverses directly."""

    def __init__(self, L):
        self.L = L

    def store_peak(self, i, j):
        return 0 if j - i == 1 else None

    def split_terms(self, i, k, j):
        return float(k - i), 1, 0

    def signature(self, i, j):
        return (j - i,)


def revolve_dp(l, s):
    """Minimal forward steps for l steps and s snapshots, from the scheduler's program."""
    dp = _DP(RevolveChain(l), unit=1, n=s)
    return dp.solve(0, l)[0][s]
