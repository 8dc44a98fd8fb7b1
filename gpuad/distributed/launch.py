"""Start N ranks of a Python program under the MPI launcher (tests, benchmarks).

The launcher is the `mpiexec` beside the running Python (the pip MPICH puts it
in the virtual environment's bin/), else the first on PATH. Each rank gets one
BLAS thread: N ranks on N cores must not oversubscribe them (two ranks with two
OpenBLAS threads each on two cores run several times slower).

>>> import sys
>>> r = run(2, [sys.executable, "-c", "print('hello')"], timeout=60)
>>> r.stdout.count("hello")      # (the two ranks' output may interleave, even within a line)
2
"""
import os
import shutil
import signal
import subprocess
import sys

ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def mpiexec_path():
    """The launcher's path, or None when no MPI is installed."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(here):
        return here
    return shutil.which("mpiexec")


def run(n, argv, timeout, env=None, cwd=None):
    """Run argv on n ranks; the CompletedProcess (stdout and stderr as text).

    env: variables to set on top of this process's (None removes one).
    subprocess.TimeoutExpired if the whole job outlives `timeout` seconds (the
    launcher and its ranks are killed first).
    """
    exe = mpiexec_path()
    if exe is None:
        raise FileNotFoundError("gpuad.distributed: no mpiexec found; pip install 'gpuad[distributed]'")
    full_env = dict(os.environ, **ONE_THREAD)
    for k, v in (env or {}).items():               # None removes a variable
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    # A session of its own: on a time-out the whole group goes, ranks included.
    p = subprocess.Popen([exe, "-n", str(n), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)
