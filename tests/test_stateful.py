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
"""

from __future__ import annotations

import bisect
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from shard_node import MOVE_STEPS

from rankshard.v1 import leaderboard_pb2 as pb

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

EXAMPLES = 6
STEPS = 25


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
        return Model(self.descending, self.operator, dict(self.scores), {u: list(h) for u, h in self.history.items()})

    def better(self, a: int, b: int) -> bool:
        return a > b if self.descending else a < b

    def ordered(self) -> list[tuple[str, int, int]]:
        """(user, score, rank) best first; ties by user id bytes."""
        users = sorted(self.scores, key=lambda u: (-self.scores[u] if self.descending else self.scores[u], u.encode()))
        return [(u, self.scores[u], self.rank_of_score(self.scores[u])) for u in users]

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
    def lb(self):
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
        return self.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard=self.board, user_id=user), timeout=TIMEOUT).removed

    def check_update(self, user: str, value: int, rid: str) -> None:
        """One UpdateScore call, checked against the model and then applied to it."""
        trial = self.model.copy()
        kind, score, applied = trial.apply(user, value, rid)
        if kind == "conflict":
            expect_code((grpc.StatusCode.FAILED_PRECONDITION,), lambda: self.update(user, value, rid))
            return
        answer = self.update(user, value, rid)
        self.model = trial
        assert (answer.score, answer.applied) == (score, applied), (kind, answer)
        if kind != "dup":  # a duplicate returns the first call's score; its rank then is not pinned down
            assert answer.rank == trial.rank_of_score(score), answer

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

    def draw_update(self, data, user: str, raw: int, rid_mode: str) -> tuple[int, str]:
        """(value, request id) for an update of `user`: none, fresh, or a retry of a recognised id."""
        value = self.value(raw)
        sent = self.model.recognised(user)
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
    def update_score(self, data, user: str, raw: int, rid_mode: str) -> None:
        value, rid = self.draw_update(data, user, raw, rid_mode)
        self.check_update(user, value, rid)

    @rule(
        data=st.data(),
        items=st.lists(
            st.tuples(
                st.sampled_from(USERS),
                RAW_VALUES,
                st.sampled_from(("none", "fresh", "retry_same", "retry_other", "in_batch_same", "in_batch_other")),
            ),
            min_size=1,
            max_size=6,
        ),
    )
    def batch_update(self, data, items: list[tuple[str, int, str]]) -> None:
        updates: list[tuple[str, int, str]] = []
        for user, raw, mode in items:
            earlier = [(v, r) for u, v, r in updates if u == user and r]
            if mode.startswith("in_batch") and earlier:
                v, r = data.draw(st.sampled_from(earlier), label="request id from earlier in the batch")
                updates.append((user, v if mode == "in_batch_same" else v + 1, r))
            else:
                mode = mode if not mode.startswith("in_batch") else "fresh"
                updates.append((user, *self.draw_update(data, user, raw, mode)))
        # The same user twice, on purpose, now and then.
        if len(updates) < 6 and data.draw(st.booleans(), label="repeat a user"):
            user = updates[0][0]
            updates.append((user, *self.draw_update(data, user, data.draw(RAW_VALUES), "fresh")))
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
        answer = self.lb.GetTop(pb.GetTopRequest(leaderboard=self.board, offset=offset, limit=limit), timeout=TIMEOUT)
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

    def repair(self, data, user: str, crashed: tuple[int, str] | None) -> None:
        """The member's next write after a crash; afterwards the invariants must hold again."""
        modes = ["fresh", "none", "remove"]
        if crashed is not None:
            modes.append("retry_crashed")
        if any(s.rid != (crashed or (0, ""))[1] for s in self.model.recognised(user)):
            modes.append("retry_older")
        mode = data.draw(st.sampled_from(modes), label=f"repair of {user!r}")
        if mode == "remove":
            self.check_remove(user)
        elif mode == "retry_crashed":
            self.check_update(user, *crashed)
        elif mode == "retry_older":
            older = [s for s in self.model.recognised(user) if s.rid != crashed[1]] if crashed else self.model.recognised(user)
            sent = data.draw(st.sampled_from(older), label="older request retried")
            self.check_update(user, sent.value, sent.rid)
        else:
            value = self.value(data.draw(RAW_VALUES, label="repair value"))
            self.check_update(user, value, self.fresh_rid() if mode == "fresh" else "")
        self.check_member(user)

    @precondition(lambda self: bool(self.boundaries and self.model.scores))
    @rule(data=st.data(), step=st.sampled_from(MOVE_STEPS))
    def crash_crossing_update(self, data, step: str) -> None:
        user = data.draw(st.sampled_from(sorted(self.model.scores)), label="crossing member")
        values = self.crossing_values(user)
        if not values:  # a BEST member already in the best shard: crash a removal instead
            return self.crash_removal(data, user, data.draw(st.sampled_from(REMOVAL_STEPS)))
        value, rid = data.draw(st.sampled_from(values), label="crossing value"), self.fresh_rid()
        assert self.crash_at(step, lambda: self.update(user, value, rid)), "the crossing update never reached the step"
        self.model.apply(user, value, rid)  # committed on the index before any step hook runs
        self.repair(data, user, (value, rid))

    @precondition(lambda self: bool(self.model.scores))
    @rule(data=st.data(), step=st.sampled_from(REMOVAL_STEPS))
    def crash_remove(self, data, step: str) -> None:
        self.crash_removal(data, data.draw(st.sampled_from(sorted(self.model.scores)), label="removed member"), step)

    def crash_removal(self, data, user: str, step: str) -> None:
        assert self.crash_at(step, lambda: self.remove_call(user)), "the removal never reached the step"
        self.model.remove(user)
        self.repair(data, user, None)

    @precondition(lambda self: bool(self.boundaries and self.model.scores))
    @rule(
        data=st.data(),
        step=st.sampled_from(MOVE_STEPS),
        others=st.lists(st.tuples(st.sampled_from(USERS), RAW_VALUES), max_size=4),
        retry_whole=st.booleans(),
    )
    def crash_crossing_batch(self, data, step: str, others: list[tuple[str, int]], retry_whole: bool) -> None:
        """A batch whose first update crosses a boundary, with other members' updates (any kind) beside it."""
        user = data.draw(st.sampled_from(sorted(self.model.scores)), label="crossing member")
        values = self.crossing_values(user)
        if not values:
            return
        updates = [(user, data.draw(st.sampled_from(values), label="crossing value"), self.fresh_rid())]
        updates += [(u, self.value(raw), self.fresh_rid()) for u, raw in others]
        assert self.crash_at(step, lambda: self.batch(updates)), "the crossing batch never reached the step"
        for u, v, r in updates:
            self.model.apply(u, v, r)
        if retry_whole:  # the client's retry of the whole call: every update is a duplicate
            self.check_batch(updates)
            for u in dict.fromkeys(u for u, _, _ in updates):
                self.check_member(u)
            return
        for u in dict.fromkeys(u for u, _, _ in updates):
            last = [(v, r) for uu, v, r in updates if uu == u][-1]
            self.repair(data, u, last)


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
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
