"""Bad input gets a clear error naming the op and the shapes or dtypes, raised at the call."""
import numpy as np
import pytest

import gpuad


def test_broadcast_mismatch_names_op_and_shapes():
    a, b = gpuad.ones((3, 4)), gpuad.ones((5,))
    with pytest.raises(ValueError, match=r"gpuad\.add: shapes \(3, 4\) and \(5,\) do not broadcast") as e:
        a + b
    assert e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(ValueError, match=r"gpuad\.multiply: shapes \(2,\) and \(3,\)"):
        gpuad.ones(2, requires_grad=True) * gpuad.ones(3)


def test_matmul_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"gpuad\.matmul: inner dimensions differ: \(3, 4\) @ \(5, 2\)"):
        gpuad.ones((3, 4)) @ gpuad.ones((5, 2))
    with pytest.raises(ValueError, match=r"gpuad\.matmul: batch dimensions \(2,\) and \(3,\)"):
        gpuad.ones((2, 3, 4)) @ gpuad.ones((3, 4, 5))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        gpuad.matmul(gpuad.tensor(1.0), gpuad.ones(3))


def test_backward_on_non_scalar_needs_grad():
    y = gpuad.ones(3, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match=r"shape \(3,\); backward needs a grad argument"):
        y.backward()


def test_backward_grad_shape_must_match():
    y = gpuad.ones(3, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match=r"grad has shape \(2,\) but output 0 has shape \(3,\)"):
        y.backward(gpuad.ones(2))


def test_second_backward_through_freed_graph():
    x = gpuad.tensor(1.0, requires_grad=True)
    y = gpuad.sin(x) * 2
    y.backward()
    with pytest.raises(RuntimeError, match=r"backward through the graph a second time.*retain_graph=True"):
        y.backward()


def test_backward_of_grey_tensor():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (gpuad.ones(2) * 2).sum().backward()


def test_grad_wrt_tensor_that_does_not_require_grad():
    x = gpuad.tensor(1.0, requires_grad=True)
    c = gpuad.tensor(2.0)
    with pytest.raises(RuntimeError, match="input 1 does not require grad"):
        gpuad.autograd.grad(x * c, [x, c])


def test_unused_input_without_allow_unused():
    x = gpuad.tensor(1.0, requires_grad=True)
    z = gpuad.tensor(1.0, requires_grad=True)
    with pytest.raises(RuntimeError, match="allow_unused=True"):
        gpuad.autograd.grad(x * 2, [x, z])


@pytest.mark.parametrize("data", [[1, 2], np.arange(3), [True, False]])
def test_integer_tensors_cannot_require_grad(data):
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients"):
        gpuad.tensor(data, requires_grad=True)


def test_reshape_and_axis_errors():
    with pytest.raises(ValueError, match=r"gpuad\.reshape: cannot reshape a tensor of shape \(2, 3\)"):
        gpuad.ones((2, 3)).reshape(4, 2)
    with pytest.raises(ValueError, match=r"gpuad\.sum: axis 2 is out of range"):
        gpuad.ones((2, 3)).sum(axis=2)
    with pytest.raises(ValueError, match=r"gpuad\.concat: shapes"):
        gpuad.concat([gpuad.ones((2, 3)), gpuad.ones((3, 2))], axis=0)
    with pytest.raises(ValueError, match=r"gpuad\.stack"):
        gpuad.stack([gpuad.ones(2), gpuad.ones(3)])
    with pytest.raises(IndexError, match=r"gpuad\.getitem: index .* shape \(2, 3\)"):
        gpuad.ones((2, 3))[5]
    with pytest.raises(ValueError, match="approximate"):
        gpuad.gelu(gpuad.ones(2), approximate="fast")


def test_setitem_on_a_leaf_that_requires_grad_refused():
    x = gpuad.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad is used in an in-place operation"):
        x[0] = 2.0
    y = gpuad.zeros(3)
    y[1] = 5.0
    assert y.tolist() == [0.0, 5.0, 0.0]


def test_cuda_unavailable_says_why():
    from gpuad.backends.devices import cuda_available
    if cuda_available()[0]:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="device 'cuda' is unavailable: "):
        gpuad.tensor([1.0], device="cuda")


def test_device_out_of_memory_says_what_to_do():
    from gpuad.ops.registry import primitive

    class OutOfMemoryError(Exception):        # what CuPy raises, by name
        pass

    def fwd(xp, x):
        raise OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes (allocated so far: 0 bytes).")
    hog = primitive("_test_hog")(fwd)
    try:
        with pytest.raises(MemoryError, match=r"gpuad\._test_hog: CUDA out of memory, asked for 1,073,741,824 "
                                              r"bytes.*checkpoint_sequential\(layers, x, budget_bytes=\.\.\.\)"):
            hog(gpuad.ones(3))
    finally:
        gpuad.surface.unregister("_test_hog")
