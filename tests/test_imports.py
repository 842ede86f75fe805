"""The package's modules import each other one way only: no import cycles.

Every Import / ImportFrom anywhere in a module counts, including those inside
functions, since a deferred import only hides a cycle from the interpreter.
"""
import ast
from pathlib import Path

PACKAGE = "synthray"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE



def _modules(root):
    """Dotted module name -> (path, is_package) for every .py under the package at `root`."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _resolve(module, is_pkg, level, name):
    """The absolute name of a (possibly relative) ImportFrom's module."""
    if not level:
        return name
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(root=ROOT):
    """Module -> set of package modules it imports (self-edges dropped)."""
    mods = _modules(root)
    graph = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    # `from pkg import mod` imports the module pkg.mod, else a name in pkg.
                    targets.append(sub if sub in mods else base)
        for t in targets:
            # `import a.b.c` with a.b.c absent: the nearest enclosing module counts.
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != mod:
                graph[mod].add(t)
    return graph


def strongly_connected(graph):
    """Tarjan's algorithm, iterative: the components, each a sorted list."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    comps.append(sorted(comp))
    return comps


def _cycle_in(graph, comp):
    """One cycle through the component's first module, as `a -> b -> a`."""
    members = set(comp)
    start = comp[0]
    # Breadth-first from start back to start, within the component.
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return " -> ".join(reversed(path)) + f" -> {start}"
                if child not in prev:
                    prev[child] = node
                    nxt.append(child)
        frontier = nxt
    return start


def cycles(graph):
    """Every component with more than one module: its members and one cycle through them."""
    return [(comp, _cycle_in(graph, comp)) for comp in strongly_connected(graph) if len(comp) > 1]


def _report(found):
    lines = []
    for comp, cycle in found:
        lines.append(f"{len(comp)} modules: {', '.join(comp)}")
        lines.append(f"  {cycle}")
    return "\n".join(lines)


def test_graph_counts_deferred_relative_and_from_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")  # empty: an edge into it still counts
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n")  # `from pkg.sub import <module>`
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import name\n")  # deferred and relative
    (pkg / "c.py").write_text("import pkg.a.missing\nfrom pkg.sub import thing\n")  # nearest module; a name in sub
    (pkg / "d.py").write_text("from . import a\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.sub": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.c"},
                     "pkg.c": {"pkg.a", "pkg.sub"}, "pkg.d": {"pkg.a"}}
    assert cycles(graph) == [(["pkg.a", "pkg.c", "pkg.sub.b"], "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a")]


def test_graph_covers_the_package():
    graph = import_graph()
    assert {f"{PACKAGE}.cli", f"{PACKAGE}.generation", f"{PACKAGE}.generation.generators"} <= set(graph)
    assert all(t in graph for targets in graph.values() for t in targets)


def test_no_import_cycles():
    found = cycles(import_graph())
    print(_report(found))
    assert not found, "import cycles:\n" + _report(found)


if __name__ == "__main__":
    print(_report(cycles(import_graph())) or "no cycles")
