"""Resharding under load (after Redis's 04-resharding and 21-many-slot-migration tests): writer processes send
increments through two router processes while splits, moves and merges run one after another, back and forth,
over three nodes. Then Jepsen's counter rule holds for every member, every read equals the sorted list, `check`
finds nothing; and all of that again after a node restarts from its append-only file."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from _carving import Spec, assert_counter, assert_reads_match, control, findings, run_jobs, seed_ops, settled_finals
from _jepsen import OK, UNKNOWN, Op, poll, writer
from _processes import RouterProcess
from _router import Client, bootstrap

from rankshard.cli._local import LocalValkey
from rankshard.v1 import leaderboard_pb2 as pb

BOARD = "reshard"
BOUNDARIES = [-20, 40, 90]
"""s1 (-inf, -20) on n1, s2 [-20, 40) on n2, s3 [40, 90) on n3, s4 [90, inf) on n1."""
HOT = [f"m{i}" for i in range(8)]
"""Written by the writers, whose deltas keep them crossing the cuts between -60 and 110."""
BULK = {f"b{i:03}": (i * 7919) % 260 - 100 for i in range(300)}
"""Written once: what every copy carries."""
WORKERS = 3
REQUESTS = 240  # per worker: about 12 s at PACE, the time the jobs below take on a loaded 2-core machine
PACE = 0.05

CYCLE = [
    Spec("split", 0, 10),  # [-20, 40) -> [-20, 10) | [10, 40), both on n2
    Spec("move", 20, "n3"),
    Spec("merge", 20, 50),  # [10, 40) and [40, 90), both on n3
    Spec("move", -50, "n2"),
    Spec("move", -50, "n1"),  # and back
    Spec("split", 50, 40),
    Spec("merge", 20, 0),  # [10, 40) on n3 with [-20, 10) on n2: across nodes
    Spec("move", 0, "n2"),
]
"""One round trip: the map ends as it began (ranges and nodes; new shard ids)."""
CYCLES = 6


@pytest.fixture
def routers(
    control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey
) -> Iterator[list[RouterProcess]]:
    """Two router processes over n1, n2 (the session's) and n3 (`fresh_valkey`, the test's to restart)."""
    asyncio.run(bootstrap(control_plane_dsn, [*node_addresses, fresh_valkey.address]))
    started: list[RouterProcess] = []
    try:
        for _ in range(2):
            started.append(RouterProcess(control_plane_dsn, sweep_interval=0.1, sweep_age_ms=300).start())
        yield started
    finally:
        for r in started:
            r.stop()


def _writers(ports: list[int], history: list[Op], failures: list[BaseException]) -> None:
    """`WORKERS` writer processes (spawned) through the routers on `ports`, started together; their ops go to
    `history`."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS + 1), ctx.Queue()
    workers = [
        ctx.Process(target=writer, args=(w, ports, BOARD, HOT, REQUESTS, PACE, 50 + w, barrier, results), daemon=True)
        for w in range(WORKERS)
    ]
    for p in workers:
        p.start()
    try:
        barrier.wait(90)
        for _ in workers:
            worker, ops = results.get(timeout=120)
            assert not isinstance(ops, BaseException), f"worker {worker} failed: {ops!r}"
            history += ops
        for p in workers:
            p.join(30)
            assert p.exitcode == 0, f"worker exited with {p.exitcode}"
    except BaseException as exc:  # reported by the test
        failures.append(exc)
    finally:
        for p in workers:
            if p.is_alive():
                p.kill()
                p.join(5)
        results.close()
        results.join_thread()


async def _reshard_while(writing: threading.Thread, dsn: str) -> int:
    """Runs CYCLE over and over while the writers write (at least once, at most CYCLES times: jobs back to back
    slow the writers down on a small machine); returns the jobs run."""
    jobs = 0
    async with control(dsn) as (cp, cluster):
        while jobs < len(CYCLE) or (writing.is_alive() and jobs < CYCLES * len(CYCLE)):
            await run_jobs(cp, cluster, BOARD, [CYCLE[jobs % len(CYCLE)]])
            jobs += 1
        return jobs


def _audit(dsn: str) -> None:
    async def audit() -> None:
        async with control(dsn) as (cp, cluster):
            found = await findings(cp, cluster, BOARD)
            assert found == [], [str(f) for f in found]

    asyncio.run(audit())


def test_writes_through_two_routers_survive_splits_moves_and_merges_and_a_node_restart(
    control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey, routers: list[RouterProcess]
) -> None:
    ports = [r.port for r in routers]
    client = Client(ports[0])
    try:
        client.create(BOARD, boundaries=BOUNDARIES)
        history = seed_ops(client, BOARD, BULK)
    finally:
        client.close()
    failures: list[BaseException] = []
    writing = threading.Thread(target=_writers, args=(ports, history, failures), name="writers")
    writing.start()
    try:
        jobs = asyncio.run(_reshard_while(writing, control_plane_dsn))
    finally:
        writing.join(150)
    assert not writing.is_alive(), "the writers hung"
    if failures:
        raise failures[0]

    outcomes = Counter(op.outcome for op in history)
    resent = sum(
        1 for n in Counter((op.member, op.request_id) for op in history if op.router != "seed").values() if n > 1
    )
    assert outcomes[OK] > len(BULK) + WORKERS * REQUESTS * 0.6, outcomes
    assert outcomes[UNKNOWN] > 0 and resent > 10, (outcomes, resent)
    assert jobs >= len(CYCLE)
    addresses = [*node_addresses, fresh_valkey.address]
    members = [*HOT, *BULK]
    finals = settled_finals(addresses, BOARD, members)
    assert_counter(history, finals)
    assert set(finals) == set(members)
    _audit(control_plane_dsn)
    windows = ["b000", "b150", *HOT[:3]]
    for port in ports:
        assert_reads_match(port, BOARD, finals, windows)

    fresh_valkey.stop()  # n3, holding shards and index slots: its AOF must bring all of it back
    fresh_valkey.start()
    for port in ports:
        poll(lambda port=port: _serves(port), 30, f"the router on {port} to serve again after the restart")
    assert settled_finals(addresses, BOARD, members) == finals
    _audit(control_plane_dsn)
    for port in ports:
        assert_reads_match(port, BOARD, finals, windows)


def _serves(port: int) -> bool:
    """Whether the router on `port` answers a whole-board read (its connection to a restarted node is back)."""
    client = Client(port)
    try:
        client.lb.GetTop(pb.GetTopRequest(leaderboard=BOARD, limit=1000), timeout=5)
        return True
    except grpc.RpcError:
        return False
    finally:
        client.close()
