"""Rematerialization to a memory budget over the whole compiled graph: not built
yet. Asking for it fails loudly rather than silently ignoring the budget.
(Checkpointing of sequential chains, eager, is gpuad.checkpoint_sequential.)"""


def run(graph, budget_bytes):
    raise NotImplementedError("gpuad.compile(budget_bytes=...): rematerialization over the compiled graph is "
                              "not built yet; use gpuad.checkpoint / checkpoint_sequential in the step instead")
