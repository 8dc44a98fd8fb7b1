"""Compile Triton kernels for sm_90 and report ptxas' resources: JSON cases on stdin,
JSON results on stdout's last line. Run by tests/test_kernels_aot.py in a process
without TRITON_INTERPRET (two workers: the compiles are independent)."""
import json
import os
import re
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

CONSTEXPRS = {"HAS_BIAS", "ACT", "SAVE_Z", "PRECISION", "INT64", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_C",
              "HAS_W", "HAS_B", "RMS", "CAUSAL", "HAS_MASK", "BLOCK_D", "BLOCK_DV", "BLOCK", "BM", "BN", "BK"}


def compile_case(case):
    import importlib
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas = next(os.path.join(bindir, n) for n in ("ptxas-blackwell", "ptxas") if os.path.exists(os.path.join(bindir, n)))
    if "path" in case:              # a kernel gpuad.compile generated, from its cache file
        import importlib.util
        spec = importlib.util.spec_from_file_location(os.path.basename(case["path"])[:-3], case["path"])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        kernel = getattr(mod, case["kernel"])
    else:
        kernel = getattr(importlib.import_module(f"kernels.{case['module']}"), case["kernel"])
    sig = {}
    for name in kernel.arg_names:
        if name in CONSTEXPRS:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = case["ptrs"].get(name, case["ptrs"]["*"])
        elif name in ("eps", "scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=case["constexprs"]),
                               target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": case["warps"], "num_stages": case["stages"]})
        except triton.runtime.errors.PTXASError as e:    # e.g. register allocation failed: a real finding
            return {"error": str(e)[-400:]}
        except RuntimeError as e:
            return {"skip": f"cannot compile for sm_90 here: {str(e)[:200]}"}
    r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", "-", "-o", os.devnull], input=k.asm["ptx"],
                       capture_output=True, text=True, timeout=300)
    return {"shared": k.metadata.shared, "regs": int(re.search(r"Used (\d+) registers", r.stderr).group(1)),
            "spills": int(re.search(r"(\d+) bytes spill stores", r.stderr).group(1))}


def main():
    cases = json.loads(sys.stdin.read())
    names = sorted(cases)
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = dict(zip(names, pool.map(compile_case, [cases[n] for n in names])))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
