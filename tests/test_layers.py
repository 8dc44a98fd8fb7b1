"""The layer diagram in README.md ("How it works") holds for every import in the package.

Each module imports only from its own floor and the floors below (imports inside
functions count: a late import is still a dependency), the one import the table
lists as running up is the only one, every module has a floor, and no modules
import each other in a circle.
"""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def read_table(text):
    """({path: floor}, {(from path, to path)} allowed up) from README's layer table."""
    m = re.search(r"<!-- layers:.*?-->\n(.*?)<!-- end of layers -->", text, re.S)
    assert m, "README.md has no layer table (<!-- layers: ... --> ... <!-- end of layers -->)"
    floors, up = {}, set()
    for line in m.group(1).splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "up":
            up.add((parts[1], parts[3]))
        else:
            for p in parts[1:]:
                floors[p] = int(parts[0])
    return floors, up


def module_files(root=ROOT):
    """{module name: path relative to root} for gpuad/ and kernels/."""
    out = {}
    for top in ("gpuad", "kernels"):
        for d, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), root)
                    name = rel[:-3].replace(os.sep, ".")
                    name = name[:-len(".__init__")] if name.endswith(".__init__") else name
                    out["gpuad." + name if top == "kernels" else name] = rel.replace(os.sep, "/")
    return out


def imports(mods, root=ROOT):
    """{(importer path, imported path)}: every import statement, at any depth."""
    by_name = mods
    edges = set()
    for name, rel in mods.items():
        pkg = name if rel.endswith("__init__.py") else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(open(os.path.join(root, rel)).read())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in by_name]
                targets = subs if len(subs) == len(node.names) else subs + [base]
            else:
                continue
            for t in targets:
                if t in by_name and by_name[t] != rel:
                    edges.add((rel, by_name[t]))
    return edges


def floor_of(rel, floors):
    """The floor of the most specific table entry that covers rel."""
    best = None
    for path, f in floors.items():
        if rel == path or (path.endswith("/") and rel.startswith(path)):
            if best is None or len(path) > len(best):
                best = path
    return None if best is None else floors[best]


def circles(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):                  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def house():
    floors, up = read_table(open(README).read())
    mods = module_files()
    return floors, up, mods, imports(mods)


def test_every_module_has_a_floor(house):
    floors, _, mods, _ = house
    missing = sorted(rel for rel in mods.values() if floor_of(rel, floors) is None)
    assert not missing, f"give these files a floor in README.md's layer table: {missing}"


def test_imports_run_down_or_level(house):
    floors, up, _, edges = house
    wrong = sorted(f"{a} (floor {floor_of(a, floors)}) imports {b} (floor {floor_of(b, floors)})"
                   for a, b in edges if floor_of(b, floors) > floor_of(a, floors) and (a, b) not in up)
    assert not wrong, "imports that run up a floor:\n" + "\n".join(wrong)


def test_the_listed_up_imports_exist_and_are_few(house):
    floors, up, _, edges = house
    assert len(up) <= 6
    for a, b in up:
        assert (a, b) in edges, f"README lists {a} -> {b} as running up, but no such import exists"
        assert floor_of(b, floors) > floor_of(a, floors)


def test_no_import_circles(house):
    _, _, _, edges = house
    assert circles(edges) == []


def test_the_checker_sees_what_it_must(tmp_path):
    """It finds an import inside a function, a package's submodule, and a circle."""
    pkg = tmp_path / "gpuad"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    from .sub import c\n")
    (pkg / "b.py").write_text("import gpuad.a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import b\n")
    edges = imports(module_files(str(tmp_path)), str(tmp_path))
    assert edges == {("gpuad/a.py", "gpuad/b.py"), ("gpuad/a.py", "gpuad/sub/c.py"),
                     ("gpuad/b.py", "gpuad/a.py"), ("gpuad/sub/c.py", "gpuad/b.py")}
    assert circles(edges) == [["gpuad/a.py", "gpuad/b.py", "gpuad/sub/c.py"]]
    floors = {"gpuad/": 1, "gpuad/a.py": 0}
    assert floor_of("gpuad/b.py", floors) == 1 and floor_of("gpuad/a.py", floors) == 0
