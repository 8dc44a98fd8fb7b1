"""Shared fixtures: the device every test body runs on, and the torch oracle.

Each test is written once and compares with numpy (or torch), the oracle. The
suite runs on one device per session:

    python -m pytest                          # the CPU (numpy)
    python -m pytest --device=cuda-standin    # the strict CuPy stand-in (tests/cupy_standin)

On the stand-in, `import cupy` gives a numpy-backed CuPy that refuses what CuPy
refuses, and gpuad's default device is 'cuda': every tensor a test makes from host
data lands on the device, so the whole device path (the cupy namespace and
provider, compile's device replay and CUDA-graph capture, NCCL) runs on the CPU.
Tests that are CPU-only by nature carry `@pytest.mark.cpu_only("why")`; the run
lists them at the end. Tests marked `gpu` need a real CUDA device.
"""
import os
import sys

import numpy as np
import pytest


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
from tests import fixture_ops  # noqa: E402,F401  (registers an op through one declaration)

if DEVICE == "cuda-standin":
    gpuad.set_default_device("cuda")

BACKENDS = ["cuda"] if DEVICE == "cuda-standin" else ["cpu"] + (["cuda"] if REAL_CUDA else [])

# Without a GPU, Triton kernels run in Triton's interpreter (set before any kernel
# module is imported: @triton.jit reads it when it decorates).
if not REAL_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=BACKENDS)
def device(request):
    """Run the test on every available device; results are compared on the CPU."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _fresh_seed():
    gpuad.manual_seed(0)
    yield


def torch_or_skip():
    return pytest.importorskip("torch")


def assert_close(a, b, rtol=1e-10, atol=1e-12):
    a = a.numpy() if isinstance(a, gpuad.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, gpuad.Tensor) else np.asarray(b)
    if hasattr(b, "detach"):
        b = b.detach().numpy()
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


_CPU_ONLY = []


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only(reason): a test of the CPU path itself, skipped on a device")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (CuPy cannot allocate here)")
    for item in items:
        if "gpu" in item.keywords and not REAL_CUDA:
            item.add_marker(skip_gpu)
        mark = item.get_closest_marker("cpu_only")
        if mark is not None and DEVICE != "cpu":
            reason = mark.args[0] if mark.args else mark.kwargs.get("reason", "")
            _CPU_ONLY.append((item.nodeid, reason))
            item.add_marker(pytest.mark.skip(reason=f"CPU only: {reason}"))
    config._gpuad_counts = (len(items), len(_CPU_ONLY))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if DEVICE == "cpu":
        return
    total, cpu_only = getattr(config, "_gpuad_counts", (0, 0))
    terminalreporter.write_line(f"device {DEVICE}: {cpu_only} of {total} tests are CPU-only "
                                f"({100 * cpu_only / max(total, 1):.1f}%):")
    by_reason = {}
    for nodeid, reason in _CPU_ONLY:
        by_reason.setdefault(reason, []).append(nodeid)
    for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        terminalreporter.write_line(f"  {len(ids):4d}  {reason}")


def pytest_addoption(parser):
    parser.addoption("--fuzz", type=int, default=0, help="run N extra random programs in tests/test_fuzz.py")
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda-standin"),
                     help="the device the whole suite runs on (cuda-standin: tests/cupy_standin)")
