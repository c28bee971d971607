"""The dependency direction: shard_map <- shard_node <- router <- cli (which also uses shard_node); benchmarks use
only the public API (the generated `rankshard.v1` modules); nothing imports cli. Every package lives under the
`rankshard` namespace."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shard_map", "shard_node", "router", "cli", "benchmarks")
ALLOWED = {
    "shard_map": set(),
    "shard_node": {"shard_map"},
    "router": {"shard_map", "shard_node", "v1"},
    "cli": {"shard_map", "shard_node", "router", "v1", "benchmarks"},
    "benchmarks": {"v1"},
}


def _imports(package: str) -> dict[str, set[str]]:
    """The `rankshard.*` packages imported by each module of `package`, and any project package imported
    by its old top-level name (which an installed rankshard does not have)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            for module in modules:
                top, _, rest = module.partition(".")
                if top == "rankshard":
                    names.add(rest.split(".")[0] or "rankshard")
                elif top in PACKAGES:
                    names.add(f"top-level {top}")
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_dependency_direction(package: str) -> None:
    wrong = {
        module: sorted(names - ALLOWED[package] - {package})
        for module, names in _imports(package).items()
        if names - ALLOWED[package] - {package}
    }
    assert not wrong, f"{package} must import only rankshard.{sorted(ALLOWED[package])}: {wrong}"


def test_every_package_is_installed_under_the_rankshard_namespace() -> None:
    import importlib

    for package in PACKAGES:
        module = importlib.import_module(f"rankshard.{package}")
        assert Path(module.__file__ or "").resolve().parent == ROOT / package


def test_only_the_router_imports_prometheus_client() -> None:
    """Metrics are the router's: the data path below it reports through `shard_node.NodeObserver`."""
    importers = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(name.split(".")[0] == "prometheus_client" for name in names):
                    importers.add(package)
    assert importers == {"router"}
