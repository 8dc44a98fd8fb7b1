"""Convolutional networks (#25): the spatial ops against torch in float64, batch norm's
running statistics, module buffers, and compiled steps that keep both."""
import copy
import pickle

import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn
from gpuad.ops import conv as conv_ops
from tests.device_plugin import DEVICE

torch = pytest.importorskip("torch")
TF = torch.nn.functional
R = np.random.default_rng(25)


def _against_torch(fn, tfn, *arrays, tol=1e-10):
    """fn on gpuad tensors and tfn on torch's, float64: values and every input's gradient
    (for a random upstream gradient) within tol."""
    xs = [gpuad.tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, yt = fn(*xs), tfn(*ts)
    assert y.shape == tuple(yt.shape)
    g = R.standard_normal(y.shape)
    y.backward(gpuad.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=tol, atol=tol)
    for a, b in zip(xs, ts):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=tol, atol=tol)


CONV2D = [dict(), dict(stride=2), dict(padding=1), dict(padding=(2, 0), stride=(1, 3)), dict(dilation=2, padding=2),
          dict(groups=2, stride=2, padding=1), dict(groups=4), dict(padding="same"), dict(padding="same", dilation=(1, 2)),
          dict(padding="valid", stride=(2, 1))]


@pytest.mark.parametrize("kw", CONV2D, ids=[str(k) for k in CONV2D])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 1), (1, 1)])
def test_conv2d_equals_torch(kw, kernel):
    cin, cout = 4, 8
    x = R.standard_normal((3, cin, 7, 6))
    w = R.standard_normal((cout, cin // kw.get("groups", 1)) + kernel)
    b = R.standard_normal(cout)
    _against_torch(lambda x, w, b: F.conv2d(x, w, b, **kw), lambda x, w, b: TF.conv2d(x, w, b, **kw), x, w, b)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(dilation=3, padding=2), dict(groups=3),
                                dict(padding="same")])
def test_conv1d_and_conv3d_equal_torch(kw):
    x, w = R.standard_normal((2, 3, 11)), R.standard_normal((6, 3 // kw.get("groups", 1), 3))
    _against_torch(lambda x, w: F.conv1d(x, w, **kw), lambda x, w: TF.conv1d(x, w, **kw), x, w)
    x3, w3 = R.standard_normal((1, 3, 5, 4, 6)), R.standard_normal((3, 3 // kw.get("groups", 1), 2, 2, 3))
    _against_torch(lambda x, w: F.conv3d(x, w, **kw), lambda x, w: TF.conv3d(x, w, **kw), x3, w3)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2), dict(stride=2, padding=1, output_padding=1),
                                dict(stride=(1, 3), dilation=2, groups=2), dict(padding=2, stride=3, output_padding=(2, 0))])
def test_conv_transpose2d_equals_torch(kw):
    x = R.standard_normal((2, 4, 5, 4))
    w = R.standard_normal((4, 6 // kw.get("groups", 1) if "groups" in kw else 3, 3, 2))
    b = R.standard_normal(w.shape[1] * kw.get("groups", 1))
    _against_torch(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw), lambda x, w, b: TF.conv_transpose2d(x, w, b, **kw),
                   x, w, b)


POOLS = [("max", dict(kernel_size=2)), ("max", dict(kernel_size=3, stride=2, padding=1)),
         ("max", dict(kernel_size=2, stride=1, dilation=2)), ("max", dict(kernel_size=3, stride=2, ceil_mode=True)),
         ("avg", dict(kernel_size=2)), ("avg", dict(kernel_size=3, stride=2, padding=1)),
         ("avg", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
         ("avg", dict(kernel_size=2, ceil_mode=True)), ("avg", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
         ("avg", dict(kernel_size=2, divisor_override=3))]


@pytest.mark.parametrize("kind,kw", POOLS, ids=[f"{k}-{v}" for k, v in POOLS])
def test_pooling_equals_torch(kind, kw):
    x = R.standard_normal((2, 3, 7, 6))
    name = f"{kind}_pool2d"
    _against_torch(lambda x: getattr(F, name)(x, **kw), lambda x: getattr(TF, name)(x, **kw), x)


def test_max_pool_indices_and_nan_equal_torch():
    x = R.standard_normal((2, 3, 6, 5))
    x[0, 0, 1, 1] = np.nan
    y, i = F.max_pool2d(gpuad.tensor(x), 3, 2, 1, return_indices=True)
    yt, it = TF.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(i.numpy(), it.numpy())
    np.testing.assert_array_equal(y.numpy(), yt.numpy())
    assert i.dtype == np.int64


@pytest.mark.parametrize("out", [1, 3, (2, 4), (None, 2), (7, 6)])
def test_adaptive_avg_pool_equals_torch(out):
    _against_torch(lambda x: F.adaptive_avg_pool2d(x, out), lambda x: TF.adaptive_avg_pool2d(x, out),
                   R.standard_normal((2, 3, 7, 6)))


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("pads", [(1, 2), (1, 2, 2, 0), (0, 1, -1, 2)])
def test_pad_equals_torch(mode, pads):
    if mode != "constant" and min(pads) < 0:
        pytest.skip("torch crops only in constant mode")
    shape = (2, 3, 5) if len(pads) == 2 else (2, 3, 5, 4)       # torch's sizes for non-constant modes
    _against_torch(lambda x: F.pad(x, pads, mode=mode), lambda x: TF.pad(x, pads, mode=mode), R.standard_normal(shape))


@pytest.mark.parametrize("kw", [dict(size=(9, 13)), dict(scale_factor=2), dict(scale_factor=0.5),
                                dict(size=(9, 13), mode="bilinear"), dict(size=(3, 2), mode="bilinear"),
                                dict(scale_factor=1.5, mode="bilinear", align_corners=True)])
def test_interpolate_equals_torch(kw):
    _against_torch(lambda x: F.interpolate(x, **kw), lambda x: TF.interpolate(x, **kw), R.standard_normal((2, 3, 6, 5)))


def test_group_norm_equals_torch():
    x, w, b = R.standard_normal((3, 6, 4, 5)), R.standard_normal(6), R.standard_normal(6)
    _against_torch(lambda x, w, b: F.group_norm(x, 3, w, b), lambda x, w, b: TF.group_norm(x, 3, w, b), x, w, b)


def test_unbatched_inputs_and_errors_name_the_shapes():
    assert F.conv2d(gpuad.ones((3, 5, 5)), gpuad.ones((2, 3, 3, 3))).shape == (2, 3, 3)
    with pytest.raises(ValueError, match=r"\(2, 3, 5, 5\).*\(4, 2, 3, 3\)"):
        F.conv2d(gpuad.ones((2, 3, 5, 5)), gpuad.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        F.conv2d(gpuad.ones((1, 1, 2, 2)), gpuad.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="'same' is not supported for strided"):
        F.conv2d(gpuad.ones((1, 1, 4, 4)), gpuad.ones((1, 1, 3, 3)), stride=2, padding="same")
    with pytest.raises(TypeError, match="share a dtype"):
        F.conv2d(gpuad.ones((1, 1, 4, 4), dtype="float64"), gpuad.ones((1, 1, 3, 3), dtype="float32"))


def test_conv_chunks_bound_the_workspace_and_change_nothing(monkeypatch):
    """With a tiny WORKSPACE every sample is its own chunk: the same values and gradients,
    and the measured peak drops by the other samples' columns."""
    x = gpuad.tensor(R.standard_normal((6, 4, 9, 9)), requires_grad=True)
    w = gpuad.tensor(R.standard_normal((5, 4, 3, 3)), requires_grad=True)

    def run():
        x.grad = w.grad = None
        y = F.conv2d(x, w, stride=2, padding=1)
        (y * y).sum().backward()
        return y.numpy(), x.grad.numpy(), w.grad.numpy()
    with gpuad.memory.track() as m:
        whole = run()
    per_sample = 4 * 9 * 5 * 5 * 8          # C K Q float64 bytes of one sample's columns
    monkeypatch.setattr(conv_ops, "WORKSPACE", per_sample)
    assert conv_ops._chunks(6, per_sample) == [(i, i + 1) for i in range(6)]
    with gpuad.memory.track() as m1:
        chunked = run()
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    # one sample's columns at a time, not six: forward's (C K Q) and the input gradient's
    # (the stride-2 gradient dilated to 9 x 9, C K 81), five samples' worth each saved
    transposed = 4 * 9 * 9 * 9 * 8
    assert m.stats()["peak_bytes"] - m1.stats()["peak_bytes"] >= 5 * (per_sample + transposed)


@pytest.mark.parametrize("workspace", [32 << 20, 16 * 9 * 16 * 16 * 4, 1])
def test_a_conv_nets_planned_backward_peak_equals_the_measured_one(monkeypatch, workspace):
    """The planner runs the convolutions' own code on shapes, columns included: its peak is
    the measured one to the byte, whatever the chunking."""
    monkeypatch.setattr(conv_ops, "WORKSPACE", workspace)
    gpuad.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                        nn.ConvTranspose2d(16, 4, 2, stride=2), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    x = gpuad.tensor(R.standard_normal((8, 3, 16, 16)).astype(np.float32))
    y = gpuad.tensor(R.integers(0, 10, 8))
    with gpuad.memory.track() as m:
        loss = F.cross_entropy(net(x), y)
        predicted = gpuad.memory.predict_backward_peak(loss)
        with gpuad.memory.track() as m:
            loss.backward()
    assert predicted == m.peak_bytes_absolute


@pytest.mark.skipif(DEVICE != "cpu", reason="tracemalloc sees host buffers only")
@pytest.mark.parametrize("which", ["conv", "conv_transpose", "conv_weight"])
@pytest.mark.parametrize("workspace", [32 << 20, 4 * 9 * 12 * 12 * 8])
def test_the_counted_workspace_is_what_numpy_allocates(monkeypatch, which, workspace):
    """gpuad.memory's peak over one of the three equals tracemalloc's (numpy's real
    buffers) to within 64 KiB of Python objects: padding, columns and partial results."""
    import tracemalloc
    monkeypatch.setattr(conv_ops, "WORKSPACE", workspace)
    from gpuad.backends import numpy_ns
    x = R.standard_normal((6, 4, 12, 12))
    meta = dict(size=(12, 12), kernel=(3, 3), stride=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1), groups=1)
    w = R.standard_normal((4, 4, 3, 3))
    run = {"conv": lambda: conv_ops.conv.fwd(numpy_ns, x, w, None, (1, 1), meta["padding"], (1, 1), 1),
           "conv_transpose": lambda: conv_ops.conv_transpose.fwd(numpy_ns, x, w, **meta),
           "conv_weight": lambda: conv_ops.conv_weight.fwd(numpy_ns, x, x, **meta)}[which]
    run()                                       # numpy's one-time allocations out of the way
    tracemalloc.start()
    try:
        with gpuad.memory.track() as m:
            out = run()
        real = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    counted = m.stats()["peak_bytes"]
    assert counted >= out.nbytes + x.nbytes      # the output and at least the padded input
    assert abs(real - counted) < 64 << 10, (real, counted)


# -- batch norm ---------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.1, None, 0.5])
@pytest.mark.parametrize("cls,shape", [("BatchNorm2d", (4, 3, 5, 5)), ("BatchNorm1d", (6, 3)),
                                       ("BatchNorm1d", (4, 3, 7))])
def test_batch_norm_running_statistics_equal_torch_after_ten_steps(cls, shape, momentum):
    m = getattr(nn, cls)(3, momentum=momentum, dtype="float64")
    t = getattr(torch.nn, cls)(3, momentum=momentum, dtype=torch.float64)
    w0 = R.standard_normal(3)
    m.weight.data[...] = gpuad.tensor(w0).data
    t.weight.data[...] = torch.tensor(w0)
    for _ in range(10):
        x = R.standard_normal(shape) * 3 + 1
        xg, xt = gpuad.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        y, yt = m(xg), t(xt)
        g = R.standard_normal(shape)
        y.backward(gpuad.tensor(g))
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), atol=1e-10)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(m, name).numpy(), getattr(t, name).numpy(), rtol=1e-10, atol=1e-12)
    assert int(m.num_batches_tracked.numpy()) == 10 == int(t.num_batches_tracked)
    np.testing.assert_allclose(m.weight.grad.numpy(), t.weight.grad.numpy(), atol=1e-10)
    m.eval()
    t.eval()
    x = R.standard_normal(shape)
    np.testing.assert_allclose(m(gpuad.tensor(x)).numpy(), t(torch.tensor(x)).detach().numpy(), atol=1e-10)


@pytest.mark.parametrize("affine,track", [(False, True), (True, False), (False, False)])
def test_batch_norm_without_affine_or_running_statistics_equals_torch(affine, track):
    m = nn.BatchNorm2d(3, affine=affine, track_running_stats=track, dtype="float64")
    t = torch.nn.BatchNorm2d(3, affine=affine, track_running_stats=track, dtype=torch.float64)
    for train in (True, False):
        m.train(train)
        t.train(train)
        x = R.standard_normal((4, 3, 3, 3))
        np.testing.assert_allclose(m(gpuad.tensor(x)).numpy(), t(torch.tensor(x)).detach().numpy(), atol=1e-10)
    assert list(m.state_dict()) == list(t.state_dict())


def test_batch_norm_needs_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(gpuad.ones((1, 3)))
    with pytest.raises(ValueError, match="4D input"):
        nn.BatchNorm2d(3)(gpuad.ones((2, 3)))


# -- modules and buffers ------------------------------------------------------------------

def _net(lib):
    return lib.Sequential(lib.Conv2d(1, 4, 3, padding=1, bias=False), lib.BatchNorm2d(4), lib.ReLU(),
                          lib.MaxPool2d(2), lib.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
                          lib.GroupNorm(2, 6), lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Identity(),
                          lib.Linear(6, 3))


def test_modules_have_torchs_keys_shapes_and_init_bounds():
    g, t = _net(nn), _net(torch.nn)
    assert [(k, tuple(v.shape)) for k, v in g.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in t.state_dict().items()]
    conv = nn.Conv2d(6, 9, (3, 2), groups=3)
    bound = 1 / np.sqrt(2 * 3 * 2)
    assert conv.weight.shape == (9, 2, 3, 2) and np.abs(conv.weight.numpy()).max() <= bound
    assert np.abs(conv.weight.numpy()).max() > 0.8 * bound
    ct = nn.ConvTranspose2d(4, 6, 3, groups=2)
    assert ct.weight.shape == (4, 3, 3, 3) and np.abs(ct.weight.numpy()).max() <= 1 / np.sqrt(3 * 9)


def test_a_whole_net_equals_torch_with_the_same_weights():
    g, t = _net(nn).double(), _net(torch.nn).double()
    t.load_state_dict({k: torch.tensor(v.numpy()) for k, v in g.state_dict().items()})
    x = R.standard_normal((3, 1, 8, 8))
    xg, xt = gpuad.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y, yt = g(xg), t(xt)
    y.sum().backward()
    yt.sum().backward()
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(g[1].running_var.numpy(), t[1].running_var.numpy(), atol=1e-12)


def test_buffers_are_registered_saved_loaded_moved_and_copied(tmp_path):
    m = _net(nn)
    names = [n for n, _ in m.named_buffers()]
    assert names == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    m.register_buffer("scratch", gpuad.zeros(2), persistent=False)
    assert "scratch" in dict(m.named_buffers()) and "scratch" not in m.state_dict()
    m(gpuad.ones((2, 1, 8, 8)))
    path = tmp_path / "net.gpuad"
    gpuad.save(m.state_dict(), str(path))
    other = _net(nn)
    assert other.load_state_dict(gpuad.load(str(path))) == ([], [])
    for (k, a), b in zip(m.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "1.running_mean"'):
        other.load_state_dict({k: v for k, v in m.state_dict().items() if k != "1.running_mean"})
    report = other.load_state_dict({"extra": gpuad.zeros(1)}, strict=False)
    assert report.unexpected_keys == ["extra"] and "1.running_var" in report.missing_keys
    m.to("float64")
    assert m[1].running_mean.dtype == np.float64 and m[1].num_batches_tracked.dtype == np.int64
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert [n for n, _ in twin.named_buffers()] == [n for n, _ in m.named_buffers()]
        assert twin[1].running_var is not m[1].running_var
        np.testing.assert_array_equal(twin[1].running_var.numpy(), m[1].running_var.numpy())
    m.eval()
    assert all(not s.training for s in m.modules())
    with pytest.raises(KeyError, match="already exists"):
        m[1].register_buffer("weight", gpuad.zeros(1))


def test_a_compiled_step_updates_running_statistics_as_eager_does():
    def make():
        gpuad.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=None), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    a, b = make(), make()
    oa, ob = gpuad.optim.SGD(a.parameters(), lr=0.1), gpuad.optim.SGD(b.parameters(), lr=0.1)

    def step(m, o, x, y):
        o.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        o.step()
        return loss
    compiled = gpuad.compile(lambda x, y: step(b, ob, x, y))
    for _ in range(5):
        x = gpuad.tensor(R.standard_normal((8, 1, 4, 4)).astype(np.float32))
        y = gpuad.tensor(R.integers(0, 3, 8))
        assert float(step(a, oa, x, y)) == float(compiled(x, y))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(getattr(a[1], name).numpy(), getattr(b[1], name).numpy())
    np.testing.assert_array_equal(a[0].weight.numpy(), b[0].weight.numpy())


# -- the demo: real images ----------------------------------------------------------------

def test_the_digits_demo_reaches_97_percent():
    from gpuad.demo import train_cnn
    assert train_cnn(verbose=False) >= 0.97


def test_checkpointing_each_block_changes_nothing_but_memory():
    """Three training steps of the demo's net with and without per-block checkpointing:
    the same losses, gradients and running statistics bit for bit (the recompute takes no
    second batch into the statistics), and a lower activation peak."""
    from gpuad.demo import SmallResNet
    x = gpuad.tensor(R.standard_normal((32, 1, 8, 8)).astype(np.float32))
    y = gpuad.tensor(R.integers(0, 10, 32))
    runs = []
    for ckpt in (False, True):
        gpuad.manual_seed(0)
        net = SmallResNet(checkpoint=ckpt)
        opt = gpuad.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        losses = []
        with gpuad.memory.track() as m:
            for _ in range(3):
                opt.zero_grad()
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        runs.append((losses, net.state_dict(), m.stats()["activation_peak_bytes"]))
    (l0, s0, p0), (l1, s1, p1) = runs
    assert l0 == l1
    for k in s0:
        np.testing.assert_array_equal(s0[k].numpy(), s1[k].numpy(), err_msg=k)
    assert int(s1["stem.1.num_batches_tracked"].item()) == 3
    assert p1 < p0
