"""gpuad.compile: a tracing compiler for whole training steps.

The flow, one module each: trace (record a step's array ops on shapes) ->
capture (what the step reads and writes) -> ir (the SSA graph) -> passes
(dce, cse, fold, fuse, remat, buffers) -> codegen (straight-line Python over
a preallocated arena) -> pipeline (run it and put results back) -> compiled (gpuad.compile).
"""
from .compiled import Compiled, CompileWarning, compile, disable
from .trace import TraceError

__all__ = ["compile", "Compiled", "CompileWarning", "TraceError", "disable"]
