"""The layout a newcomer reads: every subpackage says its role, imports run one way (no
circles), and Ray's private APIs appear in ray_private.py alone."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("deployments", "models")
PRIVATE_RAY = ("ray._private", "ray.experimental", "_internal_kv", "serve_context._", "_by_reference",
               "ray.serve._private")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """Modules of ours that `path` imports at run time, at any depth (lazy imports too)."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} | {f"{target}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def our_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_circles():
    graph = import_graph()
    # Importing a package runs its __init__: a module importing its own package is no cycle.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", sorted(p.parent.name for p in (ROOT / "deployments").glob("*/__init__.py")))
def test_every_subpackage_says_its_role(package):
    doc = ast.get_docstring(ast.parse((ROOT / "deployments" / package / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 10, f"deployments/{package}/__init__.py needs a docstring naming its role"
    top = ast.get_docstring(ast.parse((ROOT / "deployments" / "__init__.py").read_text()))
    assert f"{package}/" in top, f"deployments/__init__.py does not list {package}/"


def test_ray_private_apis_only_in_ray_private():
    users = [str(p.relative_to(ROOT)) for pkg in PACKAGES + ("benchmarks",) for p in (ROOT / pkg).rglob("*.py")
             if p.name != "ray_private.py" and any(api in p.read_text() for api in PRIVATE_RAY)]
    users += [name for name in ("graph.py",) if any(api in (ROOT / name).read_text() for api in PRIVATE_RAY)]
    assert users == []
