"""Graph passes, one job each: dce, cse, fold, fuse, buffers (the static plan),
remat (recompute to fit a budget). Each takes a Graph and returns one."""
