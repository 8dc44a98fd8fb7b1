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
