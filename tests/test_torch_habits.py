"""PyTorch habits, round 2 (#26): each idiom as torch behaves, checked against torch."""
import numpy as np
import pytest

import gpuad
import gpuad.nn.functional as F
from gpuad import nn, optim

torch = pytest.importorskip("torch")
R = np.random.default_rng(26)


# -- grad modes ------------------------------------------------------------------------------

def test_set_grad_enabled_called_as_a_function_takes_effect_as_torchs():
    w = gpuad.tensor([1.0], requires_grad=True)
    try:
        for lib in (torch, gpuad):
            lib.set_grad_enabled(False)
            assert not lib.is_grad_enabled()
        assert not (w * 2).requires_grad
        for lib in (torch, gpuad):
            lib.set_grad_enabled(True)
            assert lib.is_grad_enabled()
        assert (w * 2).requires_grad
    finally:
        torch.set_grad_enabled(True)
        gpuad.set_grad_enabled(True)


def test_set_grad_enabled_as_a_block_and_a_decorator_restores_the_mode():
    w = gpuad.tensor([1.0], requires_grad=True)
    with gpuad.no_grad():
        with gpuad.set_grad_enabled(True):
            assert (w * 2).requires_grad
        assert not gpuad.is_grad_enabled()

    @gpuad.set_grad_enabled(False)
    def f(t):
        return t * 2
    assert gpuad.is_grad_enabled()                 # decorating changed nothing
    assert not f(w).requires_grad
    assert gpuad.is_grad_enabled() and (w * 2).requires_grad


def test_inference_mode_records_nothing():
    w = gpuad.tensor([1.0], requires_grad=True)
    with gpuad.inference_mode():
        assert not (w * 2).requires_grad and gpuad.is_inference_mode_enabled()
    assert not gpuad.is_inference_mode_enabled() and (w * 2).requires_grad

    @gpuad.inference_mode()
    def f(t):
        return t * 2
    assert not f(w).requires_grad
    with gpuad.inference_mode(False):
        assert (w * 2).requires_grad


# -- optimizers --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_frozen_parameters_are_accepted_and_skipped_as_torch_does(name):
    """The fine-tuning pattern: freeze a layer, keep it in the optimizer, unfreeze later."""
    w0, f0 = R.standard_normal((3, 2)), R.standard_normal((2, 2))
    x = R.standard_normal((4, 2))
    kw = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    out = []
    for lib in (gpuad, torch):
        w = lib.tensor(w0, requires_grad=True)
        frozen = lib.tensor(f0, requires_grad=False)
        opt = getattr(lib.optim, name)([w, frozen], **kw)
        xt = lib.tensor(x)
        for step in range(4):
            if step == 2:
                frozen.requires_grad_(True)        # unfrozen half-way
            opt.zero_grad()
            ((xt @ frozen) @ w.T).square().sum().backward()
            opt.step()
        out.append((w.detach().numpy(), frozen.detach().numpy()))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# -- tensor methods ----------------------------------------------------------------------------

def test_conversion_and_factory_methods_equal_torchs():
    a = R.standard_normal((2, 3)) * 3
    g, t = gpuad.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    for name in ("long", "int", "bool", "half", "float", "double"):
        gv, tv = getattr(g, name)(), getattr(t, name)()
        assert str(gv.dtype) == str(tv.dtype).replace("torch.", ""), name
        np.testing.assert_array_equal(gv.numpy(), tv.detach().numpy(), err_msg=name)
    gt, tt = g.T.contiguous(), t.T.contiguous()
    assert gt.data.flags.c_contiguous and tt.is_contiguous() and g.contiguous() is g
    (gt * gpuad.tensor(a.T)).sum().backward()
    (tt * torch.tensor(a.T)).sum().backward()
    np.testing.assert_array_equal(g.grad.numpy(), t.grad.numpy())
    assert g.view_as(gpuad.zeros(3, 2)).shape == tuple(t.view_as(torch.zeros(3, 2)).shape)
    assert str(g.type_as(gpuad.zeros(1)).dtype) == "float32"
    for name, args in (("new_zeros", (2, 2)), ("new_ones", ((3,),)), ("new_full", ((2, 1), 7.0))):
        gv, tv = getattr(g, name)(*args), getattr(t, name)(*args)
        assert gv.shape == tuple(tv.shape) and str(gv.dtype) == "float64" and not gv.requires_grad
        np.testing.assert_array_equal(gv.numpy(), tv.numpy())
    assert g.new_zeros(2, dtype="int64").dtype == np.int64
    assert g.new_ones(2, requires_grad=True).requires_grad


# -- module utilities --------------------------------------------------------------------------

def _twins():
    shared = (nn.Linear(3, 3), torch.nn.Linear(3, 3))
    g = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), shared[0], nn.Sequential(shared[0], nn.Tanh()))
    t = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), shared[1],
                            torch.nn.Sequential(shared[1], torch.nn.Tanh()))
    return g, t


def test_module_traversal_equals_torchs():
    g, t = _twins()
    assert [n for n, _ in g.named_modules()] == [n for n, _ in t.named_modules()]
    assert [n for n, _ in g.named_children()] == [n for n, _ in t.named_children()]
    assert [type(m).__name__ for m in g.children()] == [type(m).__name__ for m in t.children()]
    assert len(list(g.modules())) == len(list(t.modules()))
    assert [n for n, _ in g.named_modules(remove_duplicate=False)] == \
        [n for n, _ in t.named_modules(remove_duplicate=False)]
    seen_g, seen_t = [], []
    g.apply(lambda m: seen_g.append(type(m).__name__))
    t.apply(lambda m: seen_t.append(type(m).__name__))
    assert seen_g == seen_t


def test_apply_initialises_and_requires_grad_freezes():
    g, _ = _twins()

    def init(m):
        if isinstance(m, nn.Linear):
            m.weight.data[...] = 0.5
    assert g.apply(init) is g
    assert all(float(m.weight.data.max()) == 0.5 for m in g.modules() if isinstance(m, nn.Linear))
    assert g[0].requires_grad_(False) is g[0]
    assert not g[0].weight.requires_grad and g[2].weight.requires_grad
    g.zero_grad(set_to_none=False)


def test_parameter_list_and_dict_register_as_torchs():
    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.ws = nn.ParameterList([gpuad.zeros(2), nn.Parameter(gpuad.ones(3))])
            self.named = nn.ParameterDict({"a": gpuad.ones(1)})
            self.named["b"] = gpuad.zeros(2)

    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ws = torch.nn.ParameterList([torch.zeros(2), torch.nn.Parameter(torch.ones(3))])
            self.named = torch.nn.ParameterDict({"a": torch.ones(1)})
            self.named["b"] = torch.zeros(2)
    g, t = G(), T()
    assert [n for n, _ in g.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert list(g.state_dict()) == list(t.state_dict())
    assert all(p.requires_grad for p in g.parameters())
    assert len(g.ws) == 2 and g.ws[1].shape == (3,) and "b" in g.named and len(g.named) == 2
    g.ws.append(gpuad.zeros(4))
    assert [n for n, _ in g.named_parameters()][:3] == ["ws.0", "ws.1", "ws.2"]
    assert g.named.pop("a").shape == (1,) and list(g.named.keys()) == ["b"]
    with pytest.raises(TypeError, match="is not a Tensor"):
        g.ws.append([1.0])
