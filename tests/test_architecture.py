"""The shape of the code, checked: imports point down (mcp_server -> p2p -> inference), the
components of the node don't import it or each other in circles, peers/ knows nothing of the
scheduler, and every module-level import graph among our packages is acyclic — counting
imports under ``TYPE_CHECKING`` too, because a circle there is still a circle in the design."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("mcp_server", "p2p", "inference")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path], *, top_level_only: bool) -> set[str]:
    """Our modules that ``name`` imports (module level, TYPE_CHECKING blocks included; with
    ``top_level_only`` False, imports inside functions too)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    nodes = ast.walk(tree) if not top_level_only else _module_level(tree)
    for node in nodes:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _module_level(tree: ast.Module) -> list[ast.AST]:
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _graph(top_level_only: bool = True) -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, m, modules, top_level_only=top_level_only) for m, p in modules.items()}


def test_imports_point_down() -> None:
    rank = {"mcp_server": 2, "p2p": 1, "inference": 0}
    for mod, deps in _graph(top_level_only=False).items():
        for dep in deps:
            assert rank[dep.split(".")[0]] <= rank[mod.split(".")[0]], f"{mod} imports {dep}: imports point down only"


def test_peers_know_nothing_of_the_scheduler_and_components_not_the_node() -> None:
    graph = _graph(top_level_only=False)
    for mod, deps in graph.items():
        if mod.startswith("p2p.peers"):
            assert not any(d.startswith("p2p.scheduler") for d in deps), (mod, deps)
        if mod.startswith(("p2p.replication", "p2p.liveness", "p2p.discovery", "p2p.control", "p2p.net", "p2p.scheduler",
                           "p2p.clock", "p2p.protocols", "p2p.peers")):
            assert "p2p.node" not in deps, f"{mod} imports the node: components get narrow interfaces"


def test_no_import_cycles() -> None:
    graph = _graph()
    # packages re-export their modules; an edge into a package's own __init__ from inside it
    # is not a design cycle
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not mod.startswith(d + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
