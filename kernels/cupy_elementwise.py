"""CUDA C snippets for the CuPy provider's single-pass ElementwiseKernels.

The CuPy provider keeps the GEMM in cuBLAS and runs bias + activation (forward)
and the activation derivative (backward) as one pass each over MN elements:
    bias_act   read MN + N, write MN (+ MN for gelu's saved Z)
    dact       read 2MN, write MN
Kernel code only; gpuad/backends/cupy_backend.py builds them lazily, per device.
"""

ACT_FORWARD = {
    None: "y = z;",
    "relu": "y = z > 0 ? z : (T)0;",
    "tanh": "y = tanh(z);",
    # exp(-|z|) never overflows, and e / (1 + e) for z < 0 keeps tiny values exact: the
    # formula of ops/derivatives._sigmoid, so eager and compiled steps agree bit for bit
    "sigmoid": "T e = exp(-fabs(z)); T d = e + (T)1; y = z >= 0 ? (T)1 / d : e / d;",
    "gelu": "y = (T)0.5 * z * ((T)1 + erf(z * (T)0.7071067811865476));",
}

# in: dy and what the forward saved (Y, or Z for gelu); out: dz
ACT_BACKWARD = {
    None: "dz = dy;",
    "relu": "dz = s > 0 ? dy : (T)0;",
    "tanh": "dz = dy * ((T)1 - s * s);",
    "sigmoid": "dz = dy * s * ((T)1 - s);",
    "gelu": ("T cdf = (T)0.5 * ((T)1 + erf(s * (T)0.7071067811865476));"
             "T pdf = (T)0.3989422804014327 * exp((T)-0.5 * s * s);"
             "dz = dy * (cdf + s * pdf);"),
}


def bias_act_source(activation, save_z):
    """(in_params, out_params, operation) for y = act(z + b)."""
    body = "T z = zin + b; " + ACT_FORWARD[activation]
    if save_z:
        return "T zin, T b", "T y, T zs", body + " zs = z;"
    return "T zin, T b", "T y", body


def dact_source(activation):
    return "T dy, T s", "T dz", ACT_BACKWARD[activation]
