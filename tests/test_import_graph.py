"""The package's modules import each other without cycles, counting the imports inside functions too.

A cycle that only closes inside a function (``runner -> plots -> report -> runner`` once did) imports fine until a
refactoring moves one of those imports to the top of a module; the graph is read from the source with ``ast``, so
every ``import`` / ``from ... import`` counts wherever it stands."""
from __future__ import annotations

import ast
from pathlib import Path

import sam3d_nnunet

PACKAGE = Path(sam3d_nnunet.__file__).resolve().parent
LINKED = ("trainers", "planners")  # symlinks to the top-level folders in a development checkout


def _modules() -> dict:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if rel.parts[1] in LINKED:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known) -> set:
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                module = f"{anchor}.{module}" if module else anchor
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # ``from pkg import module``
    return {m for m in found if m in known and m != name}


def import_graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict):
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_reader_sees_a_cycle_closed_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_benchmark_modules_form_a_dag():
    graph = import_graph()
    bench = {m: {n for n in e if n.startswith("sam3d_nnunet.benchmark")} for m, e in graph.items()
             if m.startswith("sam3d_nnunet.benchmark")}
    assert {"sam3d_nnunet.benchmark.runner", "sam3d_nnunet.benchmark.report",
            "sam3d_nnunet.benchmark.plots"} <= set(bench)
    assert "sam3d_nnunet.benchmark.report" in bench["sam3d_nnunet.benchmark.plots"], "the reader sees imports"
    assert "sam3d_nnunet.benchmark.plots" in bench["sam3d_nnunet.benchmark.runner"], "...inside functions too"
    assert find_cycle(bench) is None, " -> ".join(find_cycle(bench))


def test_the_whole_package_has_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
