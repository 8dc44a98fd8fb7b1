"""The engine: what backward does, on arrays and on sizes.

versions.py   version counters: a saved value written in place afterwards is an error
policy.py     what happens to each gradient: donation, ownership, unbroadcast, fan-in
walk.py       the reverse walk, the one loop backward runs
plan.py       the planner: the same walk on abstract arrays, counted, predicts the peak

It imports no op: a primitive reaches it as data on each node (its VJP, its
kernels, what it saved). The public face is gpuad/autograd.py; the layer
table in README.md places it, and tests/test_layers.py holds it there.
"""
