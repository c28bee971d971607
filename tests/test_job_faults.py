"""Faults during rebalancing jobs (docs/architecture.md, "Rebalancing"), each under a writer: a router SIGKILLed
while the source is frozen, PostgreSQL stopped mid-job, the source node restarted mid-copy, and the job's runner
dying right after each row it records. Every time the job completes (or rolls back), nothing acknowledged is lost,
nothing is applied twice, and `check` finds nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from _carving import (
    BOUNDARIES,
    BULK,
    CRASHED_LEASE,
    HOT,
    NEAR,
    JobCrash,
    Spec,
    Writer,
    assert_counter,
    assert_reads_match,
    control,
    findings,
    heal,
    healed_state,
    plan,
    run_jobs,
    seed_ops,
    settled_finals,
)
from _jepsen import OK, Op, update
from _processes import RouterProcess
from _router import Client, bootstrap

from rankshard.cli._local import LocalPostgres, LocalValkey, free_port
from rankshard.shard_map import ControlPlane, ControlPlaneError, Job, JobState, JobStep, NodeError, ShardState
from rankshard.shard_node import Carver, Cluster
from rankshard.v1 import leaderboard_pb2 as pb

BOARD = "faults"


def _start(dsn: str, addresses: list[str]) -> tuple[RouterProcess, list[Op]]:
    """Nodes registered, a router process serving, the board created and seeded: (the router, the seed's ops)."""
    asyncio.run(bootstrap(dsn, addresses))
    router = RouterProcess(dsn, sweep_interval=0.1, sweep_age_ms=300).start()
    client = Client(router.port)
    try:
        client.create(BOARD, boundaries=BOUNDARIES)
        return router, seed_ops(client, BOARD, BULK)
    finally:
        client.close()


def _assert_whole(
    dsn: str, addresses: list[str], port: int, history: list[Op], members: Sequence[str] = (*HOT, *BULK)
) -> None:
    """Nothing lost or doubled (the counter rule), `check` clean, no job left, every shard ACTIVE, reads equal to
    the sorted list."""
    finals = settled_finals(addresses, BOARD, members)
    assert_counter(history, finals)

    async def audit() -> None:
        async with control(dsn) as (cp, cluster):
            found = await findings(cp, cluster, BOARD)
            assert found == [], [str(f) for f in found]
            assert all(s.state is ShardState.ACTIVE for s in (await cp.shard_map(BOARD)).shards)
            assert await cp.jobs.list(BOARD, running=True) == []

    asyncio.run(audit())
    assert_reads_match(port, BOARD, finals, windows=HOT[:2])


@pytest.fixture
def routed(control_plane_dsn: str, node_addresses: list[str]) -> Iterator[tuple[RouterProcess, list[Op]]]:
    router, seeded = _start(control_plane_dsn, node_addresses)
    yield router, seeded
    router.stop()


# ---- a router killed while the source is frozen ------------------------------------------------------------


@pytest.mark.parametrize("then", ["finish", "roll back"])
def test_a_router_killed_during_the_freeze_loses_nothing(
    control_plane_dsn: str, node_addresses: list[str], routed: tuple[RouterProcess, list[Op]], then: str
) -> None:
    """The router a writer goes through is SIGKILLed once the source refuses writes (frozen, then committing);
    the job then commits, or dies too and is rolled back. The writer's calls cut off are resent with their ids to
    the router restarted on its port."""
    router, history = routed
    writer = Writer([router.port], BOARD, HOT, NEAR, seed=1).start()
    killed: list[Job] = []

    def hook(row: Job) -> None:
        if row.step is JobStep.FREEZE and row.freeze_ms is not None and not killed:
            killed.append(row)
            router.kill()
            if then == "roll back":
                raise JobCrash(row.step)

    async def move() -> Job:
        async with control(control_plane_dsn) as (cp, cluster):
            job = await plan(cp, cluster, BOARD, Spec("move", 25, "n2"))
            try:
                return await Carver(cp, cluster, "test", on_step=hook).run(job)
            except JobCrash:
                return await Carver(cp, cluster, "test").abort(job)

    try:
        writer.wait_for(30)
        ended = asyncio.run(move())
        router.start()
        writer.wait_for(30)
    finally:
        history += writer.stop()
    assert killed, "the job never froze its source"
    assert ended.state is (JobState.DONE if then == "finish" else JobState.ABORTED), ended
    _assert_whole(control_plane_dsn, node_addresses, router.port, history)


# ---- PostgreSQL down mid-job ---------------------------------------------------------------------------------


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL server of the test's own, free to be stopped and started again on its data."""
    with LocalPostgres(tmp_path / "pg", free_port(), fast=True) as server:
        yield server


@pytest.mark.parametrize("at", ["copy", "commit"])
def test_a_job_with_the_control_plane_down_fails_clearly_and_completes_after(
    own_postgres: LocalPostgres, node_addresses: list[str], at: str
) -> None:
    """PostgreSQL stops when the copy begins, or right before the commit (the source already committing on its
    node): the job fails with the control plane's error and stays at its step; the router keeps serving its cached
    map meanwhile; once PostgreSQL is back, running the job again completes it."""
    dsn = own_postgres.dsn
    router, history = _start(dsn, node_addresses)
    writer = Writer([router.port], BOARD, HOT, NEAR, seed=2).start()

    def hook(row: Job) -> None:
        if row.step is JobStep.COPY and not own_postgres.running:
            return
        if row.step is (JobStep.COPY if at == "copy" else JobStep.CATCHUP):
            # Acknowledged writes sent after the epoch floor went up: the router holds the job's map (a router
            # that had not heard of it could not write to the board until the control plane is back).
            writer.wait_for(3)
        if at == "copy" and row.step is JobStep.COPY or at == "commit" and row.freeze_ms is not None:
            own_postgres.stop()

    async def move() -> tuple[str, Job, Job]:
        async with control(dsn, timeout=2.0) as (cp, cluster):  # a stopped server fails the job within 2 s
            job = await plan(cp, cluster, BOARD, Spec("move", 25, "n2"))
            with pytest.raises(ControlPlaneError) as failed:
                await Carver(cp, cluster, "test", on_step=hook).run(job)
            # Served from the cached map while the control plane is down: reads, and (while the job's source takes
            # writes) a write away from the job's shard.
            read = client.lb.GetRank(pb.GetRankRequest(leaderboard=BOARD, user_id="b000"), timeout=10)
            assert read.entry.score == BULK["b000"]
            if at == "copy":
                outside.append(update(client.lb, BOARD, "outside", -30, "outside-1", 10))
            own_postgres.start()
            left = await cp.jobs.get(job.id)
            return str(failed.value), left, await Carver(cp, cluster, "test").run(left)

    outside: list[Op] = []
    client = Client(router.port)
    try:
        try:
            writer.wait_for(30)
            error, left, ended = asyncio.run(move())
            writer.wait_for(30)
        finally:
            history += writer.stop() + outside
            client.close()
        assert [op.outcome for op in outside] == ([OK] if at == "copy" else []), outside
        assert error.startswith("control plane (PostgreSQL at "), error
        assert (left.state, left.step) == (JobState.RUNNING, JobStep.COPY if at == "copy" else JobStep.FREEZE), left
        assert (ended.state, ended.step) == (JobState.DONE, JobStep.DONE), ended
        _assert_whole(dsn, node_addresses, router.port, history, [*HOT, *BULK, "outside"])
    finally:
        router.stop()


# ---- the source node restarted mid-copy --------------------------------------------------------------------


def test_a_source_node_restarted_mid_copy_is_resumed_to_the_end(
    control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey
) -> None:
    """A move of a shard of 2500 members whose node (n1, `fresh_valkey`) is stopped and started again from its AOF
    right after the copy saved its first cursor: the job fails naming the node or goes on; run again, it completes
    from its row."""
    addresses = [fresh_valkey.address, node_addresses[0]]
    router, history = _start(control_plane_dsn, addresses)
    many = {f"c{i:04}": -1 - i % 500 for i in range(2500)}  # all in s1 (-inf, 0), on n1
    client = Client(router.port)
    try:
        history += seed_ops(client, BOARD, many)
    finally:
        client.close()
    writer = Writer([router.port], BOARD, HOT, NEAR, seed=3).start()
    restarted: list[Job] = []

    def hook(row: Job) -> None:
        if row.step is JobStep.COPY and row.scan_cursor != "0" and not restarted:
            restarted.append(row)
            fresh_valkey.stop()
            fresh_valkey.start()

    async def move() -> tuple[list[str], Job]:
        failures = []
        async with control(control_plane_dsn) as (cp, cluster):
            job = await plan(cp, cluster, BOARD, Spec("move", -5, "n2"))
            carver = Carver(cp, cluster, "test", on_step=hook)
            for _ in range(3):
                try:
                    return failures, await carver.run(job)
                except NodeError as exc:
                    failures.append(str(exc))
            raise AssertionError(f"the job did not complete: {failures}")

    try:
        try:
            writer.wait_for(30)
            failures, ended = asyncio.run(move())
            writer.wait_for(30)
        finally:
            history += writer.stop()
        assert restarted, "the copy never saved a cursor"
        assert all("n1" in f for f in failures), failures
        assert (ended.state, ended.step) == (JobState.DONE, JobStep.DONE), ended
        assert ended.copied >= len(many), ended  # counted again from the start after the restart
        _assert_whole(control_plane_dsn, addresses, router.port, history, [*HOT, *BULK, *many])
    finally:
        router.stop()


# ---- the runner dying after each row it records -------------------------------------------------------------

ROUNDS = {
    "move": (Spec("move", 25, "n2"), Spec("move", 25, "n1")),
    "split": (Spec("split", 25, 25), Spec("merge", 10, 30)),
    "merge": (Spec("merge", -10, 10), Spec("split", 25, 0)),
}
"""Per kind: the job crashed, and the job that undoes it (run cleanly whenever the crashed one completed)."""
HEALS = ("resume", "abort", "abandoned")


@pytest.mark.parametrize("kind", ROUNDS)
def test_a_job_crashed_after_each_row_it_records_is_healed(
    control_plane_dsn: str, node_addresses: list[str], routed: tuple[RouterProcess, list[Op]], kind: str
) -> None:
    """For every call of the job's step hook (PREPARE ... CLEANUP, progress and map switches alike), a job whose
    runner dies right there; then it is run again, rolled back, or rolled back by `finish_abandoned` as `repair`
    does (rotating). Writes go on throughout."""
    router, history = routed
    crashed, undo = ROUNDS[kind]
    writer = Writer([router.port], BOARD, HOT, NEAR, seed=4).start()

    async def rounds() -> list[tuple[JobStep, str, JobState]]:
        seen: list[tuple[JobStep, str, JobState]] = []
        async with control(control_plane_dsn) as (cp, cluster):
            calls: list[Job] = []
            await _run(cp, cluster, crashed, calls.append)
            await run_jobs(cp, cluster, BOARD, [undo])
            for k, point in enumerate(_points(calls)):
                how = HEALS[k % len(HEALS)]
                left = await _crash(cp, cluster, crashed, point)
                if left is None:  # this run saved its progress fewer times
                    await run_jobs(cp, cluster, BOARD, [undo])
                    continue
                ended = await heal(cp, cluster, left, how)
                assert ended.state is healed_state(left, how), (k, left, how, ended)
                seen.append((left.step, how, ended.state))
                if ended.state is JobState.DONE:
                    await run_jobs(cp, cluster, BOARD, [undo])
                writer.wait_for(3)
        return seen

    try:
        writer.wait_for(20)
        seen = asyncio.run(rounds())
    finally:
        history += writer.stop()
    steps = {step for step, _, _ in seen}
    assert {JobStep.PREPARE, JobStep.FLOOR, JobStep.COPY, JobStep.CATCHUP, JobStep.FREEZE} <= steps, seen
    assert {JobStep.COMMITTED, JobStep.CLEANUP} <= steps, seen
    assert {state for _, _, state in seen} == {JobState.DONE, JobState.ABORTED}, seen
    _assert_whole(control_plane_dsn, node_addresses, router.port, history)


async def _run(cp: ControlPlane, cluster: Cluster, spec: Spec, hook: Callable[[Job], None]) -> Job:
    job = await plan(cp, cluster, BOARD, spec)
    return await Carver(cp, cluster, "test", on_step=hook).run(job)


Point = tuple[JobStep, bool, int]
"""Where a step hook call stands: the row's step, whether the freeze has been timed, and how many calls before it
had both the same."""


def _points(rows: Sequence[Job]) -> list[Point]:
    seen: dict[tuple[JobStep, bool], int] = {}
    points = []
    for row in rows:
        key = (row.step, row.freeze_ms is not None)
        points.append((*key, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return points


async def _crash(cp: ControlPlane, cluster: Cluster, spec: Spec, at: Point) -> Job | None:
    """`spec` planned and run by a runner that dies right after recording the row at `at`: that row (None when this
    run never got there, saving its progress fewer times). Its lease lapses soon after, so `finish_abandoned` may take
    the job over."""
    calls: list[Job] = []

    def hook(row: Job) -> None:
        calls.append(row)
        if _points(calls)[-1] == at:
            raise JobCrash(row.step)

    job = await plan(cp, cluster, BOARD, spec, owner="crashing", lease_s=CRASHED_LEASE)
    try:
        done = await Carver(cp, cluster, "crashing", lease_s=CRASHED_LEASE, on_step=hook).run(job)
    except JobCrash:
        assert calls[-1].state is JobState.RUNNING
        return calls[-1]
    assert done.state is JobState.DONE, done
    return None
