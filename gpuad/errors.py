"""Every error and warning gpuad defines, in one place (so any layer can raise any of them).

>>> import gpuad
>>> issubclass(gpuad.errors.BackwardError, RuntimeError), gpuad.TraceError is gpuad.errors.TraceError
(True, True)
"""


class BackwardError(RuntimeError):
    """Raised for misuse of backward (freed graph, missing grad, ...)."""


class TraceError(RuntimeError):
    """The step did something a trace of shapes cannot follow (a value-dependent branch)."""


class GuardError(RuntimeError):
    """A replay met a value its trace assumed otherwise (gpuad.compile retraces or falls back)."""


class BranchError(GuardError):
    """A replay met another value where its step branched on one (fallback="eager" traces
    such a step on the values of the call, and takes the path that call took): another
    path, traced or to be traced. `site`: the user's line; `value`: what it is now."""

    def __init__(self, message, site=None, value=None):
        GuardError.__init__(self, message)
        self.site, self.value = site, value


class CompileWarning(UserWarning):
    """gpuad.compile retraced often, or fell back to eager."""


class BudgetError(ValueError):
    """The budget is below what recomputation can reach."""


class GradcheckError(AssertionError):
    """The analytic and numeric directional derivatives disagree."""


class DeviceOutOfMemory(MemoryError):
    """A device allocation failed; the message says what was asked, what is live, and what to do."""


class NoTritonForm(Exception):
    """A fused group's member has no Triton form (log1p, power, ...): the group runs on
    numpy, or CuPy, instead. Internal: gpuad.compile catches it."""


class LoadError(RuntimeError):
    """gpuad.load could not read a file: its message names the file and why (empty,
    truncated, corrupt, not a gpuad file, a newer format, saved on a device this machine
    lacks). `path` and `reason` hold the two."""

    def __init__(self, message, path=None, reason=None):
        RuntimeError.__init__(self, message)
        self.path, self.reason = path, reason


class DistributedError(RuntimeError):
    """A collective did not complete: a rank died, raised, or called another collective."""


# numpy's floating-point warnings ("divide by zero encountered in log") from inside gpuad's
# ops: torch computes log(0) = -inf and 1/0 = inf without a word, and these warnings would
# point at gpuad's generated lines, not the user's. A filter on gpuad's own modules (the
# generated code's included) costs nothing until a warning is raised; numpy code of the
# user's keeps its warnings. (NaN hunting: gpuad.autograd's anomaly mode, not warnings.)
FLOAT_WARNINGS = r"(divide by zero|invalid value|overflow|underflow) encountered"


def quiet_float_warnings():
    import warnings
    warnings.filterwarnings("ignore", message=FLOAT_WARNINGS, category=RuntimeWarning, module=r"gpuad(\.|$)")
