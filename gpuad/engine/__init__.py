"""The engine: what backward does, on arrays and on sizes.

versions.py   version counters: a saved value written in place afterwards is an error
policy.py     what happens to each gradient: donation, ownership, unbroadcast, fan-in
walk.py       the reverse walk, the one loop backward runs
plan.py       the planner: the same walk on abstract arrays, counted, predicts the peak

It imports nothing above the ops' registry and dispatch (the primitives'
declarations and their kernels); the public face is gpuad/autograd.py.
"""
