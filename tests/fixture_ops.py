"""An op that exists only for the tests: proof that one declaration is enough.

conftest.py imports this module before collection, so the generic tests
(gradcheck, gradgradcheck, predicted peak, shape rule) pick it up with no
other edit, exactly as they would a new op in gpuad/ops/derivatives.py.
"""
import gpuad

# x^3 / 3: keeps x, derivative x^2
FIXTURE_CUBE = gpuad.unary("fixture_cube", "x", "xp.multiply(x, x)", domain=(-2.0, 2.0),
                           fwd=lambda xp, x: xp.divide(xp.multiply(x, xp.multiply(x, x)), 3.0))
