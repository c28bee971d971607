"""A router that hears of no map change for whole jobs (docs/architecture.md, "Rebalancing"; CockroachDB's rule:
after the commit, a stale router's requests see only STALE). Its epoch listener's PostgreSQL backend is stopped
(SIGSTOP): the connection stays open and says nothing, so NOTIFY never reaches the router until the test lets the
backend go on. The router keeps serving; the epoch floor refuses its index commits and the fences its shard writes
until it reloads on its own, so nothing it writes during or after the jobs lands in a range it no longer owns, is
lost, or is applied twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import psycopg
import pytest
import redis
from _carving import (
    BOUNDARIES,
    BULK,
    HOT,
    NEAR,
    Spec,
    Writer,
    assert_counter,
    assert_reads_match,
    control,
    findings,
    run_jobs,
    seed_ops,
    settled_finals,
    shard_at,
)
from _jepsen import Op, poll
from _processes import RouterProcess
from _router import Client, bootstrap

from rankshard.cli._local import LocalPostgres
from rankshard.shard_map._store import LISTENER_NAME
from rankshard.shard_node._keys import descriptor_key, shard_key

BOARD = "stale"


def _listeners(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            (LISTENER_NAME,),
        ).fetchall()
    return [pid for (pid,) in rows]


@contextlib.contextmanager
def _deaf(pid: int) -> Iterator[None]:
    """The listener's backend stopped: the router's LISTEN connection is open and silent."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
def stale_and_fresh(
    postgres: object, control_plane_dsn: str, node_addresses: list[str]
) -> Iterator[tuple[RouterProcess, RouterProcess]]:
    """Two routers; the first one's epoch listener deaf for the whole test."""
    if not isinstance(postgres, LocalPostgres):
        pytest.skip("needs a local PostgreSQL process (its backends are stopped by signal)")
    asyncio.run(bootstrap(control_plane_dsn, node_addresses))
    stale = RouterProcess(control_plane_dsn, sweep_interval=0.1, sweep_age_ms=300).start()
    try:
        (pid,) = poll(lambda: _listeners(control_plane_dsn), 30, "the router's epoch listener")  # type: ignore[misc]
        with _deaf(pid):
            fresh = RouterProcess(control_plane_dsn, sweep_interval=0.1, sweep_age_ms=300).start()
            try:
                yield stale, fresh
            finally:
                fresh.stop()
    finally:
        stale.stop()


def _holds(address: str, key: str) -> bool:
    host, port = address.rsplit(":", 1)
    with redis.Redis(host=host, port=int(port)) as r:
        return bool(r.exists(key))


def test_a_router_deaf_to_map_changes_writes_only_where_the_map_says(
    control_plane_dsn: str, node_addresses: list[str], stale_and_fresh: tuple[RouterProcess, RouterProcess]
) -> None:
    stale, fresh = stale_and_fresh
    client = Client(fresh.port)
    try:
        client.create(BOARD, boundaries=BOUNDARIES)
        history: list[Op] = seed_ops(client, BOARD, BULK)
    finally:
        client.close()
    by_address = dict(zip(("n1", "n2"), node_addresses, strict=True))

    async def jobs(specs: list[Spec]) -> tuple[str, str]:
        """Runs `specs`, then a move of the shard holding 25 to the other node; returns that shard and its node."""
        async with control(control_plane_dsn) as (cp, cluster):
            await run_jobs(cp, cluster, BOARD, specs)
            moved = shard_at(await cp.shard_map(BOARD), 25)
            await run_jobs(cp, cluster, BOARD, [Spec("move", 25, "n2" if moved.node == "n1" else "n1")])
            return moved.id, moved.node

    # Jobs while the deaf router writes: it learns of each change only from the nodes' refusals.
    writer = Writer([stale.port], BOARD, HOT, NEAR, seed=5).start()
    try:
        writer.wait_for(20)
        asyncio.run(jobs([Spec("split", 25, 25), Spec("move", 30, "n1"), Spec("merge", 30, 10)]))
        writer.wait_for(20)
    finally:
        history += writer.stop()

    # A job while it is idle, so its map is the one of before; then writes through it.
    gone, node = asyncio.run(jobs([]))
    writer = Writer([stale.port], BOARD, HOT, NEAR, seed=6).start()
    try:
        writer.wait_for(60)
    finally:
        history += writer.stop()
    # Nothing it wrote went to the moved shard's old key (its data and descriptor were removed by the job's cleanup).
    assert not _holds(by_address[node], shard_key(BOARD, gone))
    assert not _holds(by_address[node], descriptor_key(BOARD, gone))

    finals = settled_finals(node_addresses, BOARD, [*HOT, *BULK])
    assert_counter(history, finals)

    async def audit() -> None:
        async with control(control_plane_dsn) as (cp, cluster):
            found = await findings(cp, cluster, BOARD)
            assert found == [], [str(f) for f in found]

    asyncio.run(audit())
    for port in (stale.port, fresh.port):
        assert_reads_match(port, BOARD, finals, windows=HOT[:2])
