"""Mixed precision: autocast's output dtypes against torch.autocast (CPU, bfloat16), the CUDA
lists as torch documents them, gradients to float32 parameters, compile, and GradScaler's
scale sequence against torch's on a schedule that injects overflows."""
import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad.dtypes import bfloat16
from gpuad.precision import policy

torch = pytest.importorskip("torch")
TF = torch.nn.functional
R = np.random.default_rng(0)
A, B = R.standard_normal((4, 4)).astype(np.float32), R.standard_normal((4, 4)).astype(np.float32)
T = R.integers(0, 4, 4)

# (name, gpuad call, torch call): a and b float32, h a bfloat16 tensor, t class targets
OPS = [
    ("matmul", lambda L, a, b, h, t: a @ b),
    ("linear", lambda L, a, b, h, t: L.F.linear(a, b)),
    ("conv2d", lambda L, a, b, h, t: L.F.conv2d(a[None, None], b[None, None, :3, :3])),
    ("conv_transpose2d", lambda L, a, b, h, t: L.F.conv_transpose2d(a[None, None], b[None, None, :3, :3])),
    ("sdpa", lambda L, a, b, h, t: L.F.scaled_dot_product_attention(a[None], a[None], a[None])),
    ("einsum", lambda L, a, b, h, t: L.lib.einsum("ij,jk->ik", a, b)),
    ("softmax(bf16)", lambda L, a, b, h, t: L.F.softmax(h, -1)),
    ("log_softmax(bf16)", lambda L, a, b, h, t: L.F.log_softmax(h, -1)),
    ("exp(bf16)", lambda L, a, b, h, t: L.lib.exp(h)),
    ("sum(bf16)", lambda L, a, b, h, t: h.sum()),
    ("layer_norm(bf16)", lambda L, a, b, h, t: L.F.layer_norm(h, (4,))),
    ("tanh(bf16)", lambda L, a, b, h, t: L.lib.tanh(h)),
    ("cross_entropy(bf16)", lambda L, a, b, h, t: L.F.cross_entropy(h, t)),
    ("nll_loss(bf16)", lambda L, a, b, h, t: L.F.nll_loss(h, t)),
    ("mse_loss(bf16)", lambda L, a, b, h, t: L.F.mse_loss(h, h)),
    ("l1_loss(bf16)", lambda L, a, b, h, t: L.F.l1_loss(h, h)),
    ("smooth_l1_loss(bf16)", lambda L, a, b, h, t: L.F.smooth_l1_loss(h, h)),
    ("huber_loss(bf16)", lambda L, a, b, h, t: L.F.huber_loss(h, h)),
    ("kl_div(bf16)", lambda L, a, b, h, t: L.F.kl_div(h, h, reduction="batchmean")),
    ("bce_with_logits(bf16)", lambda L, a, b, h, t: L.F.binary_cross_entropy_with_logits(h, L.lib.sigmoid(h))),
    ("cat", lambda L, a, b, h, t: L.lib.cat([a, h])),
    ("stack", lambda L, a, b, h, t: L.lib.stack([a, h])),
    ("gelu(bf16)", lambda L, a, b, h, t: L.F.gelu(h)),
    ("matmul float64", lambda L, a, b, h, t: a.double() @ b.double()),
]


class _Lib:
    def __init__(self, torch_side):
        self.lib = torch if torch_side else gpuad
        self.F = TF if torch_side else F


def _name(dt):
    return str(dt).replace("torch.", "")


@pytest.mark.parametrize("name,fn", OPS, ids=[o[0] for o in OPS])
def test_output_dtypes_equal_torch_autocast_cpu_bfloat16(name, fn):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = fn(_Lib(True), torch.tensor(A), torch.tensor(B), torch.tensor(A).bfloat16(), torch.tensor(T))
    ga, gb = gpuad.tensor(A, device="cpu"), gpuad.tensor(B, device="cpu")
    with gpuad.autocast("cpu", dtype="bfloat16"):
        got = fn(_Lib(False), ga, gb, ga.to(bfloat16), gpuad.tensor(T, device="cpu"))
    assert _name(got.dtype) == _name(want.dtype)
    np.testing.assert_allclose(np.asarray(got.float().numpy(), np.float64),
                               want.float().detach().numpy(), rtol=0.05, atol=0.05)


def test_the_cuda_lists_follow_torchs_documented_ones():
    # torch.amp's documented CUDA lists (ops autocast to float16 / to float32 / promote)
    for op in ("matmul", "linear", "conv", "conv_transpose", "einsum", "scaled_dot_product_attention"):
        assert policy(op, "cuda") == "lower"
    for op in ("exp", "log", "log1p", "log2", "log10", "expm1", "power", "reciprocal", "rsqrt", "softplus", "sum",
               "cumsum", "cumprod", "softmax", "log_softmax", "layer_norm", "cross_entropy", "acos", "asin",
               "cosh", "sinh", "tan", "vector_norm"):
        assert policy(op, "cuda") == "fp32", op
    assert policy("atan2", "cuda") == "promote" and policy("concatenate", "cuda") is None
    # and the CPU's are another list: softmax and exp keep the low dtype there, cat promotes
    assert policy("softmax", "cpu") is None and policy("exp", "cpu") is None
    assert policy("concatenate", "cpu") == "promote" and policy("cross_entropy", "cpu") == "fp32"


def test_regions_nest_restore_and_leave_other_devices_alone():
    a = gpuad.tensor(A, device="cpu")
    assert not gpuad.amp.is_autocast_enabled("cpu")
    with gpuad.autocast("cpu"):
        assert (a @ a).dtype == bfloat16 and gpuad.amp.is_autocast_enabled("cpu")
        with gpuad.autocast("cpu", enabled=False):
            assert (a @ a).dtype == np.float32
        with gpuad.autocast("cuda"):          # a region for another device type: cpu ops as before
            assert gpuad.amp.get_autocast_dtype("cuda") == np.float16
            assert (a @ a).dtype == bfloat16
        assert (a @ a).dtype == bfloat16
    assert (a @ a).dtype == np.float32 and not gpuad.amp.is_autocast_enabled("cpu")

    @gpuad.autocast("cpu")
    def f(x):
        return x @ x
    assert f(a).dtype == bfloat16 and (a @ a).dtype == np.float32
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        gpuad.autocast("cpu", dtype="float64")
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        gpuad.autocast("tpu")
    with pytest.raises(NotImplementedError, match="CuPy has no bfloat16"):
        gpuad.autocast("cuda", dtype="bfloat16")


def test_parameters_stay_float32_and_gradients_match_torch():
    gpuad.manual_seed(0)
    net = gpuad.nn.Sequential(gpuad.nn.Linear(8, 16), gpuad.nn.Tanh(), gpuad.nn.Linear(16, 4))
    tnet = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    tnet.load_state_dict({k: torch.tensor(v.numpy()) for k, v in net.state_dict().items()})
    x, y = R.standard_normal((5, 8)).astype(np.float32), R.integers(0, 4, 5)
    with gpuad.autocast("cpu"):
        loss = F.cross_entropy(net(gpuad.tensor(x)), gpuad.tensor(y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tloss = TF.cross_entropy(tnet(torch.tensor(x)), torch.tensor(y))
    assert loss.dtype == np.float32 and tloss.dtype == torch.float32
    loss.backward()
    tloss.backward()
    for (k, p), (_, tp) in zip(net.named_parameters(), tnet.named_parameters()):
        assert p.dtype == np.float32 and p.grad.dtype == np.float32, k
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=0.05, atol=0.02)


def test_a_compiled_step_traces_the_casts_and_retraces_on_entering_a_region():
    gpuad.manual_seed(1)
    net = gpuad.nn.Linear(6, 3)
    x = gpuad.tensor(R.standard_normal((4, 6)).astype(np.float32))

    def step(x):
        return (net(x) * 2.0).sum()
    compiled = gpuad.compile(step)
    plain = compiled(x).item()
    assert plain == pytest.approx(step(x).item(), rel=1e-6)
    with gpuad.autocast(x.device):            # (float16 on the stand-in's cuda, bfloat16 on the cpu)
        want = step(x).item()
        got = compiled(x).item()
    assert got == pytest.approx(want, rel=1e-6) and got != pytest.approx(plain, rel=1e-6)
    assert compiled(x).item() == pytest.approx(plain, rel=1e-6)


def _scaler_run(ours, schedule, **kw):
    """Scales after each step of a run whose gradients are made inf at the steps in
    `schedule`, and the final parameters."""
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(4).astype(np.float32)
    if ours:
        w = gpuad.tensor(w0, requires_grad=True)
        opt = gpuad.optim.SGD([w], lr=0.01)
        scaler = gpuad.amp.GradScaler("cpu", **kw)
    else:
        w = torch.tensor(w0, requires_grad=True)
        opt = torch.optim.SGD([w], lr=0.01)
        scaler = torch.amp.GradScaler("cpu", **kw)
    scales = []
    for step in range(len(schedule)):
        opt.zero_grad()
        loss = (w * w).sum() * (float("inf") if schedule[step] else 1.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales, (w.detach().numpy() if ours else w.detach().numpy()), scaler.state_dict()


def test_grad_scaler_scale_sequence_equals_torchs():
    schedule = [0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    kw = dict(init_scale=256.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=3)
    ours, w_ours, st = _scaler_run(True, schedule, **kw)
    theirs, w_theirs, tst = _scaler_run(False, schedule, **kw)
    assert ours == theirs
    np.testing.assert_allclose(w_ours, w_theirs, rtol=1e-6)          # skipped steps skipped alike
    assert st["scale"] == tst["scale"] and st["_growth_tracker"] == tst["_growth_tracker"]


def test_grad_scaler_rules_and_state():
    w = gpuad.tensor([1.0, 2.0], requires_grad=True)
    opt = gpuad.optim.SGD([w], lr=0.1)
    scaler = gpuad.amp.GradScaler(init_scale=8.0)
    scaler.scale((w * w).sum()).backward()
    assert w.grad.tolist() == [16.0, 32.0]
    scaler.unscale_(opt)
    assert w.grad.tolist() == [2.0, 4.0]                 # unscaled before clipping, as torch
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    scaler.update()
    other = gpuad.amp.GradScaler()
    other.load_state_dict(scaler.state_dict())
    assert other.get_scale() == 8.0 and other.state_dict() == scaler.state_dict()
    off = gpuad.amp.GradScaler(enabled=False)
    loss = (w * 1.0).sum()
    assert off.scale(loss) is loss and off.get_scale() == 1.0 and off.state_dict() == {}
