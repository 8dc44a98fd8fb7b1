"""Shared fixtures: the device every test body runs on, and the torch oracle.

Each test is written once and compares with numpy (or torch), the oracle. The
device the whole suite runs on is chosen by tests/device_plugin.py (loaded by
pyproject's addopts before any test module): `--device=cpu` (numpy, the
default) or `--device=cuda-standin` (the strict CuPy stand-in).
"""
import numpy as np
import pytest

import gpuad
from tests import fixture_ops  # noqa: F401  (registers an op through one declaration)
from tests.device_plugin import BACKENDS


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


def pytest_addoption(parser):
    parser.addoption("--fuzz", type=int, default=0, help="run N extra random programs in tests/test_fuzz.py "
                     "and tests/test_differential.py")
