"""gpuad.save and gpuad.load (#26): a save never half-writes, and a bad file gives one
error, gpuad.errors.LoadError, naming the file and the reason; never another exception
and never code run from the file."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpuad
from gpuad import nn
from gpuad.errors import LoadError

R = np.random.default_rng(26)


def _model_state():
    gpuad.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = gpuad.optim.Adam(net.parameters(), lr=0.1)
    net(gpuad.ones((2, 4))).sum().backward()
    opt.step()
    return {"model": net.state_dict(), "opt": opt.state_dict(), "step": 7, "tags": ("a", None, 1.5)}


def _same(a, b):
    if isinstance(a, gpuad.Tensor):
        return isinstance(b, gpuad.Tensor) and a.dtype == b.dtype and np.array_equal(a.numpy(), b.numpy())
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "state.gpuad"
    obj = _model_state()
    gpuad.save(obj, path)
    return path, obj


def test_a_save_loads_back_and_leaves_no_temporary(saved):
    path, obj = saved
    assert _same(obj, gpuad.load(path))
    assert os.listdir(path.parent) == ["state.gpuad"]


@pytest.mark.parametrize("damage,reason", [
    ("empty", "the file is empty"), ("truncated", "truncated or corrupt"), ("flipped", "corrupt"),
    ("torch", "torch.save file"), ("structure", "corrupt"), ("newer", "newer gpuad"), ("text", "corrupt")])
def test_a_bad_file_names_itself_and_the_reason(saved, tmp_path, damage, reason):
    path, _ = saved
    data = path.read_bytes()
    bad = tmp_path / f"bad-{damage}.gpuad"
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(data[:len(data) // 2])
    elif damage == "flipped":
        b = bytearray(data)
        for i in (len(b) // 3, len(b) // 3 + 1):
            b[i] ^= 0xFF
        bad.write_bytes(bytes(b))
    elif damage == "torch":
        torch = pytest.importorskip("torch")
        torch.save({"w": torch.ones(2)}, bad)
    elif damage in ("structure", "newer"):
        with np.load(path) as z:
            entries = {k: z[k] for k in z.files}
        meta = json.loads(str(entries["__gpuad_structure__"]))
        if damage == "newer":
            meta["format"] = 99
        else:
            meta["root"]["dict"][0][1] = {"tensor": "a999"}
        entries["__gpuad_structure__"] = np.array(json.dumps(meta))
        with open(bad, "wb") as fh:
            np.savez(fh, **entries)
    else:
        bad.write_text("not an archive at all\n")
    with pytest.raises(LoadError, match=reason) as e:
        gpuad.load(bad)
    assert str(bad) in str(e.value) and e.value.path == str(bad)


@pytest.mark.cpu_only("the stand-in device can load a file saved on cuda")
def test_a_cuda_file_on_a_cpu_machine_suggests_map_location(saved, tmp_path):
    path, obj = saved
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files}
    entries["__gpuad_structure__"] = np.array(str(entries["__gpuad_structure__"]).replace('"cpu"', '"cuda"'))
    cuda_file = tmp_path / "cuda.gpuad"
    with open(cuda_file, "wb") as fh:
        np.savez(fh, **entries)
    with pytest.raises(LoadError, match="map_location='cpu'"):
        gpuad.load(cuda_file)
    assert _same(obj, gpuad.load(cuda_file, map_location="cpu"))


def test_a_thousand_mutated_or_truncated_files_load_right_or_raise_load_error(saved, tmp_path):
    path, obj = saved
    data = path.read_bytes()
    rng = np.random.default_rng(1000)
    bad = tmp_path / "fuzz.gpuad"
    loaded = refused = 0
    for i in range(1000):
        b = bytearray(data)
        kind = i % 4
        if kind == 0:
            b = b[:int(rng.integers(0, len(b)))]                               # truncated
        else:
            for _ in range(kind):                                               # 1-3 bytes changed
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(b))
        try:
            got = gpuad.load(bad)
        except LoadError:
            refused += 1
            continue
        assert _same(obj, got), f"mutation {i} loaded something else"
        loaded += 1
    assert refused > 500 and loaded + refused == 1000


_WRITER = """
import sys, numpy as np, gpuad
path, n = sys.argv[1], int(sys.argv[2])
big = gpuad.tensor(np.full((n,), 0.0, np.float32))
print("ready", flush=True)
k = 1
while True:
    big.data[...] = k
    gpuad.save({"k": k, "big": big}, path)
    k += 1
"""


def test_a_save_killed_at_any_moment_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "ckpt.gpuad"
    gpuad.save({"k": 0, "big": gpuad.tensor(np.zeros(4_000_000, np.float32))}, path)
    rng = np.random.default_rng(7)
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "4000000"], stdout=subprocess.PIPE)
        p.stdout.readline()
        time.sleep(float(rng.uniform(0.05, 0.4)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        got = gpuad.load(path)                       # the last complete save, whole
        assert got["big"].shape == (4_000_000,)
        assert np.all(got["big"].numpy() == got["k"])
    leftovers = [n for n in os.listdir(tmp_path) if n != "ckpt.gpuad"]
    assert all(n.startswith(".ckpt.gpuad.") and n.endswith(".tmp") for n in leftovers)
