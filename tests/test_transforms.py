"""JAX-style transforms: grad, value_and_grad, vjp, nesting."""
import numpy as np
import pytest

import gpuad


def test_grad_argnums():
    f = lambda x, y: (x * y ** 2).sum()  # noqa: E731
    x, y = gpuad.tensor([1.0, 2.0], dtype="float64"), gpuad.tensor([3.0, 4.0], dtype="float64")
    gx = gpuad.grad(f)(x, y)
    gx2, gy = gpuad.grad(f, argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gx.numpy(), [9.0, 16.0])
    np.testing.assert_allclose(gx2.numpy(), gx.numpy())
    np.testing.assert_allclose(gy.numpy(), [6.0, 16.0])
    assert x.grad is None and not x.requires_grad      # the caller's tensors are untouched


def test_grad_accepts_numpy_and_floats():
    g = gpuad.grad(lambda x: (x ** 2).sum())(np.array([1.0, -2.0]))
    np.testing.assert_allclose(g.numpy(), [2.0, -4.0])
    assert gpuad.grad(lambda x: x * x)(3.0).item() == 6.0


def test_value_and_grad_and_has_aux():
    (v, aux), g = gpuad.value_and_grad(lambda x: ((x * x).sum(), "aux"), has_aux=True)(gpuad.tensor([1.0, 2.0]))
    assert v.item() == 5.0 and aux == "aux"
    np.testing.assert_allclose(g.numpy(), [2.0, 4.0])


def test_nested_grad():
    f = lambda x: gpuad.sin(x) * x  # noqa: E731
    x = gpuad.tensor(0.8, dtype="float64")
    d2 = gpuad.grad(gpuad.grad(f))(x).item()
    assert d2 == pytest.approx(2 * np.cos(0.8) - 0.8 * np.sin(0.8), rel=1e-13)


def test_vjp_can_be_called_twice():
    y, back = gpuad.vjp(lambda a, b: a * b, gpuad.tensor([1.0, 2.0]), gpuad.tensor([3.0, 4.0]))
    ga, gb = back(gpuad.tensor([1.0, 1.0]))
    ga2, _ = back(gpuad.tensor([2.0, 2.0]))
    assert ga.tolist() == [3.0, 4.0] and gb.tolist() == [1.0, 2.0] and ga2.tolist() == [6.0, 8.0]
    assert not y.requires_grad


def test_grad_requires_scalar_output():
    with pytest.raises(ValueError, match="must return a scalar"):
        gpuad.grad(lambda x: x * 2)(gpuad.tensor([1.0, 2.0]))


def test_grad_of_constant_function_is_zero():
    assert gpuad.grad(lambda x: gpuad.tensor(1.0))(gpuad.tensor(2.0)).item() == 0.0
