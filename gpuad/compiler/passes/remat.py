"""Rematerialization to a memory budget (filled in below)."""


def run(graph, budget_bytes):
    return graph
