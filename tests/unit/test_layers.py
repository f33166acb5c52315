"""The house's import rules, read from the source (AST, every import including those inside functions).

* the library (``spotshift/``) never imports Dagster;
* placement only decides: it imports nothing from ``spotshift.training`` or ``spotshift.migration``
  (the move lifecycle imports placement, never the other way round), so the two rooms have no loop;
* ``ops/`` imports nothing from ``assets/``; ``recording.py`` (Dagster glue) imports neither;
* command modules import the shared CLI helpers from ``spotshift.cliutil``, never back from ``spotshift.cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    root = REPO / folder
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    bad = []
    for f in files:
        for name in _imports(f):
            if any(name == p or name.startswith(p + ".") for p in forbidden):
                bad.append(f"{f.relative_to(REPO)} imports {name}")
    return bad


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("spotshift", ("dagster", "dagster_duckdb", "dagster_aws", "dagster_gcp", "dagster_dbt")),
        ("spotshift/placement", ("spotshift.training", "spotshift.migration")),
        ("ops", ("assets",)),
        ("recording.py", ("assets", "ops")),
    ],
)
def test_import_rules(folder: str, forbidden: tuple[str, ...]) -> None:
    assert _offenders(folder, forbidden) == []


def test_no_command_module_imports_back_from_cli() -> None:
    bad = [
        f"{f.relative_to(REPO)}"
        for f in sorted((REPO / "spotshift").rglob("*.py"))
        if f.name != "cli.py"
        and any(n == "spotshift.cli" or n.startswith("spotshift.cli.") for n in _imports(f))
    ]
    assert bad == []
