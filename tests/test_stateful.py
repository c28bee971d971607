"""The router over real nodes against a plain sorted-list model (SPEC.md section 1), driven by hypothesis.

One router per (sort order, operator) pair; every hypothesis example works on a fresh board with small
score ranges, so members cross shard boundaries often. Rules write (single, batch, with and without request
ids, retries of earlier ids with the same or another value, removals), read (rank, ranks, top pages, windows)
and crash the boundary-crossing protocol at each step of `shard_node.MOVE_STEPS`; after every step the
whole board must equal the model.

Crashes: the step hook fires only after the index commit (DESIGN.md write path step 2), so a crashed call's
update has happened; the model applies it. Until the member's next write the member may sit in two
shards or none (a write in flight), so every crash rule ends with a write for each member the crashed call
touched, and the invariants then require the board to be whole again.

Left unchecked, where SPEC does not pin the answer down: the rank in a duplicate's answer, the rank of a
member's non-final update within a batch, and retries of request ids from before a member's removal.
"""

from __future__ import annotations

import bisect
import itertools
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
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

from shard_node import MOVE_STEPS

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc

from _router import Client, RouterThread

# Bytewise order: "B" < "a" < "a-b" < "aa" < "é" (c3 a9) < "日本" (e6) < "Ａ" (ef bc a1) < "🏆" (f0).
USERS = ("a", "B", "aa", "a-b", "é", "日本", "Ａ", "🏆")
BOUNDARY_SETS = ((-20, 0, 10, 25), (-5, 5, 30))
NEAR_BOUNDARIES = (-21, -20, -19, -6, -5, -4, -1, 0, 1, 4, 5, 6, 9, 10, 11, 24, 25, 26, 29, 30, 31)
RAW_VALUES = st.one_of(st.integers(-40, 60), st.sampled_from(NEAR_BOUNDARIES))
REMOVAL_STEPS = ("intent_recorded", "source_removed", "intent_cleared")
DEDUP_DEPTH = 8  # SPEC: a request id is recognised while among the member's last 8 updates
TIMEOUT = 10.0
FAILED = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)

EXAMPLES = 50
STEPS = 30
SHRINK = os.environ.get("RANKSHARD_SHRINK") == "1"
"""Shrinking a failure replays hundreds of runs against the real cluster (minutes on a slow machine), so it is
opt-in: a failure prints its whole step list; rerun with RANKSHARD_SHRINK=1 for a minimal one."""


class Crash(Exception):
    """Raised by the step hook: a router dying at that point of the boundary-crossing protocol."""


@dataclass
class Sent:
    """One update with a request id the board has applied (or deduplicated against)."""

    rid: str
    value: int
    score: int  # the result the first call gave


@dataclass
class Model:
    """The single sorted list of SPEC.md section 1."""

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
        self.history.pop(user, None)  # a re-added member's old request ids are not retried (SPEC is silent)
        return self.scores.pop(user, None) is not None


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
    order: str
    operator: str
    rids = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.model = Model(self.order == "desc", self.operator)
        self.board = ""
        self.boundaries: tuple[int, ...] = ()

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
        other members' writes are still in flight (each may put the rank off by one, SPEC invariant 5)."""
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
        for i, ((user, _, _), (kind, score, applied), got) in enumerate(zip(updates, expected, answer.results)):
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
        default the board's) must recognise. Ids past the window are never retried: SPEC only says
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

    @initialize(boundaries=st.sampled_from(BOUNDARY_SETS))
    def create_board(self, boundaries: tuple[int, ...]) -> None:
        self.board = f"sm-{self.order}-{self.operator}-{uuid.uuid4().hex[:12]}"
        self.boundaries = boundaries
        self.client.create(self.board, self.order, self.operator, boundaries)

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


@pytest.mark.parametrize("operator", ["increment", "best", "set"])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_router_matches_sorted_list_model(router: RouterThread, client: Client, order: str, operator: str) -> None:
    machine = type(
        f"BoardMachine_{order}_{operator}",
        (BoardMachine,),
        {"router": router, "client": client, "order": order, "operator": operator},
    )
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
