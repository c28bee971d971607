"""Resharding under load (after Redis's 04-resharding and 21-many-slot-migration tests): writer processes send
increments through two router processes while splits, moves and merges run one after another, back and forth,
over three nodes, and then `rankshard nodes drain` and `rankshard rebalance` (the CLI) empty each node in turn, bring it
back and rebalance. Then Jepsen's counter rule holds for every
member, every read equals the sorted list, `check` finds nothing; and all of that again after a node restarts
from its append-only file."""

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
from click.testing import CliRunner

from rankshard.cli import main
from rankshard.cli._local import LocalValkey
from rankshard.shard_node import shard_sizes
from rankshard.shard_node._layout import BoardLayout
from rankshard.v1 import leaderboard_pb2 as pb

BOARD = "reshard"
BOUNDARIES = [-20, 40, 90]
"""s1 (-inf, -20) on n1, s2 [-20, 40) on n2, s3 [40, 90) on n3, s4 [90, inf) on n1."""
HOT = [f"m{i}" for i in range(8)]
"""Written by the writers, whose deltas keep them crossing the cuts between -60 and 110."""
BULK = {f"b{i:03}": (i * 7919) % 260 - 100 for i in range(300)}
"""Written once: what every copy carries."""
WORKERS = 3
REQUESTS = 400  # per worker: about 20 s at PACE, four times what one round of the jobs below takes here
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
DRAINED = ["n3", "n1", "n2"]
"""Drained in turn, each brought back and the board rebalanced after: n3 holds no index slot, n1 and n2 half each."""
ROUNDS = 8
"""At most: while the writers write, CYCLE once, then drain-and-rebalance rounds."""


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


def _writers(ports: list[int], started: threading.Event, history: list[Op], failures: list[BaseException]) -> None:
    """`WORKERS` writer processes (spawned) through the routers on `ports`, started together (then `started` is
    set); their ops go to `history`."""
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
        started.set()
        for _ in workers:
            worker, ops = results.get(timeout=REQUESTS * PACE + 60)
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


async def _cycle(dsn: str) -> int:
    """Runs CYCLE; returns the jobs run."""
    async with control(dsn) as (cp, cluster):
        await run_jobs(cp, cluster, BOARD, CYCLE)
    return len(CYCLE)


def _reshard_while(writing: threading.Thread, dsn: str) -> int:
    """CYCLE, then a drain-and-rebalance of each of `DRAINED`, while the writers write (all of it, then more
    drains and rebalances until they are done, at most `ROUNDS` in all); returns the jobs run."""
    jobs = asyncio.run(_cycle(dsn))
    for node in DRAINED:
        jobs += _drain_and_rebalance(dsn, node)
    assert writing.is_alive(), "the writers ended before one round of the jobs"
    rounds = 1 + len(DRAINED)
    while writing.is_alive() and rounds < ROUNDS:
        jobs += _drain_and_rebalance(dsn, DRAINED[rounds % len(DRAINED)])
        rounds += 1
    return jobs


def _cli(dsn: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--control-plane", dsn, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


async def _members_per_node(dsn: str) -> dict[str, int]:
    async with control(dsn) as (cp, cluster):
        layout = BoardLayout(await cp.get_board(BOARD), await cp.shard_map(BOARD))
        sizes = await shard_sizes(cluster, layout)
    per_node = Counter({n: 0 for n in ("n1", "n2", "n3")})
    for shard in layout.map.shards:
        per_node[shard.node] += sizes[shard.id]
    return dict(per_node)


def _drain_and_rebalance(dsn: str, node: str) -> int:
    """`nodes drain NODE` (it ends holding nothing), `nodes undrain NODE`, `rebalance` (it gets members again);
    returns the jobs the drain and the rebalance ran."""
    drained = _cli(dsn, "nodes", "drain", node)
    assert drained.endswith("it holds no shard\n") or "it holds no shard;" in drained, drained
    assert asyncio.run(_members_per_node(dsn))[node] == 0
    _cli(dsn, "nodes", "undrain", node)
    rebalanced = _cli(dsn, "rebalance", "--leaderboard", BOARD)
    assert asyncio.run(_members_per_node(dsn))[node] > 0, rebalanced
    return sum(int(line.split()[2]) for line in (drained + rebalanced).splitlines() if " step(s) done" in line)


def _audit(dsn: str) -> None:
    async def audit() -> None:
        async with control(dsn) as (cp, cluster):
            found = await findings(cp, cluster, BOARD)
            assert found == [], [str(f) for f in found]

    asyncio.run(audit())


def test_writes_through_two_routers_survive_splits_moves_merges_drains_rebalances_and_a_node_restart(
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
    started = threading.Event()
    writing = threading.Thread(target=_writers, args=(ports, started, history, failures), name="writers")
    writing.start()
    try:
        assert started.wait(120) and not failures, failures
        jobs = _reshard_while(writing, control_plane_dsn)
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
    assert jobs >= len(CYCLE) + 2 * len(DRAINED), jobs  # every drain and every rebalance moved something
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
