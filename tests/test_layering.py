"""The dependency direction of DESIGN.md: shard_map <- shard_node <- router, cli; nothing imports cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shard_map", "shard_node", "router", "cli", "benchmarks")
ALLOWED = {
    "shard_map": set(),
    "shard_node": {"shard_map"},
    "router": {"shard_map", "shard_node", "rankshard"},
    "cli": {"shard_map", "shard_node", "rankshard", "benchmarks"},
    "benchmarks": {"rankshard"},
}


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level project packages imported by each module of `package`."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & (set(PACKAGES) | {"rankshard"})
    return found


@pytest.mark.parametrize("package", [p for p in PACKAGES if (ROOT / p).is_dir()])
def test_imports_follow_the_dependency_direction(package: str) -> None:
    wrong = {
        module: sorted(names - ALLOWED[package] - {package})
        for module, names in _imports(package).items()
        if names - ALLOWED[package] - {package}
    }
    assert not wrong, f"{package} must import only {sorted(ALLOWED[package])}: {wrong}"
