"""Every Triton kernel compiled ahead of time for the H200 (sm_90) on the CPU, and
ptxas' resource report checked: shared memory within the block limit, no register
spills, for the tiles the autotuner may pick (kernels/linear.py prunes the rest).

Each GEMM kernel: every kept tile in fp32, fp16 and bf16 with the gelu
activation (the most registers: erf in the epilogue and prologue), and every
activation on the first kept tile; the bias-gradient, cross-entropy and
layer-norm kernels in every dtype; the three attention kernels at head dims
16-256 with the launch options the host uses (kernels/flash_attention.py).
A kernel that ptxas cannot allocate registers for fails here too. The compiles run in one subprocess (this one interprets Triton
kernels, TRITON_INTERPRET=1), two at a time. Skips where the Triton wheel lacks
the CUDA backend tools. The three implicit-GEMM convolution kernels at the host's
tile, in every dtype.
"""
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
if not any(os.path.exists(os.path.join(BIN, n)) for n in ("ptxas-blackwell", "ptxas")):
    pytest.skip("this Triton wheel has no CUDA backend tools (ptxas)", allow_module_level=True)

sys.path.insert(0, ROOT)
from kernels import flash_attention as T  # noqa: E402  (the tile choices only: nothing compiles in this process)
from kernels import linear as L  # noqa: E402
CONV_TILE = (64, 64, 32, 8, 2)   # gpuad/backends/triton_backend.py TritonKernels.CONV_TILE (checked below)

DTYPES = {"float32": ("fp32", 4), "float16": ("fp16", 2), "bfloat16": ("bf16", 2)}
GEMMS = {"fwd": "linear_fwd_kernel", "dx": "linear_bwd_dx_kernel", "dw": "linear_bwd_dw_kernel"}


def _gemm_case(kind, dtype, cfg, act):
    ty, _ = DTYPES[dtype]
    const = {"ACT": act, "PRECISION": "ieee" if dtype == "float32" else "tf32", "INT64": False,
             "BLOCK_M": cfg[0], "BLOCK_N": cfg[1], "BLOCK_K": cfg[2]}
    if kind == "fwd":
        const.update(HAS_BIAS=True, SAVE_Z=act == 4)
    return {"module": "linear", "kernel": GEMMS[kind], "ptrs": {"*": "*" + ty}, "constexprs": const,
            "warps": cfg[3], "stages": cfg[4], "gemm": kind, "itemsize": DTYPES[dtype][1]}


def _cases():
    cases = {}
    for kind in GEMMS:
        for dtype, (_, itemsize) in DTYPES.items():
            for cfg in L.kept(kind, itemsize):
                cases[f"{kind}-{dtype}-{'x'.join(map(str, cfg))}-gelu"] = _gemm_case(kind, dtype, cfg, 4)
        for act in (0, 1, 2, 3):
            cases[f"{kind}-float32-act{act}"] = _gemm_case(kind, "float32", L.kept(kind, 4)[0], act)
    for dtype, (ty, _) in DTYPES.items():
        cases[f"db-{dtype}"] = {"module": "linear", "kernel": "linear_bwd_db_kernel", "ptrs": {"*": "*" + ty},
                                "constexprs": {"ACT": 4, "INT64": False, "BLOCK_M": 64, "BLOCK_N": 128},
                                "warps": 4, "stages": 3}
        for direction in ("fwd", "bwd"):
            cases[f"xent-{direction}-{dtype}"] = {
                "module": "softmax_xent", "kernel": f"xent_{direction}_kernel",
                "ptrs": {"*": "*" + ty, "target_ptr": "*i64", "loss_ptr": "*fp32", "lse_ptr": "*fp32",
                         "scale_ptr": "*fp32"},
                "constexprs": {"INT64": True, "BLOCK_C": 4096}, "warps": 4, "stages": 1}
        for direction in ("fwd", "bwd"):
            for block, rms in ((1024, False), (8192, False), (8192, True)):
                cases[f"{'rms' if rms else 'layer'}_norm-{direction}-{dtype}-{block}"] = {
                    "module": "layer_norm", "kernel": f"layer_norm_{direction}_kernel",
                    "ptrs": {"*": "*" + ty, "mean_ptr": "*fp32", "rstd_ptr": "*fp32"},
                    "constexprs": {"HAS_W": True, "RMS": rms, "INT64": False, "BLOCK_N": block} | (
                        {"HAS_B": True} if direction == "fwd" else {}),
                    "warps": 8 if block >= 2048 else 4, "stages": 1}
        # the implicit-GEMM convolutions at the host's tile, every BLOCK_N it picks (16..64)
        bm, bn_max, bk, warps, stages = CONV_TILE
        for kernel in ("fwd", "dgrad", "wgrad"):
            for bn in (16, 32, 64):
                cases[f"conv-{kernel}-{dtype}-bn{bn}"] = {
                    "module": "conv", "kernel": f"conv_{kernel}_kernel", "ptrs": {"*": "*" + ty},
                    "constexprs": {"PRECISION": "ieee" if dtype == "float32" else "tf32", "INT64": False,
                                   "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk} | (
                        {"HAS_BIAS": True} if kernel == "fwd" else {}),
                    "warps": warps, "stages": stages}
        # the tiles and launch options of TritonBackend.attention_forward / attention_backward:
        # fp32 with IEEE dots (the default precision) and with TF32; 16-bit types
        for precision in (("ieee", "tf32") if dtype == "float32" else ("tf32",)):
            ieee = precision == "ieee"
            for d in (16, 64, 128, 256):
                for causal in (True, False)[:2 if d <= T.MAX_HEAD_DIM_MASKED else 1]:   # causal, or masked
                    for name in ("fwd", "bwd_dkdv", "bwd_dq"):
                        if ieee and name != "fwd" and d > T.MAX_HEAD_DIM_IEEE_BACKWARD:
                            continue                     # the host runs the generic code there
                        launch = T.attention_launch(d, d, backward=name != "fwd", masked=not causal, ieee=ieee)
                        cases[f"attention-{name}-{dtype}-{precision}-d{d}-{'causal' if causal else 'mask'}"] = {
                            "module": "flash_attention", "kernel": f"attention_{name}_kernel",
                            "ptrs": {"*": "*" + ty, "lse_ptr": "*fp32", "d_ptr": "*fp32", "mask_ptr": "*fp32"},
                            "constexprs": {"CAUSAL": causal, "HAS_MASK": not causal, "PRECISION": precision} | {
                                k: v for k, v in launch.items() if k.startswith("BLOCK")},
                            "warps": launch["num_warps"], "stages": launch["num_stages"]}
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "aot_compile.py")], input=json.dumps(CASES),
                       capture_output=True, text=True, env=env, timeout=1200)
    if r.returncode != 0:
        pytest.fail(f"tests/aot_compile.py failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_conv_tile_compiled_here_is_the_hosts():
    src = open(os.path.join(ROOT, "gpuad", "backends", "triton_backend.py")).read()
    assert f"CONV_TILE = {CONV_TILE}" in src


def test_every_gemm_kernel_keeps_a_tile():
    for kind in GEMMS:
        for _, itemsize in DTYPES.values():
            assert L.kept(kind, itemsize), (kind, itemsize)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_fits_the_h200(case, compiled):
    """Shared memory within the block limit (and within the pruning model's estimate for
    the GEMM tiles), at most 255 registers, nothing spilled."""
    res, c = compiled[case], CASES[case]
    if "skip" in res:
        pytest.skip(res["skip"])
    assert "error" not in res, res.get("error")
    assert res["shared"] <= L.SMEM_LIMIT, f"{res['shared']} bytes of shared memory"
    assert res["spills"] == 0 and res["regs"] <= 255, f"{res['regs']} registers, {res['spills']} bytes spilled"
    if "gemm" in c:
        k = c["constexprs"]
        assert res["shared"] <= L.smem_bytes(c["gemm"], k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], c["stages"],
                                             c["itemsize"]), "the pruning model underestimates"
