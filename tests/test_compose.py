"""compose.sharded.yml and the Dockerfile: valid for Compose, the same nodes, install and bootstrap as
`rankshard cluster up`, and the init script and router health check run against real servers.

No container is started here (a Docker engine is not needed); the scripts the containers would run are run
as local processes instead, on the same `rankshard` and Python.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from _router import RouterThread, bootstrap
from conftest import POSTGRES_IMAGE, VALKEY_IMAGE

from rankshard.cli._local import LocalValkey, free_port, node_server_options
from rankshard.router.__main__ import _parser as router_parser
from rankshard.shard_map import DEFAULTS, ControlPlane, Operator, SlotTable, SortOrder, default_boundaries

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.sharded.yml"
NODES = ("valkey1", "valkey2", "valkey3")
NODE_PORT = 6379
ROUTER_PORT = 50051
LOCAL_SHARDS = 4
"""The shards `cluster up` gives board `global` by default (its --shards)."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def _validator() -> list[str] | None:
    """The Compose command that validates a file here: the docker plugin (v2), else docker-compose; None if neither."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_accepts_the_file() -> None:
    validator = _validator()
    if validator is None:
        pytest.skip("no Compose to validate with: neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run([*validator, "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_service_is_there_on_the_images_the_tests_run(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", *NODES, "init", "router-port", "router", "rankshard"}
    assert services["postgres"]["image"] == POSTGRES_IMAGE
    assert {services[n]["image"] for n in NODES} == {VALKEY_IMAGE}
    for name in ("init", "router", "rankshard"):
        assert services[name]["build"] == "." and services[name]["image"] == "rankshard:local"


def test_nodes_run_with_the_options_of_cluster_up_and_keep_an_append_only_file(services: dict[str, Any]) -> None:
    for name in NODES:
        command = services[name]["command"]
        assert command[0] == "valkey-server"
        assert command[1:] == node_server_options(DEFAULTS)
        assert command[command.index("--appendonly") + 1] == "yes"
        assert "valkey-cli ping" in " ".join(services[name]["healthcheck"]["test"])


def test_postgres_is_checked_ready_and_reachable_from_the_host_only(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["ports"] == ["127.0.0.1:5432:5432"]


def test_every_named_volume_is_declared_and_used_once(compose: dict[str, Any], services: dict[str, Any]) -> None:
    used = [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])]
    assert sorted(used) == sorted(compose["volumes"])
    assert services["postgres"]["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    for name in NODES:
        assert services[name]["volumes"] == [f"{name}-data:/data"]


def test_init_and_routers_wait_for_healthy_servers_and_routers_for_init(services: dict[str, Any]) -> None:
    healthy = {name: {"condition": "service_healthy"} for name in ("postgres", *NODES)}
    assert services["init"]["depends_on"] == healthy
    assert services["router"]["depends_on"] == {
        **healthy,
        "router-port": {"condition": "service_started"},
        "init": {"condition": "service_completed_successfully"},
    }


def test_two_routers_share_the_one_published_port(services: dict[str, Any]) -> None:
    router = services["router"]
    assert router["deploy"]["replicas"] == 2
    assert router["network_mode"] == "service:router-port"
    assert services["router-port"]["ports"] == [f"{ROUTER_PORT}:{ROUTER_PORT}"]
    assert router["entrypoint"] == ["python", "-m", "rankshard.router"]
    args = router_parser().parse_args(router["command"])
    assert (args.host, args.port, args.reuse_port) == ("0.0.0.0", ROUTER_PORT, True)
    assert args.control_plane == services["init"]["environment"]["RANKSHARD_CONTROL_PLANE"]


def test_the_control_plane_and_the_nodes_are_named_by_service(services: dict[str, Any]) -> None:
    dsn = urlsplit(services["init"]["environment"]["RANKSHARD_CONTROL_PLANE"])
    postgres = services["postgres"]["environment"]
    assert (dsn.hostname, dsn.port, dsn.path) == ("postgres", 5432, f"/{postgres['POSTGRES_DB']}")
    assert (dsn.username, dsn.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
    assert services["init"]["environment"]["NODES"].split() == [f"{n}:{NODE_PORT}" for n in NODES]


def _init_script(services: dict[str, Any]) -> list[str]:
    """The init service's argv as a shell would run it (Compose turns `$$` into `$`)."""
    init = services["init"]
    return [*init["entrypoint"], *(part.replace("$$", "$") for part in init["command"])]


def test_init_script_names_each_bootstrap_step(services: dict[str, Any]) -> None:
    script = _init_script(services)[-1]
    assert re.search(r"^rankshard init$", script, re.M)
    assert 'rankshard nodes add "$node"' in script
    assert re.search(r"^rankshard nodes deal-slots$", script, re.M)
    cuts = ",".join(map(str, default_boundaries(LOCAL_SHARDS)))
    assert f"leaderboards create global --order desc --operator increment --boundaries {cuts}" in script


def _run_init(services: dict[str, Any], dsn: str, addresses: list[str]) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)  # this environment's `rankshard`, as the image's is on its PATH
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RANKSHARD_CONTROL_PLANE": dsn}
    env["NODES"] = " ".join(addresses)
    return subprocess.run(_init_script(services), env=env, capture_output=True, text=True, timeout=120)


async def _bootstrapped(dsn: str) -> dict[str, Any]:
    """What the control plane at `dsn` holds of what init bootstraps."""
    async with await ControlPlane.open(dsn) as cp:
        boards = await cp.list_boards()
        return {
            "nodes": [(n.id, n.address) for n in await cp.list_nodes()],
            "slots": await cp.slot_table(),
            "boards": [(b.name, b.sort_order, b.operator, (await cp.shard_map(b.name)).boundaries) for b in boards],
        }


def test_init_script_bootstraps_as_cluster_up_does_and_can_run_again(
    services: dict[str, Any], control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey
) -> None:
    addresses = [*node_addresses, fresh_valkey.address]
    first = _run_init(services, control_plane_dsn, addresses)
    assert first.returncode == 0, first.stderr
    state = asyncio.run(_bootstrapped(control_plane_dsn))
    assert state == {
        "nodes": [(f"n{i}", a) for i, a in enumerate(addresses, 1)],
        "slots": SlotTable.spread(["n1", "n2", "n3"]),
        "boards": [("global", SortOrder.DESCENDING, Operator.INCREMENT, default_boundaries(LOCAL_SHARDS))],
    }
    again = _run_init(services, control_plane_dsn, addresses)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout and "dealt already" in again.stdout
    assert asyncio.run(_bootstrapped(control_plane_dsn)) == state


def _health_probe(services: dict[str, Any], port: int) -> subprocess.CompletedProcess[str]:
    test = services["router"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    argv = [sys.executable, *(arg.replace(f":{ROUTER_PORT}", f":{port}") for arg in test[2:])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_router_health_check_passes_on_a_serving_router_only(
    services: dict[str, Any], control_plane_dsn: str, node_addresses: list[str]
) -> None:
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    router = RouterThread(control_plane_dsn).start()
    try:
        serving = _health_probe(services, router.port)
    finally:
        router.stop()
    assert serving.returncode == 0, serving.stderr
    assert _health_probe(services, free_port()).returncode != 0


def _shell_commands(lines: list[str]) -> list[list[str]]:
    """Each command of shell `lines` (joined at `&&`), as words."""
    return [shlex.split(part) for line in lines for part in line.split("&&") if part.strip()]


def _dockerfile_install() -> list[list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runs = [line.removeprefix("RUN ") for line in text.splitlines() if line.startswith("RUN ")]
    commands = [c for c in _shell_commands(runs) if "venv" in c or "pip" in " ".join(c)]
    return [[w.replace("/opt/rankshard", "VENV") for w in c] for c in commands]


def _makefile_recipe(target: str) -> tuple[list[str], list[str]]:
    """The prerequisites and the recipe lines of `target` in the Makefile."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return lines[start].partition(":")[2].split(), recipe


def _makefile_install() -> list[list[str]]:
    """The Makefile's install, as an image does it: not editable, no dev extras."""
    _, recipe = _makefile_recipe("$(BIN)/rankshard")
    named = {"$(PY)": "python", "$(VENV)": "VENV", "$(BIN)": "VENV/bin"}
    commands = []
    for command in _shell_commands(recipe):
        words = [re.sub(r"\$\((PY|VENV|BIN)\)", lambda m: named[m.group(0)], w) for w in command]
        if words and words[0] != "touch":
            commands.append([w.split("[")[0] for w in words if w != "-e"])
    return commands


def test_the_image_installs_rankshard_as_ci_does() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    for target in re.findall(r"^make (\w+)$", ci, re.M):
        assert "$(BIN)/rankshard" in _makefile_recipe(target)[0], f"make {target} does not install as the image does"
    assert _dockerfile_install() == _makefile_install()
    assert _makefile_install()[-1][-1] == "."
    assert json.loads((ROOT / "Dockerfile").read_text().split("ENTRYPOINT ", 1)[1].splitlines()[0]) == ["rankshard"]


def _docker_ignores(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` leave `path` (relative to the root) or a folder above it out of the
    build context: a pattern is matched from the root, and `**/` at any depth."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        anywhere = pattern.removeprefix("**/")
        names = [p.rsplit("/", 1)[-1] for p in prefixes] if anywhere != pattern else prefixes
        if any(fnmatch.fnmatchcase(name, anywhere) for name in names):
            return True
    return False


def test_the_build_context_keeps_everything_pip_install_reads() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = list(setuptools["package-dir"].values())
    needed = ["pyproject.toml", "README.md"] + [
        str(path.relative_to(ROOT)) for folder in folders for path in (ROOT / folder).rglob("*.*")
    ]
    kept = [p for p in needed if "__pycache__" not in p]
    assert [p for p in kept if _docker_ignores(p, patterns)] == []
    assert _docker_ignores("tests/test_compose.py", patterns) and _docker_ignores(".venv/bin/python", patterns)
