"""Shared fixtures: the backends every test body runs on, and the torch oracle.

Each test is written once against `xp` (the array module of the backend
under test) and compares with numpy, the oracle. The cuda backend joins the
parameter list only where CuPy can allocate on a GPU.
"""
import os

import numpy as np
import pytest

import gpuad
from tests import fixture_ops  # noqa: F401  (registers an op through one declaration)


def _cuda_ok():
    try:
        from gpuad.backends import devices
        return devices.cuda_available()[0]
    except Exception:
        return False


BACKENDS = ["cpu"] + (["cuda"] if _cuda_ok() else [])

# Without a GPU, Triton kernels run in Triton's interpreter (set before any kernel
# module is imported: @triton.jit reads it when it decorates).
if not _cuda_ok():
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


def pytest_collection_modifyitems(config, items):
    if _cuda_ok():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (CuPy cannot allocate here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_addoption(parser):
    parser.addoption("--fuzz", type=int, default=0, help="run N extra random programs in tests/test_fuzz.py")
