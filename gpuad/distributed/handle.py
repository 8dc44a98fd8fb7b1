"""A collective in flight (torch's Work): poll it, or wait for it with a deadline.

Waiting polls rather than blocks inside the library, for two reasons. A deadline:
a rank that died or skipped this collective turns into a DistributedError here
instead of a hang. And a core: MPICH's blocking wait spins, while this one spins
for SPIN seconds and then sleeps between polls, so a rank that waits long (for a
slower peer, or in a benchmark while another process is timed) leaves its core
to others. The cost is at most one sleep (MAX_NAP) of latency after a long wait.
"""
import time

from ..errors import DistributedError

SPIN = 2e-3          # poll flat out this long first: most collectives end within it
FIRST_NAP = 50e-6
MAX_NAP = 1e-3


class Handle:
    """A non-blocking collective: `wait()` until it is done, `is_completed()` to poll.

    `test()` is the backend's poll (for MPI it also makes progress on the transfer);
    `finish()` runs once, after completion (copying a staged result back, say).

    >>> h = Handle(lambda: True, "all_reduce of 8 bytes", timeout=1.0, rank=0)
    >>> h.wait()
    True
    >>> slow = Handle(lambda: False, "barrier", timeout=0.01, rank=1)
    >>> slow.wait()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gpuad.errors.DistributedError: gpuad.distributed: barrier on rank 1 did not complete within 0.01 s...
    """

    def __init__(self, test, what, timeout, rank, finish=None):
        self._test, self.what, self.timeout, self.rank = test, what, timeout, rank
        self._finish = finish
        self._done = False
        self.keep = None        # what the collective reads or writes until done (a device buffer)

    def is_completed(self):
        """Poll once (and make progress); True once the result is in place."""
        if not self._done and self._test():
            self._complete()
        return self._done

    def wait(self, timeout=None):
        """Block until done; DistributedError after `timeout` seconds (the init() default)."""
        if self._done:
            return True
        limit = self.timeout if timeout is None else timeout
        start = time.perf_counter()
        spin_until, deadline = start + SPIN, start + limit
        nap = FIRST_NAP
        while not self._test():
            now = time.perf_counter()
            if now > deadline:
                raise DistributedError(
                    f"gpuad.distributed: {self.what} on rank {self.rank} did not complete within {limit:g} s. "
                    f"Another rank may have died, raised, or called a different collective (every rank must "
                    f"call the same collectives in the same order). init(timeout=...) sets the limit.")
            if now > spin_until:
                time.sleep(nap)
                nap = min(2 * nap, MAX_NAP)
        self._complete()
        return True

    def then(self, fn):
        """Run fn() after completion too (at once if already complete); returns self."""
        if self._done:
            fn()
        elif self._finish is None:
            self._finish = fn
        else:
            first = self._finish

            def both():
                first()
                fn()
            self._finish = both
        return self

    def _complete(self):
        self._done = True
        self.keep = None
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()

    def __repr__(self):
        return f"<Handle {self.what}: {'done' if self._done else 'in flight'}>"


def done(what, rank, finish=None):
    """A handle for a collective that needed no communication (one rank)."""
    h = Handle(lambda: True, what, 0.0, rank, finish)
    h._complete()
    return h
