"""Node faults through a real router (docs/architecture.md failure model; docs/api.md "Limits" and invariant 3).

- A node SIGKILLed in the middle of a stream of writes and restarted on its data directory (AOF) loses nothing
  that was acknowledged, and retries with the same request ids apply every update exactly once.
- While a node is down, only what lives on it answers UNAVAILABLE (naming it); everything else serves, with exact
  ranks and totals.
- A frozen node (SIGSTOP) fails the calls that need it within their deadline instead of hanging the router, and
  the calls that do not need it are answered promptly.
- Reads while a node is down reflect this router's own changes made before it went down (a removal), and
  calls with short client deadlines that need only healthy nodes are served while another node is frozen.

Node n1 owns the even index slots and the shards s1 (-inf, 10) and s2 [10, 20); n2 owns the odd slots and
s3 [20, 30) and s4 [30, +inf) (`bootstrap` deals slots round-robin, boards deal shards in runs of neighbours from
the lowest range up; `check_layout` verifies the shards, and a slot on the wrong node would fail the UNAVAILABLE
checks).
n2 is always the node the test breaks.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from _fixtures_cluster import serve
from _router import Client
from click.testing import CliRunner

from rankshard.cli import main
from rankshard.cli._local import LocalValkey, free_port
from rankshard.shard_map import slot_for
from rankshard.shard_node._client import DOWN_FOR
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0
"""Seconds: the deadline of every call that is meant to finish."""

CUTS = [10, 20, 30]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DOWN = "n2"
"""The id of the node every test breaks."""


# ---- helpers ----------------------------------------------------------------------------------------------


def index_node(user: str) -> str:
    """Owner of the user's index slot: slots are dealt round-robin over n1, n2."""
    return f"n{slot_for(user) % 2 + 1}"


def users_indexed_on(node: str, prefix: str, count: int) -> list[str]:
    return list(
        itertools.islice((u for u in (f"{prefix}{i}" for i in itertools.count()) if index_node(u) == node), count)
    )


def shard_of(score: int) -> int:
    """The position (0-based, from the lowest range up) of the shard holding `score` on a board cut at CUTS."""
    return sum(score >= c for c in CUTS)


def shard_node_of(score: int) -> str:
    """Owner of the shard holding `score` on a board cut at CUTS."""
    return "n1" if shard_of(score) < 2 else "n2"


def check_layout(client: Client, board: str) -> None:
    """The shards of `board` are n1, n1, n2, n2 from the lowest range up, as `shard_node_of` assumes."""
    shards = client.admin.GetShardMap(admin_pb2.GetShardMapRequest(leaderboard=board), timeout=T).shards
    lowers = [s.lower if s.HasField("lower") else None for s in shards]
    assert lowers == [None, *CUTS]
    assert [s.node for s in shards] == [shard_node_of(low if low is not None else 0) for low in lowers]


def ranked(scores: dict[str, int], descending: bool = True) -> list[tuple[str, int, int]]:
    """The single sorted list: (user, score, competition rank), best first, ties by user id bytes."""
    sign = -1 if descending else 1
    ordered = sorted(scores.items(), key=lambda kv: (sign * kv[1], kv[0].encode()))
    return [(u, s, 1 + sum(1 for t in scores.values() if sign * t < sign * s)) for u, s in ordered]


def rank_in(scores: dict[str, int], descending: bool, user: str) -> int:
    return next(k for u, _, k in ranked(scores, descending) if u == user)


def entries(message: Any) -> list[tuple[str, int, int]]:
    return [(e.user_id, e.score, e.rank) for e in message.entries]


def full_top(client: Client, board: str) -> tuple[list[tuple[str, int, int]], int]:
    r = client.lb.GetTop(pb.GetTopRequest(leaderboard=board, limit=1000), timeout=T)
    return entries(r), r.total


def rankshard_check(dsn: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--control-plane", dsn, "check"])
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    return result.exit_code, result.output + (repr(result.exception) if crashed else "")


def expect_unavailable(label: str, call: Callable[[], Any], problems: list[str]) -> None:
    """`call` must fail UNAVAILABLE with a message naming the down node."""
    try:
        call()
    except grpc.RpcError as error:
        if error.code() != UNAVAILABLE or DOWN not in (error.details() or ""):
            problems.append(f"{label}: {error.code().name} {error.details()!r}, expected UNAVAILABLE naming {DOWN}")
    else:
        problems.append(f"{label}: served although {DOWN}, which it needs, is down")


def wait_for(condition: Callable[[], bool], timeout: float, what: str, state: Callable[[], object] = str) -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds, showing `state()`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state()}"
        time.sleep(0.02)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """(the call's result or its RpcError, seconds it took)."""
    started = time.monotonic()
    try:
        outcome = call()
    except grpc.RpcError as error:
        outcome = error
    return outcome, time.monotonic() - started


# ---- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture
def own_nodes(fresh_valkey: LocalValkey, tmp_path: Path) -> Iterator[tuple[LocalValkey, LocalValkey]]:
    """Two Valkey processes of this test's own (n1, n2), each free to be killed, paused and restarted."""
    other = LocalValkey(tmp_path / "valkey-n2", free_port())
    other.start()
    try:
        yield fresh_valkey, other
    finally:
        other.stop()


@pytest.fixture
def own_client(control_plane_dsn: str, own_nodes: tuple[LocalValkey, LocalValkey]) -> Iterator[Client]:
    """A router over `own_nodes`."""
    yield from serve(control_plane_dsn, [node.address for node in own_nodes])


# ---- SIGKILL during writes, restart from the AOF ----------------------------------------------------------


@dataclass
class Attempt:
    started: str  # the phase when the call was sent
    ended: str  # ... and when its answer came
    code: grpc.StatusCode
    details: str


@dataclass
class Request:
    user: str
    rid: str
    delta: int
    before: int  # the member's score before this request (its earlier requests were all acknowledged)
    attempts: list[Attempt] = field(default_factory=list)
    ack: tuple[int, bool] | None = None  # (score, applied) of the call that succeeded

    @property
    def after(self) -> int:
        return self.before + self.delta

    def needs(self, node: str) -> bool:
        """Whether the update touches `node`: its index slot, or the shard it leaves or enters."""
        nodes = {index_node(self.user), shard_node_of(self.after)}
        if not self.rid.endswith("-0"):  # not the member's first update: it leaves a shard too
            nodes.add(shard_node_of(self.before))
        return node in nodes


class Writer(threading.Thread):
    """Sends UpdateScore calls round-robin over `deltas`' members until stopped, like a game backend that
    retries: a member whose last call failed gets that same request (same id) again before any new one."""

    def __init__(self, client: Client, board: str, deltas: dict[str, Iterator[int]]) -> None:
        super().__init__(name="writer", daemon=True)
        self.client, self.board, self.deltas = client, board, deltas
        self.phase = "up"
        self.requests: dict[str, list[Request]] = {u: [] for u in deltas}
        self.pending: dict[str, Request] = {}
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            for user in itertools.cycle(self.deltas):
                if self.stopping.is_set():
                    return
                self.send(self.pending.get(user) or self._new(user))
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _new(self, user: str) -> Request:
        done = self.requests[user]
        before = done[-1].after if done else 0
        request = Request(user, f"{user}-{len(done)}", next(self.deltas[user]), before)
        with self.lock:
            done.append(request)
        return request

    def send(self, request: Request) -> bool:
        started = self.phase
        try:
            r = self.client.lb.UpdateScore(
                pb.UpdateScoreRequest(
                    leaderboard=self.board, user_id=request.user, score=request.delta, request_id=request.rid
                ),
                timeout=T,
            )
        except grpc.RpcError as error:
            with self.lock:
                request.attempts.append(Attempt(started, self.phase, error.code(), error.details() or ""))
                self.pending[request.user] = request
            return False
        with self.lock:
            request.attempts.append(Attempt(started, self.phase, grpc.StatusCode.OK, ""))
            request.ack = (r.score, r.applied)
            self.pending.pop(request.user, None)
        return True

    def all_requests(self) -> list[Request]:
        with self.lock:
            return [r for rs in self.requests.values() for r in rs]

    def attempts_in(self, phase: str) -> list[tuple[Request, Attempt]]:
        """Attempts sent and answered within `phase`."""
        return [(r, a) for r in self.all_requests() for a in list(r.attempts) if a.started == a.ended == phase]


def _deltas(first: int, step: Callable[[], int]) -> Iterator[int]:
    yield first
    while True:
        yield step()


def test_a_node_sigkilled_during_writes_and_restarted_loses_nothing_acknowledged(
    own_client: Client, own_nodes: tuple[LocalValkey, LocalValkey], control_plane_dsn: str
) -> None:
    client, (_, n2) = own_client, own_nodes
    client.create("k", boundaries=CUTS)
    check_layout(client, "k")
    rng = random.Random(3)
    deltas: dict[str, Iterator[int]] = {}
    for node in ("n1", "n2"):
        # Members that stay in s1 (on n1), that stay in s4 (on n2), and that cross between s2 and s3 (n1 <-> n2).
        for user in users_indexed_on(node, f"low-{node}-", 3):
            deltas[user] = _deltas(5, lambda: -rng.randint(1, 3))
        for user in users_indexed_on(node, f"high-{node}-", 3):
            deltas[user] = _deltas(100, lambda: rng.randint(1, 3))
        for user in users_indexed_on(node, f"mover-{node}-", 2):
            deltas[user] = _deltas(16, itertools.cycle([4, 4, -4, -4]).__next__)
    # Every kind of update: all on n1, index on n1 and shard on n2, index on n2 and shard on n1, all on n2.
    kinds = {
        (index_node(u), shard_node_of(5 if u.startswith("low") else 100)) for u in deltas if not u.startswith("mover")
    }
    assert kinds == {("n1", "n1"), ("n1", "n2"), ("n2", "n1"), ("n2", "n2")}

    writer = Writer(client, "k", deltas)
    writer.start()
    try:

        def acked(phase: str | None = None) -> int:
            return sum(1 for r in writer.all_requests() if r.ack and (phase is None or r.attempts[-1].started == phase))

        def last_failures() -> list[str]:
            return [f"{r.rid}: {r.attempts[-1]}" for r in list(writer.pending.values())[:5]]

        wait_for(lambda: acked() >= 150, 20, "writes before the kill", last_failures)
        n2.kill()  # SIGKILL, mid-stream: the writer keeps going
        writer.phase = "down"

        def seen_both() -> bool:
            down = writer.attempts_in("down")
            served = [r for r, a in down if a.code == grpc.StatusCode.OK]
            refused = [r for r, a in down if a.code != grpc.StatusCode.OK]
            return sum(1 for r in served if r.user.startswith("low-n1")) >= 20 and {
                (index_node(r.user), r.user.split("-")[0]) for r in refused
            } >= {("n1", "high"), ("n2", "low"), ("n2", "high")}

        wait_for(seen_both, 20, "both served and refused calls while n2 is down", last_failures)
        writer.phase = "restarting"
        n2.start()  # the same data directory: the AOF is replayed
        writer.phase = "up again"
        wait_for(lambda: acked("up again") >= 100 and not writer.pending, 20, "writes after the restart", last_failures)
    finally:
        writer.stopping.set()
        writer.join(30)
    assert not writer.is_alive() and writer.error is None, writer.error

    # Retry every request whose outcome is unknown, with its request id, until it succeeds.
    deadline = time.monotonic() + 20
    for request in list(writer.pending.values()):
        while not writer.send(request):
            assert time.monotonic() < deadline, f"{request.rid} still fails: {request.attempts[-1]}"
            time.sleep(0.05)
    requests = writer.all_requests()
    assert all(r.ack is not None for r in requests)

    problems = []
    for r in requests:
        for a in r.attempts:
            if a.code != grpc.StatusCode.OK and (a.code != UNAVAILABLE or DOWN not in a.details):
                problems.append(f"{r.rid} ({a.started}): {a.code.name} {a.details!r}, expected UNAVAILABLE naming n2")
    # While n2 was down, exactly the calls that need it were refused.
    down = writer.attempts_in("down")
    for r, a in down:
        if r.needs(DOWN) != (a.code != grpc.StatusCode.OK):
            problems.append(
                f"{r.rid} {r.before}{r.delta:+} (index on {index_node(r.user)}) while n2 was down: "
                f"{a.code.name} {a.details!r}"
            )
    # Each request applied exactly once, in order: every acknowledged score is the sum of the member's deltas
    # so far. A call refused after its index commit (index on n1) was committed: its retry is a duplicate.
    for r in requests:
        assert r.ack is not None
        if r.ack[0] != r.after:
            problems.append(f"{r.rid}: acknowledged score {r.ack[0]}, expected {r.before} {r.delta:+}")
        first = r.attempts[0]
        if first.started == first.ended == "down" and first.code != grpc.StatusCode.OK:
            committed = index_node(r.user) == "n1"
            if r.ack[1] == committed:
                problems.append(
                    f"{r.rid}: retry answered applied={r.ack[1]}, but the first call "
                    f"{'was' if committed else 'was not'} committed on the index"
                )
    assert not problems, "\n".join(problems[:30])
    refused_down = sum(1 for _, a in down if a.code != grpc.StatusCode.OK)
    assert 0 < refused_down < len(down), "the down phase had both served and refused calls"

    # Nothing acknowledged was lost: every member's score is the sum of its acknowledged deltas.
    final = {u: rs[-1].after for u, rs in writer.requests.items()}
    assert sum(len(rs) for rs in writer.requests.values()) == len(requests)
    assert full_top(client, "k") == (ranked(final), len(final))
    code, out = rankshard_check(control_plane_dsn)
    assert code == 0, out


# ---- while a node is down ---------------------------------------------------------------------------------


def test_while_a_node_is_down_only_what_lives_on_it_is_unavailable(
    split_client: Client, fresh_valkey: LocalValkey
) -> None:
    client = split_client
    # Per board, in every shard: three members indexed on n1, and one indexed on n2 tied with one of them.
    on1 = users_indexed_on("n1", "a", 12)
    on2 = users_indexed_on("n2", "b", 4)
    scores = {}
    for shard, lower in enumerate([0, *CUTS]):
        scores[on1[3 * shard]] = lower + 2
        scores[on1[3 * shard + 1]] = lower + 5
        scores[on1[3 * shard + 2]] = lower + 7
        scores[on2[shard]] = lower + 5  # ties with an n1 member
    models = {"down-desc": dict(scores), "down-asc": dict(scores)}
    descending = {"down-desc": True, "down-asc": False}
    for board in models:
        client.create(board, "desc" if descending[board] else "asc", boundaries=CUTS)
        check_layout(client, board)
        client.lb.BatchUpdateScores(
            pb.BatchUpdateScoresRequest(
                leaderboard=board, updates=[pb.ScoreUpdate(user_id=u, score=s) for u, s in scores.items()]
            ),
            timeout=T,
        )
        assert full_top(client, board) == (ranked(scores, descending[board]), len(scores))

    fresh_valkey.kill()
    problems: list[str] = []

    def only_n1(board: str, user: str) -> bool:
        return index_node(user) == "n1" and shard_node_of(models[board][user]) == "n1"

    def check_served(board: str) -> None:
        """Every read that needs only n1 is served, exact, with totals counting n2's shards too."""
        model, desc = models[board], descending[board]
        expected = ranked(model, desc)
        position = {u: i for i, (u, _, _) in enumerate(expected)}
        for user in (u for u in model if only_n1(board, u)):
            r = client.lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id=user), timeout=T)
            assert ((r.entry.user_id, r.entry.score, r.entry.rank), r.total) == (expected[position[user]], len(model))
            assert r.percentile == pytest.approx(100 * (len(model) - r.entry.rank) / len(model))
            # Around: the member's neighbours within its own shard.
            i = position[user]
            same = [
                j
                for j in (i - 1, i + 1)
                if 0 <= j < len(expected)
                and shard_node_of(expected[j][1]) == "n1"
                and shard_of(expected[j][1]) == shard_of(model[user])
            ]
            if len(same) == 2:
                r = client.lb.GetAround(pb.GetAroundRequest(leaderboard=board, user_id=user, radius=1), timeout=T)
                assert (entries(r), r.total) == (expected[i - 1 : i + 2], len(model)), user
        served = [u for u in model if only_n1(board, u)]
        r = client.lb.GetRanks(pb.GetRanksRequest(leaderboard=board, user_ids=served), timeout=T)
        assert entries(r) == [e for e in expected if e[0] in served]
        # Top pages that lie within one of n1's shards, and one over both.
        for lower, upper in ((None, 10), (10, 20), (None, 20)):
            inside = [i for i, (_, s, _) in enumerate(expected) if (lower is None or s >= lower) and s < upper]
            offset, limit = inside[0], len(inside)
            r = client.lb.GetTop(pb.GetTopRequest(leaderboard=board, offset=offset, limit=limit), timeout=T)
            assert (entries(r), r.total) == (expected[offset : offset + limit], len(model)), (board, lower)

    def check_refused(board: str) -> None:
        model = models[board]
        expected = ranked(model, descending[board])
        needs_n2 = [u for u in model if not only_n1(board, u)]
        assert {index_node(u) for u in needs_n2} == {"n1", "n2"}  # both an index on n2 and a shard on n2
        for user in needs_n2:
            label = f"{board} {user} (index {index_node(user)}, score {model[user]})"
            expect_unavailable(
                f"GetRank {label}",
                lambda user=user: client.lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id=user), timeout=T),
                problems,
            )
            expect_unavailable(
                f"GetAround {label}",
                lambda user=user: client.lb.GetAround(
                    pb.GetAroundRequest(leaderboard=board, user_id=user, radius=1), timeout=T
                ),
                problems,
            )
        expect_unavailable(
            f"GetRanks {board}",
            lambda: client.lb.GetRanks(pb.GetRanksRequest(leaderboard=board, user_ids=list(model)), timeout=T),
            problems,
        )
        expect_unavailable(
            f"GetTop {board} whole board",
            lambda: client.lb.GetTop(pb.GetTopRequest(leaderboard=board, limit=1000), timeout=T),
            problems,
        )
        # One position past n1's shards s1 and s2 (next to each other) into n2's s3, and a page of s2 and s3.
        inside = [i for i, (_, s, _) in enumerate(expected) if s < 20]
        s2 = [i for i, (_, s, _) in enumerate(expected) if 10 <= s < 20]
        beyond = (inside[0] - 1, 2) if descending[board] else (inside[0], len(inside) + 1)
        for offset, limit in (beyond, (min(s2) - 1 if descending[board] else min(s2), len(s2) + 1)):
            expect_unavailable(
                f"GetTop {board} offset {offset} limit {limit}",
                lambda offset=offset, limit=limit: client.lb.GetTop(
                    pb.GetTopRequest(leaderboard=board, offset=offset, limit=limit), timeout=T
                ),
                problems,
            )
        # An n1 member whose window reaches into n2's shards.
        user = next(u for u in model if only_n1(board, u) and model[u] >= 10)
        expect_unavailable(
            f"GetAround {board} {user} radius 10",
            lambda: client.lb.GetAround(pb.GetAroundRequest(leaderboard=board, user_id=user, radius=10), timeout=T),
            problems,
        )
        on_n2 = next(u for u in model if index_node(u) == "n2")
        expect_unavailable(
            f"RemoveMember {board} {on_n2}",
            lambda: client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard=board, user_id=on_n2), timeout=T),
            problems,
        )

    def within_n1_shard(board: str, user: str) -> bool:
        """Whether the member's neighbours either side lie in its own shard, one of n1's."""
        model = models[board]
        expected = ranked(model, descending[board])
        i = next(j for j, (u, _, _) in enumerate(expected) if u == user)
        same = [
            j
            for j in (i - 1, i + 1)
            if 0 <= j < len(expected)
            and shard_node_of(expected[j][1]) == "n1"
            and shard_of(expected[j][1]) == shard_of(model[user])
        ]
        return len(same) == 2

    def check_concurrent(board: str) -> None:
        """The same reads all at once, so the router answers them in coalesced batches: a batch whose count needs
        n2 fails only the calls that need n2."""
        model, desc = models[board], descending[board]
        expected = ranked(model, desc)
        position = {u: i for i, (u, _, _) in enumerate(expected)}

        def rank(user: str) -> tuple[str, object]:
            try:
                r = client.lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id=user), timeout=T)
            except grpc.RpcError as error:
                return user, error.code()
            return user, ((r.entry.user_id, r.entry.score, r.entry.rank), r.total)

        def around(user: str) -> tuple[str, object]:
            try:
                r = client.lb.GetAround(pb.GetAroundRequest(leaderboard=board, user_id=user, radius=1), timeout=T)
            except grpc.RpcError as error:
                return user, error.code()
            return user, (entries(r), r.total)

        with ThreadPoolExecutor(max_workers=len(model)) as pool:
            for _ in range(3):
                ranks = dict(pool.map(rank, list(model) * 2))
                windows = dict(pool.map(around, list(model) * 2))
                for user in model:
                    i = position[user]
                    if only_n1(board, user):
                        assert ranks[user] == (expected[i], len(model)), (board, user)
                        if within_n1_shard(board, user):
                            assert windows[user] == (expected[i - 1 : i + 2], len(model)), (board, user)
                    else:
                        assert ranks[user] == UNAVAILABLE, (board, user, ranks[user])
                        assert windows[user] == UNAVAILABLE, (board, user, windows[user])

    for board, model in models.items():
        check_served(board)
        check_refused(board)
        check_concurrent(board)
        # Writes that need only n1: an existing member within its shard, a new member, a batch, a removal.
        user = next(u for u in model if only_n1(board, u) and model[u] >= 10)
        model[user] += 1
        r = client.lb.UpdateScore(
            pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=1, request_id="w1"), timeout=T
        )
        assert (r.score, r.rank, r.applied) == (model[user], rank_in(model, descending[board], user), True)
        newbie = users_indexed_on("n1", "new", 1)[0]
        model[newbie] = -3
        r = client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=board, user_id=newbie, score=-3), timeout=T)
        assert (r.score, r.rank, r.applied) == (-3, rank_in(model, descending[board], newbie), True)
        batch = [u for u in model if only_n1(board, u) and model[u] < 10][:3]
        for u in batch:
            model[u] -= 1
        r = client.lb.BatchUpdateScores(
            pb.BatchUpdateScoresRequest(
                leaderboard=board, updates=[pb.ScoreUpdate(user_id=u, score=-1) for u in batch]
            ),
            timeout=T,
        )
        assert [x.score for x in r.results] == [model[u] for u in batch]
        gone = next(u for u in model if only_n1(board, u) and 10 <= model[u] < 20 and u != user)
        assert client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard=board, user_id=gone), timeout=T).removed
        del model[gone]
        check_served(board)
    assert not problems, "\n".join(problems)

    # Writes that need n2 are refused; the ones committed on n1's index first settle on a retry.
    retries: list[tuple[str, Any]] = []
    for board, model in models.items():
        crossing = next(u for u in model if only_n1(board, u) and 10 <= model[u] < 20)  # s2 (n1) -> s3 (n2)
        in_n2_shard = next(u for u in model if index_node(u) == "n1" and shard_node_of(model[u]) == "n2")
        indexed_on_n2 = next(u for u in model if index_node(u) == "n2")
        for user, delta in ((crossing, 10), (in_n2_shard, 1), (indexed_on_n2, 1)):
            request = pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=delta, request_id=f"r-{user}")
            expect_unavailable(
                f"UpdateScore {board} {user}",
                lambda request=request: client.lb.UpdateScore(request, timeout=T),
                problems,
            )
            retries.append((board, request))
        pair = (next(u for u in model if only_n1(board, u)), indexed_on_n2)
        batch = pb.BatchUpdateScoresRequest(
            leaderboard=board, updates=[pb.ScoreUpdate(user_id=u, score=1, request_id=f"batch-{u}") for u in pair]
        )
        expect_unavailable(
            f"BatchUpdateScores {board} with an n2 member",
            lambda batch=batch: client.lb.BatchUpdateScores(batch, timeout=T),
            problems,
        )
        retries.append((board, batch))
    assert not problems, "\n".join(problems)

    fresh_valkey.start()
    for board, request in retries:
        batch = isinstance(request, pb.BatchUpdateScoresRequest)
        call = client.lb.BatchUpdateScores if batch else client.lb.UpdateScore
        deadline = time.monotonic() + 10
        while True:
            try:
                r = call(request, timeout=T)
                break
            except grpc.RpcError as error:
                assert error.code() == UNAVAILABLE and time.monotonic() < deadline, error
                time.sleep(0.05)
        for update, result in zip(request.updates, r.results, strict=True) if batch else [(request, r)]:
            models[board][update.user_id] += update.score
            assert result.score == models[board][update.user_id], update
    for board, model in models.items():
        assert full_top(client, board) == (ranked(model, descending[board]), len(model))


def test_reads_while_a_node_is_down_reflect_a_removal_that_returned_before(
    split_client: Client, fresh_valkey: LocalValkey
) -> None:
    """docs/api.md: "once a call has returned, every later read reflects it" — also when a node is down."""
    client = split_client
    client.create("gone", boundaries=CUTS)
    stays, leaves = users_indexed_on("n1", "s", 1)[0], users_indexed_on("n1", "l", 1)[0]
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="gone", user_id=stays, score=5), timeout=T)  # s1, n1
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="gone", user_id=leaves, score=35), timeout=T)  # s4, n2
    assert client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard="gone", user_id=leaves), timeout=T).removed
    fresh_valkey.kill()
    r = client.lb.GetRank(pb.GetRankRequest(leaderboard="gone", user_id=stays), timeout=T)
    assert (r.entry.rank, r.total) == (1, 1)


# ---- a frozen node ----------------------------------------------------------------------------------------


def test_a_frozen_node_fails_the_calls_that_need_it_in_time_and_the_rest_serve(
    split_client: Client, fresh_valkey: LocalValkey
) -> None:
    client = split_client
    client.create("f", boundaries=CUTS)
    check_layout(client, "f")
    healthy = users_indexed_on("n1", "h", 3)  # index and shard on n1
    frozen = users_indexed_on("n2", "z", 2)  # index on n2
    model = {healthy[0]: 3, healthy[1]: 12, healthy[2]: 15, frozen[0]: 25, frozen[1]: 35}
    client.lb.BatchUpdateScores(
        pb.BatchUpdateScoresRequest(
            leaderboard="f", updates=[pb.ScoreUpdate(user_id=u, score=s) for u, s in model.items()]
        ),
        timeout=T,
    )
    assert full_top(client, "f") == (ranked(model), len(model))

    def rank_of(user: str) -> int:
        return rank_in(model, True, user)

    def healthy_write(n: int) -> float:
        """An update needing only n1, answered promptly and exactly although n2 is frozen; the write's seconds."""
        model[healthy[0]] -= 1  # stays in s1
        r, took = timed(
            lambda: client.lb.UpdateScore(
                pb.UpdateScoreRequest(leaderboard="f", user_id=healthy[0], score=-1, request_id=f"h{n}"), timeout=T
            )
        )
        assert not isinstance(r, grpc.RpcError), r
        assert (r.score, r.rank, r.applied) == (model[healthy[0]], rank_of(healthy[0]), True)
        assert took < 3.0, f"a write needing only n1 took {took:.2f}s while n2 was frozen"
        write_took = took
        r, took = timed(lambda: client.lb.GetRank(pb.GetRankRequest(leaderboard="f", user_id=healthy[2]), timeout=T))
        assert not isinstance(r, grpc.RpcError), r
        assert (r.entry.rank, r.total) == (rank_of(healthy[2]), len(model))
        assert took < 3.0, f"a read needing only n1 took {took:.2f}s while n2 was frozen"
        return write_took

    fresh_valkey.pause()
    unsettled = []
    with ThreadPoolExecutor(2) as pool:
        # Calls needing n2, one with a 1 s deadline and one with none, in flight while n1's calls are served.
        rid = "z-deadline"
        with_deadline = pool.submit(
            timed,
            lambda: client.lb.UpdateScore(
                pb.UpdateScoreRequest(leaderboard="f", user_id=frozen[0], score=1, request_id=rid), timeout=1.0
            ),
        )
        unsettled.append((frozen[0], 1, rid))
        no_deadline = pool.submit(
            timed, lambda: client.lb.GetRank(pb.GetRankRequest(leaderboard="f", user_id=frozen[1]))
        )
        healthy_write(0)
        error, took = with_deadline.result(timeout=15)
        assert isinstance(error, grpc.RpcError), "served by a frozen node"
        assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, UNAVAILABLE), error
        assert took < 3.0, f"a call with a 1 s deadline took {took:.2f}s"
        error, took = no_deadline.result(timeout=15)
        assert isinstance(error, grpc.RpcError), "served by a frozen node"
        assert error.code() == UNAVAILABLE and DOWN in (error.details() or ""), error
        assert took < 12.0, f"a call without a deadline took {took:.2f}s"

    # Calls one after another for a while, n2 still frozen: those needing n2 fail (at once while the router
    # remembers its timeout, DOWN_FOR, else within the node timeout); those needing only n1 keep being
    # served all along. A game backend retries its write with the same request id.
    rid = "z-again"
    unsettled.append((frozen[1], 1, rid))
    until, n = time.monotonic() + 2.5 * DOWN_FOR, 1
    while time.monotonic() < until:
        healthy_write(n)
        error, took = timed(
            lambda: client.lb.UpdateScore(
                pb.UpdateScoreRequest(leaderboard="f", user_id=frozen[1], score=1, request_id=rid)
            )
        )
        assert isinstance(error, grpc.RpcError), "served by a frozen node"
        assert error.code() == UNAVAILABLE and DOWN in (error.details() or ""), error
        assert took < 12.0, f"a write without a deadline took {took:.2f}s"
        n += 1

    fresh_valkey.resume()

    def serves_n2() -> bool:
        try:
            client.lb.GetRank(pb.GetRankRequest(leaderboard="f", user_id=frozen[0]), timeout=T)
        except grpc.RpcError as error:
            assert error.code() == UNAVAILABLE, error
            return False
        return True

    wait_for(serves_n2, 10, "the resumed node to serve")
    # The frozen node may have run the queued writes on resuming; the retries settle each exactly once.
    for user, delta, rid in unsettled:
        r = client.lb.UpdateScore(
            pb.UpdateScoreRequest(leaderboard="f", user_id=user, score=delta, request_id=rid), timeout=T
        )
        model[user] += delta
        assert r.score == model[user], rid
    assert full_top(client, "f") == (ranked(model), len(model))


def test_a_frozen_node_does_not_stop_calls_with_short_deadlines_that_do_not_need_it(
    split_client: Client, fresh_valkey: LocalValkey
) -> None:
    """docs/api.md: a node the call needs is down -> UNAVAILABLE, "other shards keep serving", whatever the
    deadline."""
    client = split_client
    client.create("short", boundaries=CUTS)
    healthy = users_indexed_on("n1", "h", 1)[0]
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="short", user_id=healthy, score=15), timeout=T)  # s2, n1
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="short", user_id="x", score=35), timeout=T)  # s4, n2
    fresh_valkey.pause()
    for _ in range(3):
        r = client.lb.GetRank(pb.GetRankRequest(leaderboard="short", user_id=healthy), timeout=1.0)
        assert (r.entry.rank, r.total) == (2, 2)
