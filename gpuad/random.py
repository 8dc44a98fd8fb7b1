"""The explicit, seedable generator behind randn, rand, dropout and init.

Its state can be read and restored, which is what lets a checkpointed
segment replay its dropout masks bit for bit during recompute.

>>> import gpuad
>>> _ = gpuad.manual_seed(0); a = gpuad.randn(3)
>>> _ = gpuad.manual_seed(0); b = gpuad.randn(3)
>>> bool((a == b).all())
True
"""
import numpy as np


DRAW_FILTERS = []      # what vmap puts between a generator and its draws (its randomness=)


class Generator:
    """A numpy PCG64 generator with a seed and a restorable state."""

    def __init__(self, seed=0):
        self.manual_seed(seed)

    @property
    def rng(self):
        """The numpy generator draws come from (inside vmap: through its randomness rule)."""
        r = self._rng
        for wrap in DRAW_FILTERS:
            r = wrap(r)
        return r

    @rng.setter
    def rng(self, value):
        self._rng = value

    def manual_seed(self, seed):
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        return self

    def get_state(self):
        return self._rng.bit_generator.state

    def set_state(self, state):
        self._rng.bit_generator.state = state


default_generator = Generator(0)


def manual_seed(seed):
    """Seed the default generator (and return it), as torch.manual_seed does."""
    return default_generator.manual_seed(seed)


def get_rng_state():
    return default_generator.get_state()


def set_rng_state(state):
    default_generator.set_state(state)
