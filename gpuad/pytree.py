"""Pytrees: nested dicts, lists and tuples whose leaves are Tensors (a state_dict is
the common case), flattened and rebuilt in a fixed order, as JAX does.

>>> import gpuad
>>> from gpuad.pytree import tree_flatten, tree_unflatten
>>> leaves, spec = tree_flatten({"b": gpuad.ones(2), "a": [gpuad.zeros(1), 3.0]})
>>> len(leaves), tree_unflatten(spec, [1, 2, 3])
(3, {'a': [1, 2], 'b': 3})
"""


def tree_flatten(tree):
    """(leaves in order, spec). Dicts go by sorted key; None is an empty subtree."""
    leaves = []

    def walk(t):
        if isinstance(t, dict):
            keys = sorted(t)
            return ("dict", type(t), keys, [walk(t[k]) for k in keys])
        if isinstance(t, (list, tuple)):
            return (type(t).__name__, type(t), None, [walk(x) for x in t])
        if t is None:
            return ("none",)
        leaves.append(t)
        return ("leaf",)
    spec = walk(tree)
    return leaves, spec


def tree_unflatten(spec, leaves):
    it = iter(leaves)

    def build(s):
        kind = s[0]
        if kind == "leaf":
            return next(it)
        if kind == "none":
            return None
        _, typ, keys, kids = s
        vals = [build(k) for k in kids]
        if kind == "dict":
            return typ(zip(keys, vals)) if typ is not dict else dict(zip(keys, vals))
        if kind == "tuple" and typ is not tuple:          # a namedtuple
            return typ(*vals)
        return typ(vals)
    return build(spec)


def tree_map(fn, tree, *rest):
    """fn applied leaf by leaf (to matching leaves of `rest`, trees of the same shape)."""
    leaves, spec = tree_flatten(tree)
    others = [tree_flatten(r)[0] for r in rest]
    return tree_unflatten(spec, [fn(x, *ys) for x, *ys in zip(leaves, *others)])


def tree_leaves(tree):
    return tree_flatten(tree)[0]
