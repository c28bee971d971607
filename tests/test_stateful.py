"""The router over real nodes against a plain sorted-list model (docs/api.md), driven by hypothesis.

One router per (sort order, operator) pair; every hypothesis example works on a fresh board with small
score ranges, so members cross shard boundaries often. Rules write (single, batch, with and without request
ids, retries of earlier ids with the same or another value, removals), read (rank, ranks, top pages, windows)
crash the boundary-crossing protocol at each step of `shard_node.MOVE_STEPS`, and rebalance the board (split,
merge, move, drain: CARVE jobs of docs/architecture.md, a few per example); after every step the whole board must
equal the model.

Jobs: a job may crash at any step (its step hook raising, as a dead runner). One left where writes still flow (the
source MIGRATING) is healed by a later rule, with writes, reads and crossing crashes in between: resumed, rolled
back, or rolled back as `repair` does (`finish_abandoned`). One left where the source refuses writes (frozen, or
committed and not yet active) is healed at once, as the CLI or a router's sweeper would.

Crashes: the step hook fires only after the index commit (docs/architecture.md write path step 2), so a crashed call's
update has happened; the model applies it. Until the member's next write the member may sit in two
shards or none (a write in flight), so every crash rule ends with a write for each member the crashed call
touched, and the invariants then require the board to be whole again.

Concurrent interleavings: two rules send 2-4 writes at once (gRPC futures issued back to back, in a drawn
order, spread over two routers on the same control plane and nodes) on 1-3 shared members: updates with and
without request ids, often crossing boundaries; the same request sent twice (applied once); the same request id
with another value (refused once the other is in); overlapping batches; removals racing updates. The history
must be linearizable. The index is the per-user point of linearisation (docs/architecture.md) and batches are
applied per update (docs/api.md), so the check is per member (linearizability is local): for each member,
some order of the calls that touched it (at most 4! orders) must give every answer each call got and the
score, or absence, the board then shows; with nothing in flight the index (GetRanks) must agree with the
shards (GetTop) through both routers. Ranks in concurrent answers may be off by one per member another call
of the group wrote (invariant 5 of docs/architecture.md); everywhere else they are exact. Who wins a race is
not up to hypothesis, so the group's members are then removed (and maybe re-added) to keep later draws
reproducible (see `settle`); a failure in a group
prints its calls and what each got, since a race seldom replays (hypothesis then reports it as Flaky).

Left unchecked, where docs/api.md does not pin the answer down: the rank in a duplicate's answer, the rank of a
member's non-final update within a batch, and retries of request ids from before a member's removal.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from _carving import CRASHED_LEASE, take_over
from _router import Client, RouterThread
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rankshard.shard_map import ControlPlane, InvalidArgument, Job, JobBusy, JobState, JobStep, ShardMap, ShardState
from rankshard.shard_node import (
    MOVE_STEPS,
    Carver,
    Cluster,
    connect_cluster,
    plan_merge,
    plan_move,
    plan_split,
)
from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc

# Bytewise order: "B" < "a" < "a-b" < "aa" < "é" (c3 a9) < "日本" (e6) < "Ａ" (ef bc a1) < "🏆" (f0).
USERS = ("a", "B", "aa", "a-b", "é", "日本", "Ａ", "🏆")
BOUNDARY_SETS = ((-20, 0, 10, 25), (-5, 5, 30))
NEAR_BOUNDARIES = (-21, -20, -19, -6, -5, -4, -1, 0, 1, 4, 5, 6, 9, 10, 11, 24, 25, 26, 29, 30, 31)
RAW_VALUES = st.one_of(st.integers(-40, 60), st.sampled_from(NEAR_BOUNDARIES))
REMOVAL_STEPS = ("intent_recorded", "source_removed", "intent_cleared")
DEDUP_DEPTH = 8  # docs/api.md: a request id is recognised while among the member's last 8 updates
TIMEOUT = 10.0
FAILED = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)

EXAMPLES = 40
STEPS = 30
JOBS = 2
"""Jobs per example at most (a drain counts each move): each costs a few tens of ms against the real cluster."""
MAX_SHARDS = 7
JOB_CALLS = 12
"""A job's step hook runs about 10 times (once per recorded step, plus progress and map switches)."""
HEALS = ("resume", "abort", "abandoned")
WRITES_FLOW = (JobStep.FLOOR, JobStep.COPY, JobStep.CATCHUP)
"""Steps at which a job left crashed keeps its source taking writes (MIGRATING on the node and in the map)."""
SHRINK = os.environ.get("RANKSHARD_SHRINK") == "1"
"""Shrinking a failure replays hundreds of runs against the real cluster (minutes on a slow machine), so it is
opt-in: a failure prints its whole step list; rerun with RANKSHARD_SHRINK=1 for a minimal one."""


class _SpuriousPollerErrors(logging.Filter):
    """grpc.aio with an event loop per router thread logs a harmless BlockingIOError from
    PollerCompletionQueue._handle_events whenever two loops wake for one event (grpc/grpc#25364)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, BlockingIOError) and "PollerCompletionQueue" in record.getMessage())


class Crash(Exception):
    """Raised by the step hook: a router dying at that point of the boundary-crossing protocol."""


class JobCrash(Exception):
    """Raised by a job's step hook: its runner dying right after recording that row."""


@dataclass
class Sent:
    """One update with a request id the board has applied (or deduplicated against)."""

    rid: str
    value: int
    score: int  # the result the first call gave


@dataclass
class Model:
    """The single sorted list of docs/api.md."""

    descending: bool
    operator: str
    scores: dict[str, int] = field(default_factory=dict)
    # Per member since it was last added: its updates in order, (request id or None, value, score).
    history: dict[str, list[Sent | None]] = field(default_factory=dict)

    def copy(self) -> Model:
        history = {u: list(h) for u, h in self.history.items()}
        return Model(self.descending, self.operator, dict(self.scores), history)

    def better(self, a: int, b: int) -> bool:
        return a > b if self.descending else a < b

    def ordered(self) -> list[tuple[str, int, int]]:
        """(user, score, rank) best first; ties by user id bytes."""

        def key(user: str) -> tuple[int, bytes]:
            return (-self.scores[user] if self.descending else self.scores[user], user.encode())

        return [(u, self.scores[u], self.rank_of_score(self.scores[u])) for u in sorted(self.scores, key=key)]

    def rank_of_score(self, score: int) -> int:
        return 1 + sum(1 for s in self.scores.values() if self.better(s, score))

    def find(self, user: str, rid: str) -> Sent | None:
        """The recorded update `rid` of `user`, if the board must still recognise it."""
        for sent in self.history.get(user, [])[-DEDUP_DEPTH:]:
            if sent is not None and sent.rid == rid:
                return sent
        return None

    def recognised(self, user: str) -> list[Sent]:
        return [s for s in self.history.get(user, [])[-DEDUP_DEPTH:] if s is not None]

    def apply(self, user: str, value: int, rid: str) -> tuple[str, int, bool]:
        """Applies one update; returns (kind, score, applied), kind 'upd' | 'dup' | 'conflict'."""
        if rid:
            sent = self.find(user, rid)
            if sent is not None:
                return ("dup", sent.score, False) if sent.value == value else ("conflict", 0, False)
        old = self.scores.get(user)
        applied = True
        if old is None:
            new = value
        elif self.operator == "increment":
            new = old + value
        elif self.operator == "best":
            new, applied = (value, True) if self.better(value, old) else (old, False)
        else:
            new = value
        self.scores[user] = new
        self.history.setdefault(user, []).append(Sent(rid, value, new) if rid else None)
        return "upd", new, applied

    def remove(self, user: str) -> bool:
        self.history.pop(user, None)  # a re-added member's old request ids are not retried (docs/api.md is silent)
        return self.scores.pop(user, None) is not None


@dataclass
class Op:
    """One call of a concurrent group."""

    kind: str  # "update" | "batch" | "remove"
    items: list[tuple[str, int, str]]  # (user, value, request id); a removal: [(user, 0, "")]
    via: int  # the router it goes through: 0 or 1

    def members(self) -> list[str]:
        return list(dict.fromkeys(u for u, _, _ in self.items))


@dataclass
class Outcome:
    """What one concurrent call got: an answer, or FAILED_PRECONDITION and its message."""

    answer: object = None
    code: grpc.StatusCode | None = None
    details: str = ""

    def results(self) -> list[tuple[int, int, bool]]:
        """(score, rank, applied) per update, in request order."""
        if isinstance(self.answer, pb.UpdateScoreResponse):
            return [(self.answer.score, self.answer.rank, self.answer.applied)]
        return [(r.score, r.rank, r.applied) for r in self.answer.results]  # type: ignore[attr-defined]


CONFLICT_AT = re.compile(r"^(?:updates\[(\d+)\]\.)?request_id\b")
CONCURRENT_KINDS = ("update", "update", "batch", "remove", "resend")
CONCURRENT_RID_MODES = ("none", "fresh", "retry_same", "retry_other", "twin", "twin", "twin_other")


def conflict_index(details: str) -> int:
    """The update a FAILED_PRECONDITION message names (docs/api.md: every message names the field at fault)."""
    found = CONFLICT_AT.match(details)
    assert found, f"a request id conflict that names no update: {details!r}"
    return int(found.group(1) or 0)


def other_than(taken: int, value: int) -> int:
    return value if value != taken else value + 1


def entries(es) -> list[tuple[str, int, int]]:
    return [(e.user_id, e.score, e.rank) for e in es]


def expect_code(codes: tuple[grpc.StatusCode, ...], call: Callable[[], object]) -> grpc.RpcError:
    try:
        answer = call()
    except grpc.RpcError as exc:
        assert exc.code() in codes, f"{exc.code()}: {exc.details()}"
        return exc
    raise AssertionError(f"expected {codes}, got {answer!r}")


class BoardMachine(RuleBasedStateMachine):
    """Set by the test: the serving router, a client, and the board kind every example uses."""

    router: RouterThread
    client: Client
    client2: Client  # a second router over the same control plane and nodes (concurrent calls only)
    order: str
    operator: str
    loop: asyncio.AbstractEventLoop  # the jobs' runner: the control plane and the nodes, as the CLI holds them
    cp: ControlPlane
    cluster: Cluster
    rids = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.model = Model(self.order == "desc", self.operator)
        self.board = ""
        self.boundaries: tuple[int, ...] = ()
        self.jobs = 0
        self.crashed: Job | None = None

    # ---- helpers -------------------------------------------------------------------------------

    @property
    def lb(self) -> leaderboard_pb2_grpc.LeaderboardStub:
        return self.client.lb

    def fresh_rid(self) -> str:
        n = next(self.rids)
        return f"req-{n}" if n % 3 else f"rq·{n}"  # some multibyte request ids too

    def value(self, raw: int) -> int:
        """Increments are deltas: centre them so scores keep crossing boundaries instead of drifting up."""
        return raw - 10 if self.operator == "increment" else raw

    def shard_of(self, score: int) -> int:
        return bisect.bisect_right(self.boundaries, score)

    def update(self, user: str, value: int, rid: str = "") -> pb.UpdateScoreResponse:
        request = pb.UpdateScoreRequest(leaderboard=self.board, user_id=user, score=value)
        if rid:
            request.request_id = rid
        return self.lb.UpdateScore(request, timeout=TIMEOUT)

    def batch(self, updates: list[tuple[str, int, str]]) -> pb.BatchUpdateScoresResponse:
        request = pb.BatchUpdateScoresRequest(
            leaderboard=self.board,
            updates=[pb.ScoreUpdate(user_id=u, score=v, request_id=r) for u, v, r in updates],
        )
        return self.lb.BatchUpdateScores(request, timeout=TIMEOUT)

    def remove_call(self, user: str) -> bool:
        request = pb.RemoveMemberRequest(leaderboard=self.board, user_id=user)
        return self.lb.RemoveMember(request, timeout=TIMEOUT).removed

    def check_update(self, user: str, value: int, rid: str, slack: int = 0) -> None:
        """One UpdateScore call, checked against the model and then applied to it. `slack`: how many
        other members' writes are still in flight (each may put the rank off by one: invariant 5 of
        docs/architecture.md)."""
        trial = self.model.copy()
        kind, score, applied = trial.apply(user, value, rid)
        if kind == "conflict":
            expect_code((grpc.StatusCode.FAILED_PRECONDITION,), lambda: self.update(user, value, rid))
            return
        answer = self.update(user, value, rid)
        self.model = trial
        assert (answer.score, answer.applied) == (score, applied), (kind, answer)
        if kind != "dup":  # a duplicate returns the first call's score; its rank then is not pinned down
            rank = trial.rank_of_score(score)
            assert abs(answer.rank - rank) <= slack, (rank, slack, answer)

    def check_batch(self, updates: list[tuple[str, int, str]]) -> None:
        trial = self.model.copy()
        expected = [trial.apply(u, v, r) for u, v, r in updates]
        if any(kind == "conflict" for kind, _, _ in expected):
            expect_code((grpc.StatusCode.FAILED_PRECONDITION,), lambda: self.batch(updates))
            return
        answer = self.batch(updates)
        self.model = trial
        assert len(answer.results) == len(updates)
        last = {u: i for i, (u, _, _) in enumerate(updates)}
        for i, ((user, _, _), (kind, score, applied), got) in enumerate(
            zip(updates, expected, answer.results, strict=True)
        ):
            assert (got.score, got.applied) == (score, applied), (i, updates, answer)
            # A member's rank after the call is pinned down for its last update in the batch.
            if last[user] == i and trial.scores.get(user) == score and kind != "dup":
                assert got.rank == trial.rank_of_score(score), (i, updates, answer)

    def check_remove(self, user: str) -> None:
        expected = self.model.remove(user)
        assert self.remove_call(user) is expected

    def check_member(self, user: str) -> None:
        self.get_rank(user)
        self.get_around(user, 3)

    def draw_update(
        self, data: st.DataObject, user: str, raw: int, rid_mode: str, model: Model | None = None
    ) -> tuple[int, str]:
        """(value, request id) for an update of `user`: none, fresh, or a retry of an id that `model` (by
        default the board's) must recognise. Ids past the window are never retried: docs/api.md only says
        when an id is recognised, not when it must be forgotten."""
        value = self.value(raw)
        sent = (model or self.model).recognised(user)
        if rid_mode == "none":
            return value, ""
        if rid_mode == "fresh" or not sent:
            return value, self.fresh_rid()
        first = data.draw(st.sampled_from(sent), label=f"retried request of {user!r}")
        if rid_mode == "retry_same":
            return first.value, first.rid
        other = value if value != first.value else value + 1
        return other, first.rid

    # ---- setup ---------------------------------------------------------------------------------

    # Key layouts (see shard_map.Buckets): the default; one hash per slot and node for everything (every
    # member shares its index and version hashes); far more hashes than members.
    @initialize(boundaries=st.sampled_from(BOUNDARY_SETS), expected=st.sampled_from((0, 50, 10**9)))
    def create_board(self, boundaries: tuple[int, ...], expected: int) -> None:
        self.board = f"sm-{self.order}-{self.operator}-{uuid.uuid4().hex[:12]}"
        self.boundaries = boundaries
        self.client.create(self.board, self.order, self.operator, boundaries, expected)

    # ---- writes --------------------------------------------------------------------------------

    @rule(
        data=st.data(),
        user=st.sampled_from(USERS),
        raw=RAW_VALUES,
        rid_mode=st.sampled_from(("none", "fresh", "fresh", "retry_same", "retry_other")),
    )
    def update_score(self, data: st.DataObject, user: str, raw: int, rid_mode: str) -> None:
        value, rid = self.draw_update(data, user, raw, rid_mode)
        self.check_update(user, value, rid)

    @rule(
        data=st.data(),
        items=st.lists(
            st.tuples(
                st.sampled_from(USERS),
                RAW_VALUES,
                st.sampled_from(("none", "fresh", "fresh", "retry_same", "in_batch_same")),
            ),
            min_size=1,
            max_size=6,
        ),
        repeat=st.booleans(),
        conflict=st.sampled_from((False, False, False, True)),
    )
    def batch_update(
        self, data: st.DataObject, items: list[tuple[str, int, str]], repeat: bool, conflict: bool
    ) -> None:
        # Request ids are drawn against the board as the batch leaves it at that point (`trial`).
        trial = self.model.copy()
        updates: list[tuple[str, int, str]] = []
        for user, raw, mode in items:
            if mode == "in_batch_same":
                mode = "retry_same" if any(u == user and r for u, _, r in updates) else "fresh"
            updates.append((user, *self.draw_update(data, user, raw, mode, trial)))
            trial.apply(*updates[-1])
        if repeat:  # the same user twice, on purpose
            user = updates[0][0]
            raw = data.draw(RAW_VALUES, label="repeated user's value")
            updates.append((user, *self.draw_update(data, user, raw, "fresh")))
            trial.apply(*updates[-1])
        if conflict:  # one more update, reusing a request id its member still has with another value
            user = updates[-1][0]
            if sent := trial.recognised(user):
                first = data.draw(st.sampled_from(sent), label="reused request id")
                updates.append((user, first.value + 1, first.rid))
        self.check_batch(updates)

    @rule(user=st.sampled_from(USERS))
    def remove_member(self, user: str) -> None:
        self.check_remove(user)

    # ---- reads ---------------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS))
    def get_rank(self, user: str) -> None:
        request = pb.GetRankRequest(leaderboard=self.board, user_id=user)
        if user not in self.model.scores:
            expect_code((grpc.StatusCode.NOT_FOUND,), lambda: self.lb.GetRank(request, timeout=TIMEOUT))
            return
        answer = self.lb.GetRank(request, timeout=TIMEOUT)
        total = len(self.model.scores)
        rank = self.model.rank_of_score(self.model.scores[user])
        assert (answer.entry.user_id, answer.entry.score, answer.entry.rank) == (user, self.model.scores[user], rank)
        assert answer.total == total
        assert answer.percentile == pytest.approx(100.0 * (total - rank) / total)

    @rule(users=st.lists(st.sampled_from((*USERS, "nobody")), max_size=10))
    def get_ranks(self, users: list[str]) -> None:
        answer = self.lb.GetRanks(pb.GetRanksRequest(leaderboard=self.board, user_ids=users), timeout=TIMEOUT)
        wanted = set(users)
        assert entries(answer.entries) == [e for e in self.model.ordered() if e[0] in wanted]

    @rule(offset=st.integers(0, 10), limit=st.integers(0, 12))
    def get_top(self, offset: int, limit: int) -> None:
        request = pb.GetTopRequest(leaderboard=self.board, offset=offset, limit=limit)
        answer = self.lb.GetTop(request, timeout=TIMEOUT)
        n = limit or 10
        assert entries(answer.entries) == self.model.ordered()[offset : offset + n]
        assert answer.total == len(self.model.scores)

    @rule(user=st.sampled_from(USERS), radius=st.integers(0, 8))
    def get_around(self, user: str, radius: int) -> None:
        request = pb.GetAroundRequest(leaderboard=self.board, user_id=user, radius=radius)
        if user not in self.model.scores:
            expect_code((grpc.StatusCode.NOT_FOUND,), lambda: self.lb.GetAround(request, timeout=TIMEOUT))
            return
        answer = self.lb.GetAround(request, timeout=TIMEOUT)
        ordered = self.model.ordered()
        at = [u for u, _, _ in ordered].index(user)
        r = radius or 4
        assert entries(answer.entries) == ordered[max(0, at - r) : at + r + 1]
        assert answer.total == len(ordered)

    @invariant()
    def whole_board_is_the_sorted_list(self) -> None:
        if not self.board:
            return
        answer = self.lb.GetTop(pb.GetTopRequest(leaderboard=self.board, limit=1000), timeout=TIMEOUT)
        assert entries(answer.entries) == self.model.ordered()
        assert answer.total == len(self.model.scores)

    # ---- crashes in the boundary-crossing protocol ----------------------------------------------

    def crash_at(self, step: str, call: Callable[[], object]) -> bool:
        """Runs `call` with a one-shot hook that raises at `step`; True if it fired (and the call failed)."""
        fired: list[str] = []

        def hook(name: str) -> None:
            if name == step and not fired:
                fired.append(name)
                raise Crash(step)

        self.router.hook = hook
        try:
            try:
                answer = call()
            except grpc.RpcError as exc:
                assert fired, f"failed without the crash: {exc.code()}: {exc.details()}"
                assert exc.code() in FAILED, f"{exc.code()}: {exc.details()}"
                return True
            assert not fired, f"crashed at {step} yet answered {answer!r}"
            return False
        finally:
            self.router.hook = None

    def crossing_values(self, user: str) -> list[int]:
        """Values that move `user` into another shard under the board's operator."""
        score = self.model.scores[user]
        here = self.shard_of(score)
        targets = [t for t in range(-40, 61) if self.shard_of(t) != here]
        if self.operator == "best":
            targets = [t for t in targets if self.model.better(t, score)]
        return [t - score if self.operator == "increment" else t for t in targets]

    def repair(self, data: st.DataObject, user: str, crashed: tuple[int, str] | None, slack: int = 0) -> None:
        """The member's next write after a crash: a retry of the crashed request, of an older one, a new
        update (with or without a request id) or a removal. Each must roll the pending move forward."""
        crashed_rid = crashed[1] if crashed else None
        older = [s for s in self.model.recognised(user) if s.rid != crashed_rid]
        modes = ["fresh", "none", "remove"] + ["retry_crashed"] * bool(crashed) + ["retry_older"] * bool(older)
        mode = data.draw(st.sampled_from(modes), label=f"repair of {user!r}")
        if mode == "remove":
            self.check_remove(user)
        elif mode == "retry_crashed":
            self.check_update(user, *crashed, slack=slack)
        elif mode == "retry_older":
            sent = data.draw(st.sampled_from(older), label="older request retried")
            self.check_update(user, sent.value, sent.rid, slack=slack)
        else:
            value = self.value(data.draw(RAW_VALUES, label="repair value"))
            self.check_update(user, value, self.fresh_rid() if mode == "fresh" else "", slack=slack)

    @precondition(lambda self: bool(self.boundaries and self.model.scores))
    @rule(data=st.data(), step=st.sampled_from(MOVE_STEPS))
    def crash_crossing_update(self, data: st.DataObject, step: str) -> None:
        user = data.draw(st.sampled_from(sorted(self.model.scores)), label="crossing member")
        values = self.crossing_values(user)
        if not values:  # a BEST member already in the best shard: crash a removal instead
            return self.crash_removal(data, user, data.draw(st.sampled_from(REMOVAL_STEPS), label="removal step"))
        value, rid = data.draw(st.sampled_from(values), label="crossing value"), self.fresh_rid()
        assert self.crash_at(step, lambda: self.update(user, value, rid)), "the update never reached the step"
        self.model.apply(user, value, rid)  # committed on the index before any step hook runs
        self.repair(data, user, (value, rid))
        self.check_member(user)

    @precondition(lambda self: bool(self.model.scores))
    @rule(data=st.data(), step=st.sampled_from(REMOVAL_STEPS))
    def crash_remove(self, data: st.DataObject, step: str) -> None:
        user = data.draw(st.sampled_from(sorted(self.model.scores)), label="removed member")
        self.crash_removal(data, user, step)

    def crash_removal(self, data: st.DataObject, user: str, step: str) -> None:
        assert self.crash_at(step, lambda: self.remove_call(user)), "the removal never reached the step"
        self.model.remove(user)
        self.repair(data, user, None)
        self.check_member(user)

    @precondition(lambda self: bool(self.boundaries and self.model.scores))
    @rule(
        data=st.data(),
        step=st.sampled_from(MOVE_STEPS),
        others=st.lists(st.tuples(st.sampled_from(USERS), RAW_VALUES), max_size=4),
        retry_whole=st.booleans(),
    )
    def crash_crossing_batch(
        self, data: st.DataObject, step: str, others: list[tuple[str, int]], retry_whole: bool
    ) -> None:
        """A batch whose first update crosses a boundary, with other members' updates (any kind) beside it.
        (Not the crossing member's: a second update of it in the same call may cancel the move.)"""
        user = data.draw(st.sampled_from(sorted(self.model.scores)), label="crossing member")
        values = self.crossing_values(user)
        if not values:
            return
        updates = [(user, data.draw(st.sampled_from(values), label="crossing value"), self.fresh_rid())]
        updates += [(u, self.value(raw), self.fresh_rid()) for u, raw in others if u != user]
        assert self.crash_at(step, lambda: self.batch(updates)), "the batch never reached the step"
        for u, v, r in updates:
            self.model.apply(u, v, r)
        touched = list(dict.fromkeys(u for u, _, _ in updates))
        if retry_whole:  # the client's retry of the whole call: every update is a duplicate
            self.check_batch(updates)
        else:
            for i, u in enumerate(touched):
                last = [(v, r) for uu, v, r in updates if uu == u][-1]
                self.repair(data, u, last, slack=len(touched) - 1 - i)
        # Only now is no write in flight: every member the crashed call touched has been written again.
        for u in touched:
            self.check_member(u)

    # ---- rebalancing jobs ------------------------------------------------------------------------

    def shard_map(self) -> ShardMap:
        return self.loop.run_until_complete(self.cp.shard_map(self.board))

    def run_job(self, job: Job, crash_at: int | None = None) -> Job | None:
        """Runs `job`; with `crash_at`, its step hook raises at that call. Returns the row the crash left, or None
        when the job ran to its end first (DONE)."""
        calls: list[Job] = []

        def hook(row: Job) -> None:
            calls.append(row)
            if len(calls) - 1 == crash_at:
                raise JobCrash(row.step)

        # A crashed runner's lease lapses soon after: `finish_abandoned` may take its job over.
        lease = CRASHED_LEASE if crash_at is not None else 30.0
        carver = Carver(self.cp, self.cluster, "stateful", lease_s=lease, on_step=hook)
        try:
            done = self.loop.run_until_complete(carver.run(job))
        except JobCrash:
            return calls[-1]
        assert (done.state, done.step) == (JobState.DONE, JobStep.DONE), done
        return None

    def heal(self, job: Job, how: str) -> None:
        """Ends a crashed job as `how` says (an abort is a resume once committed); a router's sweeper may finish
        a committed one first."""
        carver = Carver(self.cp, self.cluster, "stateful")
        committed = job.step.committed
        try:
            if how == "resume" or (how == "abort" and committed):
                self.loop.run_until_complete(carver.run(job))
            elif how == "abort":
                self.loop.run_until_complete(carver.abort(job))
            else:
                self.loop.run_until_complete(take_over(self.cp, self.cluster, job))
        except JobBusy:
            assert committed, job  # only a router's sweeper takes jobs over, and only committed ones
        row = self.wait_job_ended(job)
        assert row.state is (JobState.DONE if how == "resume" or committed else JobState.ABORTED), row
        self.after_jobs()

    def wait_job_ended(self, job: Job) -> Job:
        async def ended() -> Job:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    row = await self.cp.jobs.get(job.id)
                    if row.state is not JobState.RUNNING:
                        return row
                    await asyncio.sleep(0.05)

        return self.loop.run_until_complete(ended())

    def after_jobs(self) -> None:
        """The cuts crossings are judged by follow the map; with no job left, every shard is ACTIVE."""
        current = self.shard_map()
        self.boundaries = current.boundaries
        assert all(s.state is ShardState.ACTIVE for s in current.shards), current

    def plan_job(self, data: st.DataObject, kind: str) -> Job | None:
        """A job of `kind` drawn against the board as it is; None when none fits (a shard without two scores to
        cut between, a single shard, too many shards)."""
        shards = self.shard_map().shards
        if kind == "merge":
            if len(shards) < 2:
                return None
            i = data.draw(st.integers(0, len(shards) - 2), label="merged pair")
            return self.loop.run_until_complete(
                plan_merge(self.cp, self.cluster, self.board, shards[i].id, shards[i + 1].id, "stateful", 30)
            )
        shard = data.draw(st.sampled_from(shards), label="shard")
        if kind == "move":
            to = "n2" if shard.node == "n1" else "n1"
            return self.loop.run_until_complete(plan_move(self.cp, self.board, shard.id, to, "stateful", 30))
        inside = sorted({v for v in self.model.scores.values() if shard.holds(v)})
        if len(shards) >= MAX_SHARDS or len(inside) < 2:
            return None
        cut = data.draw(st.sampled_from(inside[1:]), label="cut")
        try:
            return self.loop.run_until_complete(
                plan_split(self.cp, self.cluster, self.board, shard.id, cut, "stateful", 30)
            )
        except InvalidArgument as exc:
            raise AssertionError(f"a cut at {cut} between members of {shard} was refused: {exc}") from exc

    @precondition(lambda self: bool(self.board) and self.crashed is None and self.jobs < JOBS)
    @rule(
        data=st.data(),
        kind=st.sampled_from(("split", "split", "merge", "move")),
        crash=st.sampled_from((None, *range(JOB_CALLS))),
        how=st.sampled_from(HEALS),
    )
    def rebalance(self, data: st.DataObject, kind: str, crash: int | None, how: str) -> None:
        job = self.plan_job(data, kind)
        if job is None:
            return
        self.jobs += 1
        left = self.run_job(job, crash)
        if left is None:
            self.after_jobs()
        elif left.step in WRITES_FLOW or (left.step is JobStep.FREEZE and left.freeze_ms is None):
            self.crashed = left  # healed by `heal_job`, later
        else:  # the source refuses writes until the job goes on (or back): heal it now
            self.heal(left, how)

    @precondition(lambda self: self.crashed is not None)
    @rule(how=st.sampled_from(HEALS))
    def heal_job(self, how: str) -> None:
        assert self.crashed is not None
        job, self.crashed = self.crashed, None
        self.heal(job, how)

    @precondition(lambda self: bool(self.board) and self.crashed is None and self.jobs < JOBS)
    @rule(node=st.sampled_from(("n1", "n2")))
    def drain(self, node: str) -> None:
        """Every shard on `node` moved to the other one."""
        for shard in [s for s in self.shard_map().shards if s.node == node]:
            self.jobs += 1
            to = "n2" if node == "n1" else "n1"
            self.run_job(self.loop.run_until_complete(plan_move(self.cp, self.board, shard.id, to, "stateful", 30)))
        self.after_jobs()

    def teardown(self) -> None:
        if self.crashed is not None:
            self.heal(self.crashed, "abort")

    # ---- concurrent interleavings ---------------------------------------------------------------

    @rule(
        data=st.data(),
        size=st.integers(2, 4),
        pool=st.lists(st.sampled_from(USERS), min_size=1, max_size=3, unique=True),
    )
    def concurrent_writes(self, data: st.DataObject, size: int, pool: list[str]) -> None:
        """2-4 writes on the members of `pool`, sent at once; the history must be linearizable."""
        ops: list[Op] = []
        for _ in range(size):
            kind = data.draw(st.sampled_from(CONCURRENT_KINDS if ops else CONCURRENT_KINDS[:-1]), label="call")
            via = data.draw(st.integers(0, 1), label="router")
            if kind == "resend":  # the same request again, as a client's retry racing the original
                resent = data.draw(st.sampled_from(ops), label="resent call")
                ops.append(Op(resent.kind, list(resent.items), via))
            elif kind == "remove":
                ops.append(Op("remove", [(data.draw(st.sampled_from(pool), label="removed"), 0, "")], via))
            else:
                size_of = 1 if kind == "update" else data.draw(st.integers(1, 3), label="batch size")
                items: list[tuple[str, int, str]] = []
                for _ in range(size_of):
                    earlier = [i for op in ops if op.kind != "remove" for i in op.items] + items
                    items.append(self.draw_concurrent_item(data, pool, earlier))
                ops.append(Op(kind, items, via))
        self.run_concurrently(data, ops)

    @rule(
        data=st.data(),
        pool=st.lists(st.sampled_from(USERS), min_size=1, max_size=3, unique=True),
        batch=st.booleans(),
        copies=st.lists(st.sampled_from(("same", "same", "other_value", "part")), min_size=1, max_size=3),
    )
    def concurrent_retries(self, data: st.DataObject, pool: list[str], batch: bool, copies: list[str]) -> None:
        """A call and 1-3 copies of it racing it (a client retrying too soon, through any router): the same
        request ids with the same values (each update applied once), with one value changed (refused), or
        part of a batch."""
        size = data.draw(st.integers(2, 4), label="batch size") if batch else 1
        items: list[tuple[str, int, str]] = []
        for _ in range(size):
            user, value, rid = self.draw_concurrent_item(data, pool, items)
            items.append((user, value, rid or self.fresh_rid()))
        ops = [Op("batch" if batch else "update", items, data.draw(st.integers(0, 1), label="router"))]
        for copy in copies:
            via = data.draw(st.integers(0, 1), label="router")
            if copy == "same":
                ops.append(Op(ops[0].kind, list(items), via))
            elif copy == "other_value":
                k = data.draw(st.integers(0, size - 1), label="changed update")
                user, value, rid = items[k]
                ops.append(Op(ops[0].kind, [*items[:k], (user, value + 1, rid), *items[k + 1 :]], via))
            else:
                part = data.draw(st.lists(st.sampled_from(range(size)), min_size=1, unique=True), label="part")
                ops.append(Op("batch", [items[k] for k in sorted(part)], via))
        self.run_concurrently(data, ops)

    def run_concurrently(self, data: st.DataObject, ops: list[Op]) -> None:
        """Sends `ops` at once, checks the history is linearizable and moves the model to it."""
        ops = self.without_unpinned_ids(ops)

        stubs = (self.client.lb, self.client2.lb)
        sent = data.draw(st.permutations(range(len(ops))), label="order sent")  # a copy may leave first
        futures = {j: self.send_future(stubs[ops[j].via], ops[j]) for j in sent}
        outcomes = [self.outcome_of(op, futures[j]) for j, op in enumerate(ops)]

        members = list(dict.fromkeys(u for op in ops for u, _, _ in op.items))
        before = {u: (self.model.scores.get(u), [(r.rid, r.value) for r in self.model.recognised(u)]) for u in members}
        reader = data.draw(st.integers(0, 1), label="reading router")
        try:
            top = stubs[reader].GetTop(pb.GetTopRequest(leaderboard=self.board, limit=1000), timeout=TIMEOUT)
            observed = {e.user_id: e.score for e in top.entries}
            kinds: dict[tuple[int, int], str] = {}
            for user in members:
                kinds.update(self.linearize(user, ops, outcomes, observed.get(user)))
            self.check_concurrent_ranks(ops, outcomes, kinds)
            # Nothing in flight now: the index (GetRanks reads scores there) agrees with the shards, via both routers.
            self.get_ranks(list(USERS))
            again = stubs[1 - reader].GetTop(pb.GetTopRequest(leaderboard=self.board, limit=1000), timeout=TIMEOUT)
            assert entries(again.entries) == self.model.ordered()
        except AssertionError as exc:
            # A race seldom replays the same way, so hypothesis may not print the steps: say what ran here.
            lines = [f"{exc}", f"after these calls, sent in the order {list(sent)} (members before: {before}):"]
            for j, (op, outcome) in enumerate(zip(ops, outcomes, strict=True)):
                got = (
                    f"{outcome.code.name}: {outcome.details}"
                    if outcome.code is not None
                    else outcome.answer.removed
                    if op.kind == "remove"  # type: ignore[attr-defined]
                    else outcome.results()
                )
                lines.append(f"  call {j} via router {op.via}: {op.kind} {op.items} -> {got}")
            raise AssertionError("\n".join(lines)) from exc
        self.settle(data, members)

    def settle(self, data: st.DataObject, users: list[str]) -> None:
        """Puts the group's members in a state that depends on drawn data only: removed, then maybe re-added.
        Which order won a race is not up to hypothesis, and later rules draw from the model (its members,
        scores and request ids): left as the race put it, the same choices would replay as other draws,
        which hypothesis refuses (FlakyStrategyDefinition). Every draw here is made whatever the state."""
        for user in users:
            self.check_remove(user)
            value = self.value(data.draw(RAW_VALUES, label="re-added value"))
            if data.draw(st.booleans(), label="re-added"):
                self.check_update(user, value, self.fresh_rid())

    def draw_concurrent_item(
        self, data: st.DataObject, pool: list[str], earlier: list[tuple[str, int, str]]
    ) -> tuple[str, int, str]:
        """One update of a concurrent call: often a boundary-crossing value, often a request id that another
        call of the group (or an earlier call the board still recognises) has, with the same value or not."""
        user = data.draw(st.sampled_from(pool), label="member")
        crossing = self.crossing_values(user) if self.boundaries and user in self.model.scores else []
        if crossing and data.draw(st.booleans(), label="crossing"):
            value = data.draw(st.sampled_from(crossing), label="crossing value")
        else:
            value = self.value(data.draw(RAW_VALUES, label="value"))
        mode = data.draw(st.sampled_from(CONCURRENT_RID_MODES), label="request id")
        if mode == "none":
            return user, value, ""
        if mode.startswith("twin") and (twins := [(v, r) for u, v, r in earlier if u == user and r]):
            first_value, rid = data.draw(st.sampled_from(twins), label="twin")
            return user, first_value if mode == "twin" else other_than(first_value, value), rid
        if mode.startswith("retry") and (sent := self.model.recognised(user)):
            first = data.draw(st.sampled_from(sent), label="retried request")
            return user, first.value if mode == "retry_same" else other_than(first.value, value), first.rid
        return user, value, self.fresh_rid()

    def without_unpinned_ids(self, ops: list[Op]) -> list[Op]:
        """Rewrites request ids whose answer docs/api.md (or the model) leaves open in some order of the group:
        ids reused across a removal of their member, and ids a group could push out of the model's window
        (which counts every update, while the board counts only those with an id: the board remembers longer)."""
        removed = {op.items[0][0] for op in ops if op.kind == "remove"}
        updates = Counter(u for op in ops if op.kind != "remove" for u, _, _ in op.items)
        uses = Counter((u, r) for op in ops if op.kind != "remove" for u, _, r in op.items if r)
        new: dict[tuple[str, str], str] = {}
        for user, rid in uses:
            history = self.model.history.get(user, [])
            age = {s.rid: len(history) - k for k, s in enumerate(history) if s is not None}  # 1: the newest
            if updates[user] > DEDUP_DEPTH:
                new[(user, rid)] = ""
            elif user in removed and (rid in age or uses[(user, rid)] > 1):
                new[(user, rid)] = ""
            elif rid in age and age[rid] + updates[user] > DEDUP_DEPTH + 1:
                new[(user, rid)] = self.fresh_rid()
        return [Op(op.kind, [(u, v, new.get((u, r), r) if r else "") for u, v, r in op.items], op.via) for op in ops]

    def send_future(self, lb: leaderboard_pb2_grpc.LeaderboardStub, op: Op) -> grpc.Future:
        if op.kind == "remove":
            request = pb.RemoveMemberRequest(leaderboard=self.board, user_id=op.items[0][0])
            return lb.RemoveMember.future(request, timeout=TIMEOUT)
        if op.kind == "update":
            user, value, rid = op.items[0]
            update = pb.UpdateScoreRequest(leaderboard=self.board, user_id=user, score=value)
            if rid:
                update.request_id = rid
            return lb.UpdateScore.future(update, timeout=TIMEOUT)
        batch = pb.BatchUpdateScoresRequest(
            leaderboard=self.board,
            updates=[pb.ScoreUpdate(user_id=u, score=v, request_id=r) for u, v, r in op.items],
        )
        return lb.BatchUpdateScores.future(batch, timeout=TIMEOUT)

    @staticmethod
    def outcome_of(op: Op, future: grpc.Future) -> Outcome:
        try:
            answer = future.result()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
            # The only error a concurrent write may get here: its request id came with another value.
            assert op.kind != "remove" and code == grpc.StatusCode.FAILED_PRECONDITION, (op, code, details)
            return Outcome(code=code, details=details)
        outcome = Outcome(answer)
        if op.kind != "remove":
            assert len(outcome.results()) == len(op.items), (op, answer)
        return outcome

    def linearize(
        self, user: str, ops: list[Op], outcomes: list[Outcome], observed: int | None
    ) -> dict[tuple[int, int], str]:
        """Finds an order of the calls that touched `user` giving every answer they got and the score the
        board shows (`observed`, None: absent), and moves the model's `user` to it. Returns the kind
        ('upd' | 'dup') of each of the member's applied updates in that order, by (call, update)."""
        units = [(j, [i for i, (u, _, _) in enumerate(op.items) if u == user]) for j, op in enumerate(ops)]
        units = [(j, idx) for j, idx in units if idx]
        base = Model(self.model.descending, self.model.operator)
        if user in self.model.scores:
            base.scores[user] = self.model.scores[user]
        base.history[user] = list(self.model.history.get(user, []))
        for order in itertools.permutations(units):
            for picks in itertools.product(*(self.ways(user, ops[j], outcomes[j]) for j, _ in order)):
                sim, kinds = base.copy(), {}
                replayed = all(
                    self.replay(sim, user, j, idx, ops[j], outcomes[j], pick, kinds)
                    for (j, idx), pick in zip(order, picks, strict=True)
                )
                if replayed and sim.scores.get(user) == observed:
                    # The first order that fits. (Others may differ in request ids; `settle` forgets them.)
                    self.model.scores.pop(user, None)
                    self.model.scores.update(sim.scores)
                    self.model.history[user] = sim.history.get(user, [])
                    return kinds
        raise AssertionError(f"no order of the concurrent calls explains {user!r} as the board shows it: {observed!r}")

    @staticmethod
    def ways(user: str, op: Op, outcome: Outcome) -> tuple[str, ...]:
        """How a call may have gone for `user`: 'do' (applied), 'conflict' (refused), 'skip' (not applied)."""
        if outcome.code is None:
            return ("do",)
        if op.items[conflict_index(outcome.details)][0] == user:
            return ("conflict",)  # its index node's share of the call was refused as a whole
        # Another member's update was refused; a batch spanning index nodes may have been applied on the others.
        return ("skip",) if "nothing was applied" in outcome.details else ("skip", "do")

    @staticmethod
    def replay(
        sim: Model,
        user: str,
        j: int,
        idx: list[int],
        op: Op,
        outcome: Outcome,
        way: str,
        kinds: dict[tuple[int, int], str],
    ) -> bool:
        """Applies call `j`'s updates `idx` of `user` (or its removal) to `sim` the `way` given; False if
        that does not give what the call got."""
        if op.kind == "remove":
            return sim.remove(user) is outcome.answer.removed  # type: ignore[attr-defined]
        if way == "skip":
            return True
        trial = sim.copy()
        got = [trial.apply(*op.items[i]) for i in idx]
        if way == "conflict":
            return got[idx.index(conflict_index(outcome.details))][0] == "conflict"
        if any(kind == "conflict" for kind, _, _ in got):
            return False
        if outcome.code is None:
            answers = outcome.results()
            if any(
                (score, applied) != (answers[i][0], answers[i][2])
                for i, (_, score, applied) in zip(idx, got, strict=True)
            ):
                return False
        sim.scores, sim.history = trial.scores, trial.history
        kinds.update({(j, i): kind for i, (kind, _, _) in zip(idx, got, strict=True)})
        return True

    def check_concurrent_ranks(self, ops: list[Op], outcomes: list[Outcome], kinds: dict[tuple[int, int], str]) -> None:
        """The rank of each member's last update in a call, against the board after the group: one off at
        most per member another call of the group wrote (moved, added or removed) while it ran."""
        touched = [len(op.members()) for op in ops]
        for j, (op, outcome) in enumerate(zip(ops, outcomes, strict=True)):
            if op.kind == "remove" or outcome.code is not None:
                continue
            slack = sum(touched) - touched[j]
            answers = outcome.results()
            for i in {u: i for i, (u, _, _) in enumerate(op.items)}.values():
                if kinds.get((j, i)) == "upd":
                    score, rank, _ = answers[i]
                    expected = self.model.rank_of_score(score)
                    assert abs(rank - expected) <= slack, (j, op, answers, expected, slack)


@pytest.mark.parametrize("operator", ["increment", "best", "set"])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_router_matches_sorted_list_model(
    router: RouterThread, client: Client, control_plane_dsn: str, order: str, operator: str
) -> None:
    quiet = _SpuriousPollerErrors()
    logging.getLogger("asyncio").addFilter(quiet)
    second = RouterThread(control_plane_dsn).start()  # the `router` fixture has bootstrapped the cluster
    client2 = Client(second.port)
    loop = asyncio.new_event_loop()
    cp = loop.run_until_complete(ControlPlane.open(control_plane_dsn))
    cluster = loop.run_until_complete(connect_cluster(cp))
    machine = type(
        f"BoardMachine_{order}_{operator}",
        (BoardMachine,),
        {
            "router": router,
            "client": client,
            "client2": client2,
            "order": order,
            "operator": operator,
            "loop": loop,
            "cp": cp,
            "cluster": cluster,
        },
    )
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                phases=tuple(Phase) if SHRINK else (Phase.explicit, Phase.reuse, Phase.generate),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            ),
        )
    finally:
        loop.run_until_complete(cluster.aclose())
        loop.run_until_complete(cp.close())
        loop.close()
        client2.close()
        second.stop()
        logging.getLogger("asyncio").removeFilter(quiet)


# ---- the machine's findings, pinned down as plain examples ---------------------------------------


def _crash_once_at(router: RouterThread, step: str) -> None:
    def hook(name: str) -> None:
        if name == step:
            router.hook = None
            raise Crash(step)

    router.hook = hook


def test_retrying_an_older_request_leaves_the_newer_score_in_place(client: Client) -> None:
    """A batch that updates a member and then retries one of its earlier requests: the retry is a
    duplicate (answered with the first call's score) and must change nothing."""
    client.create("dup-older", "desc", "set")
    lb = client.lb
    first = pb.UpdateScoreRequest(leaderboard="dup-older", user_id="u", score=10, request_id="r1")
    lb.UpdateScore(first, timeout=TIMEOUT)
    retry = pb.BatchUpdateScoresRequest(
        leaderboard="dup-older",
        updates=[
            pb.ScoreUpdate(user_id="u", score=20, request_id="r2"),
            pb.ScoreUpdate(user_id="u", score=10, request_id="r1"),  # a retry of the first call
        ],
    )
    answer = lb.BatchUpdateScores(retry, timeout=TIMEOUT)
    assert [(r.score, r.applied) for r in answer.results] == [(20, True), (10, False)]
    assert lb.GetRank(pb.GetRankRequest(leaderboard="dup-older", user_id="u"), timeout=TIMEOUT).entry.score == 20
    top = lb.GetTop(pb.GetTopRequest(leaderboard="dup-older"), timeout=TIMEOUT)
    assert entries(top.entries) == [("u", 20, 1)]


def test_a_best_update_that_is_not_better_still_repairs_its_member(router: RouterThread, client: Client) -> None:
    """A crashed batch left member b committed on the index but not written to its shard (b does not
    cross a boundary, so no intent records it). b's next write, a BEST value that is not better, must
    still put b where it belongs."""
    client.create("best-repair", "asc", "best", [0])
    lb = client.lb
    lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="best-repair", user_id="a", score=5), timeout=TIMEOUT)
    _crash_once_at(router, "intent_recorded")
    crossing = pb.BatchUpdateScoresRequest(
        leaderboard="best-repair",
        updates=[pb.ScoreUpdate(user_id="a", score=-5), pb.ScoreUpdate(user_id="b", score=18)],  # a moves, b is new
    )
    expect_code(FAILED, lambda: lb.BatchUpdateScores(crossing, timeout=TIMEOUT))
    router.hook = None
    # a's next write finishes its move; b's must put b back in its shard.
    lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="best-repair", user_id="a", score=7), timeout=TIMEOUT)
    answer = lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="best-repair", user_id="b", score=45), timeout=TIMEOUT)
    assert (answer.score, answer.rank, answer.applied) == (18, 2, False)
    top = lb.GetTop(pb.GetTopRequest(leaderboard="best-repair"), timeout=TIMEOUT)
    assert (entries(top.entries), top.total) == ([("a", -5, 1), ("b", 18, 2)], 2)


def test_a_batch_refused_on_one_index_node_still_writes_what_the_other_applied(
    client: Client, control_plane_dsn: str
) -> None:
    """Found by `concurrent_writes`: a batch over members on both index nodes ('a-b' and 'a': slots 670 and
    579), racing an UpdateScore that takes one of its request ids with another value. When that update
    commits between the batch's check round and its apply round, the batch fails with FAILED_PRECONDITION
    ("...; updates on other index nodes were applied") and the other node's share is committed on the
    index but never written to its shard: with nothing in flight, GetRanks (index) and GetTop (shards)
    disagree until the member's next write. The race is hit within a few rounds."""
    second = RouterThread(control_plane_dsn).start()
    client2 = Client(second.port)
    client.create("partial", "desc", "set")
    try:
        for n in range(200):
            batch = pb.BatchUpdateScoresRequest(
                leaderboard="partial",
                updates=[
                    pb.ScoreUpdate(user_id="a-b", score=1000 + n),
                    pb.ScoreUpdate(user_id="a", score=5, request_id=f"r{n}"),
                ],
            )
            single = pb.UpdateScoreRequest(leaderboard="partial", user_id="a", score=7, request_id=f"r{n}")
            calls = [
                lambda batch=batch: client.lb.BatchUpdateScores.future(batch, timeout=TIMEOUT),
                lambda single=single: client2.lb.UpdateScore.future(single, timeout=TIMEOUT),
            ]
            futures = [call() for call in (calls if n % 2 else calls[::-1])]
            for future in futures:
                try:
                    future.result()
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            both = pb.GetRanksRequest(leaderboard="partial", user_ids=["a", "a-b"])
            index = client.lb.GetRanks(both, timeout=TIMEOUT)  # scores from the index
            shards = client.lb.GetTop(pb.GetTopRequest(leaderboard="partial"), timeout=TIMEOUT)
            assert entries(index.entries) == entries(shards.entries), f"round {n}"
    finally:
        client2.close()
        second.stop()
