"""The device the whole suite runs on, chosen before any test module imports gpuad's
device code (pyproject's addopts loads this plugin with -p):

    python -m pytest                          # the CPU (numpy)
    python -m pytest --device=cuda-standin    # the strict CuPy stand-in (tests/cupy_standin)

On the stand-in, `import cupy` gives a numpy-backed CuPy that refuses what CuPy
refuses, and gpuad's default device is 'cuda': every tensor a test makes from host
data lands on the device, so the whole device path (the cupy namespace and
provider, compile's device replay and CUDA-graph capture, NCCL) runs on the CPU.
Tests that are CPU-only by nature carry `@pytest.mark.cpu_only("why")`; the run
lists them at the end and fails if they pass 10% of the suite. Tests marked `gpu`
need a real CUDA device.
"""
import os
import sys

import pytest

MAX_CPU_ONLY = 0.10


def _device_option():
    """--device, read before any test module imports gpuad's device code (cuda_available
    caches its answer, and the stand-in must be `cupy` by then)."""
    for i, a in enumerate(sys.argv):
        if a.startswith("--device="):
            return a.split("=", 1)[1]
        if a == "--device" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return os.environ.get("GPUAD_TEST_DEVICE", "cpu")


DEVICE = _device_option()
if DEVICE not in ("cpu", "cuda-standin"):
    raise pytest.UsageError(f"--device must be cpu or cuda-standin, not {DEVICE!r}")


def _real_cuda():
    try:
        from gpuad.backends import devices
        return devices.cuda_available()[0]
    except Exception:
        return False


if DEVICE == "cuda-standin":
    from tests import cupy_standin
    cupy_standin.install()
    REAL_CUDA = False
    # Triton kernels on numpy arrays still run in the interpreter; on the stand-in's
    # device arrays the CuPy provider runs (the interpreter cannot launch on device pointers)
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    REAL_CUDA = _real_cuda()

import gpuad  # noqa: E402

if DEVICE == "cuda-standin":
    gpuad.set_default_device("cuda")

BACKENDS = ["cuda"] if DEVICE == "cuda-standin" else ["cpu"] + (["cuda"] if REAL_CUDA else [])

# Without a GPU, Triton kernels run in Triton's interpreter (set before any kernel
# module is imported: @triton.jit reads it when it decorates).
if not REAL_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_CPU_ONLY = []


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda-standin"),
                     help="the device the whole suite runs on (cuda-standin: tests/cupy_standin)")


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only(reason): a test of the CPU path itself, skipped on a device")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (CuPy cannot allocate here)")
    for item in items:
        if "gpu" in item.keywords and not REAL_CUDA:
            item.add_marker(skip_gpu)
        mark = item.get_closest_marker("cpu_only")
        reason = mark.args[0] if mark is not None and mark.args else None
        if reason is None:
            reason = CPU_ONLY_DOCTESTS.get(item.name)
        if reason is not None and DEVICE != "cpu":
            _CPU_ONLY.append((item.nodeid, reason))
            item.add_marker(pytest.mark.skip(reason=f"CPU only: {reason}"))
    config._gpuad_counts = (len(items), len(_CPU_ONLY))


# doctests that are about the CPU by nature (a doctest cannot carry a mark)
CPU_ONLY_DOCTESTS = {
    "gpuad.distributed.launch": "starts MPI ranks in subprocesses, which run on the CPU",
    "gpuad.distributed": "all-reduces over MPI between host processes",
    "gpuad.nn.parallel": "DDP over MPI between host processes",
}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if DEVICE == "cpu":
        return
    total, cpu_only = getattr(config, "_gpuad_counts", (0, 0))
    share = cpu_only / max(total, 1)
    terminalreporter.write_line(f"device {DEVICE}: {cpu_only} of {total} tests are CPU-only ({100 * share:.1f}%):")
    by_reason = {}
    for nodeid, reason in _CPU_ONLY:
        by_reason.setdefault(reason, []).append(nodeid)
    for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        terminalreporter.write_line(f"  {len(ids):4d}  {reason}")


def pytest_sessionfinish(session, exitstatus):
    total, cpu_only = getattr(session.config, "_gpuad_counts", (0, 0))
    if DEVICE != "cpu" and total > 50 and cpu_only > MAX_CPU_ONLY * total:
        session.exitstatus = 1          # more than 10% of the suite would not run on the device
