"""No import cycles among the project's packages, counting imports inside functions too: a function-level import that
only hides a cycle breaks as soon as someone moves it to the top of the file."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "policy", "rollout", "trainer")


def modules(root: Path, packages) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `packages` under `root`."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that importing module `name` loads directly: every `import` and `from ... import` in its
    file, at any depth (module level, functions, branches), each with the packages Python loads on the way to it
    (`trainer.bench.common` loads `trainer.bench` first) except the ones `name` itself lives in."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:  # the deepest project module the name reaches (`import a.b.c` may name a function)
            parts = target.split(".")
            deepest = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in known),
                           None)
            if deepest is not None:
                named.add(deepest)
    edges = set()
    for target in named:
        parts = target.split(".")
        edges.add(target)
        edges.update(".".join(parts[:i]) for i in range(1, len(parts)) if not name.startswith(".".join(parts[:i]) + "."))
    edges.discard(name)
    return edges


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component that has one, found by Tarjan's algorithm."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for component in components:  # the shortest way back to its first module, within the component
        start = min(component)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(w for w in graph[path[-1]] if w in component)
            if start in nxt:
                found.append(path + [start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return found


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert {"envs.spec", "trainer.bench.common", "trainer.bench.__main__"} <= set(graph)  # the walk sees them all
    assert "trainer.bench.common" in graph["trainer.report"] and "trainer.bench" in graph["trainer.report"]
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.sub import b\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (tmp_path / "pkg" / "c.py").write_text("import os\n\nif os.sep:\n    import pkg.a as a\n")
    (tmp_path / "pkg" / "d.py").write_text("from pkg import a\n")  # into the cycle, not part of it
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_console_scripts_name_one_entry_function_per_command():
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {f"synthnet-{c}" for c in ("zoo", "imitate", "grpo", "generate", "bench")}
    for target in scripts.values():
        module, func = target.split(":")
        assert func == "cli" and callable(getattr(importlib.import_module(module), func)), target
