"""Splits, merges and moves (the CARVE jobs of docs/architecture.md) under live writes through a real router: at the
end every member's score, rank and page equal a plain sorted list's, and `check` finds nothing."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator

import grpc
import pytest
import redis
from _router import Client

from rankshard.shard_map import ControlPlane, Job, JobState, JobStep, JobStore
from rankshard.shard_node import Carver, audit_board, connect_cluster, plan_merge, plan_move, plan_split
from rankshard.shard_node._keys import shard_key
from rankshard.shard_node._layout import BoardLayout
from rankshard.v1 import leaderboard_pb2 as pb

BOARD = "carve"
USERS = [f"u{i}" for i in range(300)]


class Writer:
    """Increments with request ids from a thread until stopped; an update that fails is sent again with its id
    until acknowledged, so the expected scores are exact (Jepsen's counter: each acknowledged delta counted once)."""

    def __init__(self, client: Client, seed: int) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.expected: dict[str, int] = {}
        self.acked = 0
        self.retried = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()

    def wait_for(self, acks: int) -> None:
        """Until `acks` more updates were acknowledged (so a job runs under traffic, not beside it)."""
        target = self.acked + acks
        for _ in range(6000):
            if self.acked >= target or self._stop.wait(0.01):
                return
        raise AssertionError("the writer made no progress")

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            user = self.rng.choice(USERS)
            delta = self.rng.randint(-60, 60)
            n += 1
            request = pb.UpdateScoreRequest(leaderboard=BOARD, user_id=user, score=delta, request_id=f"w{n}")
            while True:
                try:
                    self.client.lb.UpdateScore(request, timeout=10)
                    break
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    self.retried += 1
            self.expected[user] = self.expected.get(user, 0) + delta
            self.acked += 1


@pytest.fixture
def seeded(client: Client) -> Iterator[Client]:
    client.create(BOARD, boundaries=[100])
    for i, user in enumerate(USERS):
        client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=BOARD, user_id=user, score=i), timeout=10)
    yield client


def _board_equals_model(client: Client, expected: dict[str, int]) -> None:
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard=BOARD, limit=1000), timeout=10)
    assert top.total == len(expected)
    listed = [(e.user_id, e.score) for e in top.entries]
    model = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    assert listed == model
    for e in top.entries[::17]:
        rank = client.lb.GetRank(pb.GetRankRequest(leaderboard=BOARD, user_id=e.user_id), timeout=10)
        assert rank.entry.rank == 1 + sum(1 for s in expected.values() if s > e.score)


async def _run_jobs(dsn: str, steps: list[str]) -> list[str]:
    """Runs each step ('split s2 200', 'move s3 n1', 'merge s1 s3') to its end; returns the shard ids after."""
    async with await ControlPlane.open(dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            carver = Carver(cp, cluster, "test")
            for step in steps:
                kind, shard, arg = step.split()
                if kind == "split":
                    job = await plan_split(cp, cluster, BOARD, shard, int(arg), "test", 30)
                elif kind == "move":
                    job = await plan_move(cp, BOARD, shard, arg, "test", 30)
                else:
                    job = await plan_merge(cp, cluster, BOARD, shard, arg, "test", 30)
                done = await carver.run(job)
                assert (done.state, done.step) == (JobState.DONE, JobStep.DONE), done
            return [s.id for s in (await cp.shard_map(BOARD)).shards]
        finally:
            await cluster.aclose()


async def _check(dsn: str) -> None:
    """`rankshard check`'s audit of the board: nothing found."""
    async with await ControlPlane.open(dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            layout = BoardLayout(await cp.get_board(BOARD), await cp.shard_map(BOARD))
            findings = await audit_board(cluster, layout)
            assert findings == [], findings
        finally:
            await cluster.aclose()


def test_split_move_merge_under_writes(seeded: Client, control_plane_dsn: str) -> None:
    writer = Writer(seeded, seed=7)
    writer.expected = {u: i for i, u in enumerate(USERS)}
    writer.start()
    writer.wait_for(50)
    try:
        shards = asyncio.run(_run_jobs(control_plane_dsn, ["split s2 200", "move s3 n1", "merge s1 s2"]))
    finally:
        writer.stop()
    assert len(shards) == 2
    asyncio.run(_check(control_plane_dsn))
    _board_equals_model(seeded, writer.expected)


class _Stop(Exception):
    """Raised from a step hook: the job stops there, as if its process had died."""


def test_a_member_gone_to_another_shard_on_the_target_node_does_not_stay_in_the_target(
    seeded: Client, control_plane_dsn: str
) -> None:
    """The target's node keeps one version register for all its shards: a member copied into the target, then
    moved by its score into another shard on that node and written there again, is newer there than the source
    knows; its copy in the target must go all the same (else the counts of the range differ and the job fails)."""
    expected = {u: i for i, u in enumerate(USERS)}
    job = asyncio.run(_move_stopped_at_catch_up(control_plane_dsn))
    for delta in (100, 1):  # u50: out of s1 into s2, on the target's node; then written in s2 again
        seeded.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=BOARD, user_id="u50", score=delta), timeout=10)
        expected["u50"] += delta
    asyncio.run(_resume(control_plane_dsn, job))
    asyncio.run(_check(control_plane_dsn))
    _board_equals_model(seeded, expected)


async def _move_stopped_at_catch_up(dsn: str) -> Job:
    """s1 being moved to the node of s2, stopped once copied."""

    def stop(job: Job) -> None:
        if job.step is JobStep.CATCHUP:
            raise _Stop

    async with await ControlPlane.open(dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            nodes = {s.id: s.node for s in (await cp.shard_map(BOARD)).shards}
            assert nodes["s1"] != nodes["s2"]
            job = await plan_move(cp, BOARD, "s1", nodes["s2"], "test", 30)
            with pytest.raises(_Stop):
                await Carver(cp, cluster, "test", on_step=stop).run(job)
            return job
        finally:
            await cluster.aclose()


async def _resume(dsn: str, job: Job) -> None:
    async with await ControlPlane.open(dsn) as cp:
        cluster = await connect_cluster(cp)
        try:
            done = await Carver(cp, cluster, "test").run(job)
            assert (done.state, done.step) == (JobState.DONE, JobStep.DONE), done
        finally:
            await cluster.aclose()


def test_the_last_two_shards_merge_into_one_over_the_whole_score_line(seeded: Client, control_plane_dsn: str) -> None:
    """s1 (-inf, 100) into s2 [100, inf): the unbounded ends of both (None) must not be taken for where they meet."""
    assert asyncio.run(_run_jobs(control_plane_dsn, ["merge s1 s2"])) == ["s2"]
    asyncio.run(_check(control_plane_dsn))
    _board_equals_model(seeded, {u: i for i, u in enumerate(USERS)})


class _Crash(Exception):
    """Raised by a step hook: the job's runner stopping right after recording that row."""


def test_a_runner_that_stops_stops_renewing_its_lease_even_when_a_cancellation_is_lost(
    seeded: Client, control_plane_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11, `asyncio.wait_for` (psycopg's pool waits for a connection with it) drops a cancellation that
    arrives as its wait completes. Here the control plane's lease renewal loses one on purpose, and is slow: a run
    that stops while a renewal is in flight still ends, with nothing left renewing its lease."""
    real = JobStore.advance
    renewing = asyncio.Event()
    renewals: list[str] = []

    async def advance(store: JobStore, job: Job, owner: str, lease_s: float, **changes: object) -> Job:
        if changes:  # a step's own record
            if changes.get("step") is JobStep.COPY:
                await renewing.wait()  # the run stops (the hook below) while a renewal is in flight
            return await real(store, job, owner, lease_s, **changes)
        renewals.append("renewal")
        renewing.set()
        try:
            await asyncio.sleep(0.5)  # a slow control plane...
        except asyncio.CancelledError:
            pass  # ...that loses the cancellation
        return await real(store, job, owner, lease_s)

    def hook(row: Job) -> None:
        if row.step is JobStep.COPY:
            renewals.append("stopped")
            raise _Crash(row.step)

    async def scenario() -> list[asyncio.Task[object]]:
        async with await ControlPlane.open(control_plane_dsn) as cp:
            cluster = await connect_cluster(cp)
            try:
                job = await plan_move(cp, BOARD, "s1", "n2", "test", 0.3)
                monkeypatch.setattr(JobStore, "advance", advance)
                with pytest.raises(_Crash):
                    async with asyncio.timeout(20):
                        await Carver(cp, cluster, "test", lease_s=0.3, on_step=hook).run(job)
                left = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith(".renew")]  # type: ignore[union-attr]
                monkeypatch.setattr(JobStore, "advance", real)
                ended = await Carver(cp, cluster, "test").abort(await cp.jobs.get(job.id))
                assert ended.state is JobState.ABORTED
                return left
            finally:
                await cluster.aclose()

    assert asyncio.run(scenario()) == []
    assert renewals[-1] == "stopped", renewals  # no renewal began after the run stopped
    _board_equals_model(seeded, {u: i for i, u in enumerate(USERS)})
    asyncio.run(_check(control_plane_dsn))


def test_a_target_that_lacks_a_member_the_source_holds_is_never_committed(
    seeded: Client, control_plane_dsn: str
) -> None:
    """The freeze commits only when the target holds what the source holds in the range, or when writes under way
    account for the difference. A copy lost behind the job's back, with no write to explain it, fails every
    freeze, and the job rolls back: the board serves as before, nothing lost."""
    lost = "u150"  # in s2 [100, inf), on n2

    async def scenario() -> Job:
        async with await ControlPlane.open(control_plane_dsn) as cp:
            cluster = await connect_cluster(cp)
            target = redis.Redis.from_url(f"redis://{(await cp.get_node('n1')).address}")
            try:
                job = await plan_move(cp, BOARD, "s2", "n1", "test", 30)

                def hook(row: Job) -> None:
                    if row.step is JobStep.FREEZE:
                        target.zrem(shard_key(BOARD, row.target), lost)

                return await Carver(cp, cluster, "test", freeze_ms=200, on_step=hook).run(job)
            finally:
                target.close()
                await cluster.aclose()

    ended = asyncio.run(scenario())
    assert (ended.state, ended.error) == (
        JobState.ABORTED,
        "the target's count of the range kept differing from the source's",
    )
    _board_equals_model(seeded, {u: i for i, u in enumerate(USERS)})
    asyncio.run(_check(control_plane_dsn))
