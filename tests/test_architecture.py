"""The layering rules of ARCHITECTURE.md, checked on the source: who may import whom, and no circles.

Imports are collected at every level (module top, inside functions, ``__import__`` and
``importlib.import_module`` with a literal name), so a lazy import cannot hide a violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

from tests.conftest import REPO

PACKAGES = ("optima_common", "site_agent", "coordinator")
FORBIDDEN = {"optima_common": {"site_agent", "coordinator"}, "site_agent": {"coordinator"},
             "coordinator": {"site_agent"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # "from pkg import module"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in ("__import__", "import_module"):
                found.add(node.args[0].value)
    return found


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))
            if "migrations" not in p.parts}


def test_layers_import_only_what_they_may():
    bad = []
    for name, path in _sources().items():
        top = name.split(".")[0]
        for imported in _imports(path):
            if imported.split(".")[0] in FORBIDDEN[top]:
                bad.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_lazy_and_dynamic_imports(tmp_path):
    probe = REPO / "coordinator" / "_probe_for_test.py"
    probe.write_text("def f():\n    from site_agent.config import load_config\n    __import__('site_agent.cli')\n")
    try:
        assert {"site_agent.config", "site_agent.cli"} <= _imports(probe)
    finally:
        probe.unlink()


def test_no_import_circles():
    sources = _sources()
    graph = nx.DiGraph()
    for name, path in sources.items():
        graph.add_node(name)
        for imported in _imports(path):
            # an import of pkg.mod.attr points at the longest known module prefix
            parts = imported.split(".")
            for k in range(len(parts), 0, -1):
                target = ".".join(parts[:k])
                if target in sources:
                    if target != name and not name.startswith(target + ".") and not target.startswith(name + "."):
                        graph.add_edge(name, target)
                    break
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not circles, circles


@pytest.mark.parametrize("package", PACKAGES)
def test_package_is_in_the_wheel(package):
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"{package}*"' in text


def test_sql_dialect_branches_live_in_the_cdm_package():
    """SQL differences between DuckDB and PostgreSQL go through site_agent.cdm (dialect.py, connection.py)."""
    import re

    pattern = re.compile(r"""[!=]= *["'](duckdb|postgresql)["']""")
    bad = [f"{p.relative_to(REPO)}:{i}" for p in sorted(REPO.glob("*/**/*.py"))
           if p.parts[len(REPO.parts)] in PACKAGES and "cdm" not in p.relative_to(REPO).parts[1:2]
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not bad, bad
