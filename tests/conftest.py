"""Real servers for the tests: two Valkey nodes and one PostgreSQL per session, isolated per test.

Servers are local processes (`cli._local`) unless a Docker engine answers, in which case testcontainers runs them
(`RANKSHARD_TESTCONTAINERS=0` forces local processes). Tests that crash or freeze a node take `fresh_valkey`, which
is always a local process of their own.
"""

from __future__ import annotations

import gc
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from psycopg import sql

from rankshard.cli._local import LocalPostgres, LocalValkey, free_port

pytest_plugins = ["_fixtures_cluster"]

VALKEY_IMAGE = "valkey/valkey:8.1"
POSTGRES_IMAGE = "postgres:16"


class Node(Protocol):
    @property
    def address(self) -> str: ...

    def stop(self) -> None: ...


class Database(Protocol):
    @property
    def dsn(self) -> str: ...

    def stop(self) -> None: ...


def _docker_answers() -> bool:
    if os.environ.get("RANKSHARD_TESTCONTAINERS") == "0":
        return False
    if "DOCKER_HOST" not in os.environ and not Path("/var/run/docker.sock").exists():
        return False
    with warnings.catch_warnings():
        # docker-py leaves the socket of a refused connection unclosed; that ResourceWarning is not ours to fix.
        warnings.simplefilter("ignore", ResourceWarning)
        answers = _ping_docker()
        gc.collect()  # finalise that socket while the warning is still ignored
    return answers


def _ping_docker() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # imported only here: the local path must not need it

        client = docker.from_env(timeout=3)
    except Exception:  # no client library or no usable configuration: use local processes
        return False
    try:
        return bool(client.ping())
    except Exception:  # the engine does not answer
        return False
    finally:
        client.close()


class _ContainerNode:
    """A testcontainers Valkey shaped like `LocalValkey` (minus kill/pause, which containers do not offer here)."""

    def __init__(self) -> None:
        from testcontainers.community.redis import RedisContainer  # testcontainers.redis is deprecated

        self._container = RedisContainer(VALKEY_IMAGE).start()
        host, port = self._container.get_container_host_ip(), self._container.get_exposed_port(6379)
        self.address = f"{host}:{port}"

    def stop(self) -> None:
        self._container.stop()

    def kill(self) -> None:
        pytest.skip("needs a local Valkey process")

    pause = resume = kill


class _ContainerPostgres:
    """A testcontainers PostgreSQL shaped like `LocalPostgres`."""

    def __init__(self) -> None:
        from testcontainers.community.postgres import PostgresContainer

        self._container = PostgresContainer(
            POSTGRES_IMAGE, username="rankshard", password="rankshard", dbname="rankshard", driver=None
        ).start()
        self.dsn = self._container.get_connection_url()

    def stop(self) -> None:
        self._container.stop()

    def kill(self) -> None:
        pytest.skip("needs a local PostgreSQL process")


@pytest.fixture(scope="session")
def use_containers() -> bool:
    return _docker_answers()


@pytest.fixture(scope="session")
def valkey_nodes(use_containers: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    """Two running Valkey nodes shared by the session; take `node_addresses` to get them flushed."""
    nodes: list[Node] = []
    try:
        for i in range(2):
            if use_containers:
                nodes.append(_ContainerNode())
            else:
                local = LocalValkey(tmp_path_factory.mktemp(f"valkey{i}"), free_port())
                local.start()
                nodes.append(local)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session")
def postgres(use_containers: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A running PostgreSQL shared by the session; take `control_plane_dsn` for a database of your own."""
    if use_containers:
        server: Database = _ContainerPostgres()
    else:
        server = LocalPostgres(tmp_path_factory.mktemp("postgres") / "data", free_port(), fast=True)
        server.start()
    try:
        yield server
    finally:
        server.stop()


def with_database(dsn: str, dbname: str) -> str:
    """`dsn` pointing at database `dbname` instead."""
    return urlsplit(dsn)._replace(path=f"/{dbname}").geturl()


@pytest.fixture
def control_plane_dsn(postgres: Database) -> Iterator[str]:
    """DSN of a fresh, empty database, dropped after the test (open connections are closed by force)."""
    name = f"rs_{uuid.uuid4().hex}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(postgres.dsn, name)
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def node_addresses(valkey_nodes: list[Node]) -> list[str]:
    """Addresses ("host:port") of the session's nodes, emptied (FLUSHALL) for this test."""
    for node in valkey_nodes:
        host, port = node.address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port)) as client:
            client.flushall()
    return [node.address for node in valkey_nodes]


@pytest.fixture
def fresh_valkey(tmp_path: Path) -> Iterator[LocalValkey]:
    """A Valkey node of the test's own, free to be killed or paused; stopped after the test."""
    with LocalValkey(tmp_path / "valkey", free_port()) as node:
        yield node
