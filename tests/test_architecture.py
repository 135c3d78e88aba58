"""The shape of the code: imports point one way, and no module needs itself back through others.

The import graph is read from the source (every `import` and `from ... import` anywhere in a module,
including those inside functions and under TYPE_CHECKING), so a cycle cannot hide behind a
function-local import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(packages: Iterable[str], root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` lives in (a module, or the package whose __init__ defines it)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(packages: Iterable[str], root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the modules of `packages` it imports}, from the source of every module."""
    modules = _modules(packages, root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != name:
                    graph[name].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_processor_has_no_import_cycle() -> None:
    assert cycles(import_graph(["processor"])) == []


def test_the_cycle_finder_sees_a_cycle_made_of_function_local_imports(tmp_path: Path) -> None:
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "engine.py").write_text("from shop import chip\n")
    (package / "chip.py").write_text("def check():\n    from shop.engine import run\n")
    (package / "policy.py").write_text("from . import chip\n")
    graph = import_graph(["shop"], tmp_path)
    assert graph["shop.policy"] == {"shop.chip"}
    assert cycles(graph) == [["shop.chip", "shop.engine"]]
    (package / "chip.py").write_text("def check():\n    pass\n")
    assert cycles(import_graph(["shop"], tmp_path)) == []


# Alembic's environment sees the models of every package (one metadata): it sits above them all.
SCHEMA_HISTORY = "processor.ledger.migrations"


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between packages (`processor.ledger`, `processor.cli`, ...): module edges folded up."""

    def package(name: str) -> str:
        return SCHEMA_HISTORY if name.startswith(SCHEMA_HISTORY) else ".".join(name.split(".")[:2])

    folded: dict[str, set[str]] = {}
    for source, targets in graph.items():
        folded.setdefault(package(source), set())
        for target in targets:
            if package(target) != package(source):
                folded[package(source)].add(package(target))
    return folded


def test_processor_packages_depend_one_way() -> None:
    """The ledger knows nothing of issuing or tokenization, issuing nothing of tokenization, and so on up."""
    assert cycles(_packages(import_graph(["processor"]))) == []


def test_the_three_programs_and_the_harness_import_only_what_they_may() -> None:
    graph = import_graph(["processor", "hsm_sim", "terminal_sim", "demo"])
    imports = {(source, target) for source, targets in graph.items() for target in targets}
    # The processor reaches the HSM through its client API only (the package, and the framing that the
    # HSM's protocol and the processor's ISO 8583 link share), never the terminals or the harness.
    client_api = {"hsm_sim", "hsm_sim.framing"}
    assert {t for s, t in imports if s.startswith("processor") and not t.startswith("processor")} <= client_api
    # The HSM is a program of its own.
    assert not {t for s, t in imports if s.startswith("hsm_sim") and not t.startswith("hsm_sim")}
    # The terminals speak the wire (processor.iso8583); they provision through the processor's CLI, as a program.
    outside = {t for s, t in imports if s.startswith("terminal_sim") and not t.startswith("terminal_sim")}
    assert {t for t in outside if t.startswith("processor")} <= {"processor.iso8583"} | {
        t for t in outside if t.startswith("processor.iso8583.")
    }
    assert not {t for s, t in imports if not s.startswith("demo") and t.startswith("demo")}



def test_terminal_sim_has_no_import_cycle() -> None:
    assert cycles(import_graph(["terminal_sim"])) == []


def private_imports(packages: Iterable[str], root: Path = ROOT) -> list[str]:
    """`from our.module import _name` anywhere in `packages`: a private name used outside its module."""
    modules = _modules(packages, root)
    found = []
    for name, path in sorted(modules.items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level and node.module.split(".")[0] in packages:
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports(["processor"]) == []


def test_the_private_import_finder_sees_one(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def _put(conn):\n    pass\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg.a import _put as put\n    put(None)\n")
    assert private_imports(["pkg"], tmp_path) == ["pkg.b: from pkg.a import _put"]
