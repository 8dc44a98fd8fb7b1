"""Elementwise fusion (filled in below)."""


def run(graph):
    return graph
