"""Devices and kernel providers. The gpu-marked tests run only where CuPy can allocate."""
import subprocess
import sys

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn


def test_import_gpuad_imports_no_gpu_stack_and_no_torch():
    code = ("import sys, gpuad, numpy as np; x = gpuad.tensor(np.ones((3, 4), np.float32), requires_grad=True); "
            "gpuad.nn.functional.linear(x, gpuad.ones((2, 4)), activation='tanh').sum().backward(); "
            "print(sorted(m for m in ('cupy', 'triton', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_set_kernels_and_environment(monkeypatch):
    with pytest.raises(ValueError, match="unknown provider 'cuda'"):
        gpuad.set_kernels("cuda")
    monkeypatch.setenv("GPUAD_KERNELS", "cupy")
    assert gpuad.get_kernels() == "cupy"
    gpuad.set_kernels("numpy")
    assert gpuad.get_kernels() == "numpy"
    gpuad.set_kernels(None)
    monkeypatch.delenv("GPUAD_KERNELS")
    assert gpuad.get_kernels() == "default"


def test_cpu_device_round_trip():
    x = gpuad.tensor([1.0, 2.0], device="cpu")
    assert x.device == "cpu" and x.to("cpu") is x and x.cpu() is x


def test_default_device_puts_host_data_there():
    """gpuad.set_default_device, as torch's: tensors made from host data (and modules'
    parameters) go to the default device; device arrays stay where they are."""
    was = gpuad.get_default_device()
    try:
        gpuad.set_default_device("cpu")
        assert gpuad.tensor([1.0]).device == "cpu" and gpuad.nn.Linear(2, 3).weight.device == "cpu"
        with pytest.raises(ValueError, match="unknown device"):
            gpuad.set_default_device("tpu")
    finally:
        gpuad.set_default_device(was)


# --- on a GPU ------------------------------------------------------------------------

gpu = pytest.mark.gpu


@gpu
def test_device_moves_and_mixing_is_an_error():
    x = gpuad.tensor([1.0, 2.0], device="cuda")
    assert x.device == "cuda" and x.cpu().device == "cpu"
    with pytest.raises(RuntimeError, match="different devices"):
        x + gpuad.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="different devices"):
        gpuad.tensor([1.0, 2.0]) * x


@gpu
@pytest.mark.parametrize("provider", ["triton", "cupy"])
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid", "gelu"])
def test_mlp_step_on_gpu_matches_cpu(provider, activation):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 29)).astype(np.float32)
    w = (rng.standard_normal((53, 29)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(53) * 0.1).astype(np.float32)
    t = rng.integers(0, 53, size=37)

    def step(device):
        xt = gpuad.tensor(x, device=device, requires_grad=True)
        wt = gpuad.tensor(w, device=device, requires_grad=True)
        bt = gpuad.tensor(b, device=device, requires_grad=True)
        loss = F.cross_entropy(F.linear(xt, wt, bt, activation), gpuad.tensor(t, device=device))
        loss.backward()
        return [a.numpy() for a in (loss, xt.grad, wt.grad, bt.grad)]
    gpuad.set_kernels(provider)
    try:
        got = step("cuda")
    finally:
        gpuad.set_kernels(None)
    for a, r in zip(got, step("cpu")):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)


@gpu
def test_device_memory_is_counted_by_the_allocator_hook():
    net = nn.MLP([256, 256, 256])
    for p in net.parameters():
        p.data = gpuad.tensor(p.data, device="cuda").data
    x = gpuad.tensor(np.ones((128, 256), np.float32), device="cuda")
    with gpuad.memory.track():
        net(x).sum().backward()
        s = gpuad.memory.stats()
    assert s["device_peak_bytes"] >= 128 * 256 * 4


def test_gpu_check_dry_run_walks_every_step(tmp_path):
    """`python3 bench/gpu_check.py --dry-run` on a CPU machine: every step listed, exit 0."""
    import json
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_check.py"), "--dry-run", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    md = (tmp_path / "report.md").read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    from bench.gpu_check import STEPS
    for name in STEPS:
        assert f"## {name} (dry run" in md and data["steps"][name] == "dry run"


def test_gpu_check_quick_dry_run_walks_the_quick_steps(tmp_path):
    import json
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_check.py"), "--quick", "--dry-run",
                        "--deadline", "420", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    from bench.gpu_check import QUICK_STEPS
    assert data["mode"] == "quick" and list(data["steps"]) == list(QUICK_STEPS)


def test_the_gpu_extras_install_a_working_device_stack():
    """A GPU extra brings CuPy with its CUDA libraries, NCCL, Triton, and a torch for
    Triton's driver; the pinned Triton needs Python 3.11."""
    import os
    import re
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")).read()
    assert re.search(r'requires-python = ">=3\.1[1-9]"', text)
    for cuda in ("12", "13"):
        extra = re.search(rf"gpu-cuda{cuda} = \[(.*)\]", text).group(1)
        for need in (f"cupy-cuda{cuda}x[ctk]", f"nvidia-nccl-cu{cuda}", "triton", "torch"):
            assert f'"{need}"' in extra, (cuda, need)


def test_gpu_check_without_a_device_says_so_and_fails(tmp_path):
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from gpuad.backends.devices import cuda_available
    if cuda_available()[0]:
        pytest.skip("a CUDA device is present")
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 1 and "No CUDA device" in (tmp_path / "report.md").read_text()


def test_triton_driver_follows_cupys_stream_and_device():
    """follow_cupy points Triton's driver at CuPy's current stream and device (checked with
    stand-ins: no GPU here)."""
    from types import SimpleNamespace
    from gpuad.providers import follow_cupy
    state = {"stream": 0x7000, "device": 1, "used": None}

    class Device:
        def __init__(self, i=None):
            self.id = state["device"] if i is None else i
            self.compute_capability = "90"

        def use(self):
            state["used"] = self.id
    fake_cupy = SimpleNamespace(cuda=SimpleNamespace(
        get_current_stream=lambda: SimpleNamespace(ptr=state["stream"]), Device=Device))
    driver = SimpleNamespace()
    follow_cupy(driver, fake_cupy)
    assert driver.get_current_stream(0) == 0x7000 and driver.get_current_device() == 1
    state["stream"] = 0x8000                       # inside `with cupy.cuda.Stream():`
    assert driver.get_current_stream(1) == 0x8000
    driver.set_current_device(0)
    assert state["used"] == 0 and driver.get_device_capability() == (9, 0)


def test_an_unusable_triton_driver_falls_back_to_cupy_with_one_warning(monkeypatch):
    import warnings
    from types import SimpleNamespace
    from gpuad import providers

    class Broken:
        @property
        def active(self):
            raise RuntimeError("no torch with CUDA")
    monkeypatch.setitem(sys.modules, "triton", SimpleNamespace(runtime=SimpleNamespace(driver=Broken())))
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace())
    monkeypatch.setattr(providers, "_usable", None)
    cupy_ns = SimpleNamespace(name="cupy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert providers.provider_name(cupy_ns) == "cupy"
        assert providers.provider_name(cupy_ns) == "cupy"
    assert len([c for c in caught if "Triton driver is not usable" in str(c.message)]) == 1
    monkeypatch.setattr(providers, "_usable", None)


@pytest.mark.gpu
def test_triton_kernels_honour_a_cupy_stream():
    """Inside `with cupy.cuda.Stream():`, Triton's driver reports that stream, and the
    fused kernels' results are right once it is synchronised."""
    import cupy
    import triton
    gpuad.set_kernels("triton")
    try:
        rng = np.random.default_rng(0)
        x, w = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((16, 32)).astype(np.float32)
        xt, wt = gpuad.tensor(x, device="cuda"), gpuad.tensor(w, device="cuda")
        F.linear(xt, wt, activation="tanh")                     # the provider starts and hooks the driver
        with cupy.cuda.Stream(non_blocking=True) as s:
            assert triton.runtime.driver.active.get_current_stream(0) == s.ptr
            y = F.linear(xt, wt, activation="tanh")
            s.synchronize()
        np.testing.assert_allclose(y.numpy(), np.tanh(x @ w.T), rtol=1e-4, atol=1e-5)
    finally:
        gpuad.set_kernels(None)
