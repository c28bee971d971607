"""Helpers for the tests of rebalancing jobs (docs/architecture.md, "Rebalancing"): jobs named by the scores their
shards hold (shard ids change with every job), a writer thread keeping a Jepsen history (`_jepsen`), and the checks
every such test ends with (the counter rule, reads equal to the sorted list, `check`'s audit)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from _jepsen import OK, UNKNOWN, Final, Op, check_counter, expected_top, poll, read_finals, update
from _router import Client

from rankshard.shard_map import ControlPlane, Job, JobBusy, JobState, JobStep, Shard, ShardMap
from rankshard.shard_node import (
    Carver,
    Cluster,
    Finding,
    audit_board,
    connect_cluster,
    finish_abandoned,
    plan_merge,
    plan_move,
    plan_split,
)
from rankshard.shard_node._layout import BoardLayout
from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

BOUNDARIES = [0, 50]
"""s1 (-inf, 0) on n1, s2 [0, 50) on n2, s3 [50, inf) on n1 (a board on a two-node cluster)."""
HOT = [f"m{i}" for i in range(6)]
"""The members a `Writer` increments while the jobs run."""
NEAR = [0, 25, 50]
"""The scores `HOT`'s members drift around (the `Writer`'s `near`): both cuts and the middle of s2."""
BULK = {f"b{i:03}": (i * 37) % 200 - 60 for i in range(200)}
"""Members seeded before the jobs, over all three shards of `BOUNDARIES`."""


@dataclass(frozen=True, slots=True)
class Spec:
    """One job, by the scores its shards hold: ``split`` the shard holding `at` at `arg`; ``move`` it to node
    `arg`; ``merge`` it with the shard holding `arg`."""

    kind: str
    at: int
    arg: int | str

    def __str__(self) -> str:
        return f"{self.kind} @{self.at} {self.arg}"


def shard_at(shard_map: ShardMap, score: int) -> Shard:
    return next(s for s in shard_map.shards if s.holds(score))


@contextlib.asynccontextmanager
async def control(dsn: str, timeout: float = 10.0) -> AsyncIterator[tuple[ControlPlane, Cluster]]:  # noqa: ASYNC109 -- the control plane's wait per call, not this call's
    """The control plane (each call bounded by `timeout` seconds) and every node, as a job runner (the CLI) holds
    them."""
    async with await ControlPlane.open(dsn, timeout=timeout) as cp:
        cluster = await connect_cluster(cp)
        try:
            yield cp, cluster
        finally:
            await cluster.aclose()


async def plan(
    cp: ControlPlane, cluster: Cluster, board: str, spec: Spec, owner: str = "test", lease_s: float = 30
) -> Job:
    shard = shard_at(await cp.shard_map(board), spec.at)
    if spec.kind == "split":
        return await plan_split(cp, cluster, board, shard.id, int(spec.arg), owner, lease_s)
    if spec.kind == "move":
        return await plan_move(cp, board, shard.id, str(spec.arg), owner, lease_s)
    other = shard_at(await cp.shard_map(board), int(spec.arg))
    return await plan_merge(cp, cluster, board, shard.id, other.id, owner, lease_s)


async def run_jobs(cp: ControlPlane, cluster: Cluster, board: str, specs: Sequence[Spec]) -> None:
    """Each job planned and run to DONE, one after another (a move to the node the shard is on is skipped)."""
    carver = Carver(cp, cluster, "test")
    for spec in specs:
        if spec.kind == "move" and shard_at(await cp.shard_map(board), spec.at).node == spec.arg:
            continue  # where a merge left it already (the bigger side keeps its node)
        done = await carver.run(await plan(cp, cluster, board, spec))
        assert (done.state, done.step) == (JobState.DONE, JobStep.DONE), (str(spec), done)


async def findings(cp: ControlPlane, cluster: Cluster, board: str) -> list[Finding]:
    """`rankshard check`'s audit of `board`."""
    return await audit_board(cluster, BoardLayout(await cp.get_board(board), await cp.shard_map(board)))


class Writer:
    """Increments with request ids to `members` from a thread, through the routers on `ports` in turn, until
    stopped. Some calls get a deadline too short to finish (unknown outcomes); an unknown one is resent with its id
    until answered, and some answered ones are resent on purpose (same id, same delta: answered, applied once).
    Deltas keep members crossing the cuts in `near` (each member drifts around one of them)."""

    def __init__(self, ports: Sequence[int], board: str, members: Sequence[str], near: Sequence[int], seed: int):
        self.ports = list(ports)
        self.board = board
        self.members = list(members)
        self.near = {m: near[i % len(near)] for i, m in enumerate(members)}
        self.rng = random.Random(seed)
        self.ops: list[Op] = []
        self.scores: dict[str, int] = {}
        self._seed = seed
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"writer{seed}", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def wait_for(self, acks: int, timeout: float = 60) -> None:
        """Until `acks` more updates are acknowledged (so what comes next runs under traffic)."""
        target = self.acked + acks
        poll(lambda: self.acked >= target or self._error, timeout, f"{acks} acknowledged writes")
        self._raise()

    @property
    def acked(self) -> int:
        return sum(1 for op in list(self.ops) if op.outcome == OK)

    def stop(self) -> list[Op]:
        self._stop.set()
        self._thread.join(90)
        assert not self._thread.is_alive(), "the writer hung"
        self._raise()
        return self.ops

    def _raise(self) -> None:
        if self._error is not None:
            raise AssertionError(f"writer {self._seed} failed") from self._error

    def _run(self) -> None:
        options = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)]
        channels = [grpc.insecure_channel(f"127.0.0.1:{p}", options=options) for p in self.ports]
        stubs = [pb_grpc.LeaderboardStub(c) for c in channels]
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                self._one(stubs, n)
        except BaseException as exc:  # surfaced by stop() and wait_for()
            self._error = exc
        finally:
            for c in channels:
                c.close()

    def _one(self, stubs: list[pb_grpc.LeaderboardStub], n: int) -> None:
        member = self.rng.choice(self.members)
        score, cut = self.scores.get(member), self.near[member]
        delta = self.rng.randint(1, 12) * (1 if score is None or score < cut else -1)
        rid = f"{self._seed}-{n}"
        via = n % len(stubs)
        short = self.rng.random() < 0.1
        op = update(stubs[via], self.board, member, delta, rid, 0.003 if short else 10, f"r{via}", wait_for_ready=True)
        self.ops.append(op)
        resend = op.outcome == UNKNOWN or self.rng.random() < 0.1
        while resend:
            via = (via + 1) % len(stubs)
            op = update(stubs[via], self.board, member, delta, rid, 15, f"r{via}", wait_for_ready=True)
            self.ops.append(op)
            assert op.code != "FAILED_PRECONDITION", op
            resend = op.outcome == UNKNOWN and not self._stop.is_set()
        if op.outcome == OK:
            assert op.score is not None
            self.scores[member] = op.score


def seed_ops(client: Client, board: str, scores: dict[str, int]) -> list[Op]:
    """Writes every member's first score (batches with request ids); their history, every update acknowledged."""
    ops: list[Op] = []
    items = sorted(scores.items())
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        request = pb.BatchUpdateScoresRequest(
            leaderboard=board,
            updates=[pb.ScoreUpdate(user_id=u, score=s, request_id=f"seed-{u}") for u, s in chunk],
        )
        reply = client.lb.BatchUpdateScores(request, timeout=30)
        for (user, score), result in zip(chunk, reply.results, strict=True):
            ops.append(Op(user, score, f"seed-{user}", OK, "OK", "seed", result.score, result.applied, result.rank))
    return ops


def settled_finals(node_addresses: Sequence[str], board: str, members: Sequence[str]) -> dict[str, Final | None]:
    """Every member's index entry, once no crossing is pending (calls cut off by their deadline leave some for
    the sweepers, and the members' next writes, to finish)."""

    def settled() -> bool:
        return not any(f and f.moving for f in read_finals(node_addresses, board, members, allow_moving=True).values())

    poll(settled, 30, "every abandoned crossing to be finished")
    return read_finals(node_addresses, board, members)


def assert_counter(history: Sequence[Op], finals: dict[str, Final | None]) -> None:
    """Jepsen's counter rule per member: acknowledged increments applied once, unknown ones at most once."""
    problems = check_counter(history, finals)
    assert not problems, "\n".join(problems[:20])


def assert_reads_match(port: int, board: str, finals: dict[str, Final | None], windows: Sequence[str] = ()) -> None:
    """Invariant 4: every GetTop page, every member's rank and the GetAround windows of `windows` equal the sorted
    list of the final (index) scores of a descending board."""
    scores = {m: f.score for m, f in finals.items() if f is not None}
    model = expected_top(scores)
    client = Client(port)
    try:
        lb, page = client.lb, 37
        for offset in range(0, len(model) + 1, page):
            reply = lb.GetTop(pb.GetTopRequest(leaderboard=board, offset=offset, limit=page), timeout=10)
            assert [(e.user_id, e.score, e.rank) for e in reply.entries] == model[offset : offset + page], offset
            assert reply.total == len(model)
        users = sorted(scores)
        for start in range(0, len(users), 500):
            request = pb.GetRanksRequest(leaderboard=board, user_ids=users[start : start + 500])
            got = [(e.user_id, e.score, e.rank) for e in lb.GetRanks(request, timeout=10).entries]
            assert got == [row for row in model if row[0] in set(users[start : start + 500])]
        position = {row[0]: i for i, row in enumerate(model)}
        for user in windows:
            reply = lb.GetAround(pb.GetAroundRequest(leaderboard=board, user_id=user, radius=5), timeout=10)
            at = position[user]
            assert [(e.user_id, e.score, e.rank) for e in reply.entries] == model[max(0, at - 5) : at + 6], user
    finally:
        client.close()


class JobCrash(Exception):
    """Raised by a job's step hook: its runner dying right after recording that row."""


async def heal(cp: ControlPlane, cluster: Cluster, job: Job, how: str) -> Job:
    """Ends a crashed job: ``resume`` (run it again), ``abort`` (a resume once committed) or ``abandoned``
    (`take_over`). A router's
    sweeper may take a committed job over first; this waits for whoever runs it. Returns its last row."""
    carver = Carver(cp, cluster, job.owner or "test")  # resumed or rolled back by its own runner, started again
    try:
        if how == "resume" or (how == "abort" and job.step.committed):
            await carver.run(job)
        elif how == "abort":
            await carver.abort(job)
        else:
            await take_over(cp, cluster, job)
    except JobBusy:
        assert job.step.committed, job  # only routers' sweepers take jobs over, and only committed ones
    return await wait_ended(cp, job)


CRASHED_LEASE = 0.2
"""Seconds a crashing runner's claim holds: renewed with every row while it runs, lapsed soon after it dies."""


async def take_over(cp: ControlPlane, cluster: Cluster, job: Job) -> None:
    """`finish_abandoned` with roll-back (as `repair` runs it), again until it has ended `job` (its runner's lease
    must lapse first) or someone else has."""
    async with asyncio.timeout(30):
        while True:
            await finish_abandoned(cp, cluster, "repair", roll_back=True)
            if (await cp.jobs.get(job.id)).state is not JobState.RUNNING:
                return
            await asyncio.sleep(0.05)


async def wait_ended(cp: ControlPlane, job: Job) -> Job:
    async with asyncio.timeout(30):
        while True:
            row = await cp.jobs.get(job.id)
            if row.state is not JobState.RUNNING:
                return row
            await asyncio.sleep(0.05)


def healed_state(job: Job, how: str) -> JobState:
    """How `heal(job, how)` must end it."""
    return JobState.DONE if how == "resume" or job.step.committed else JobState.ABORTED
