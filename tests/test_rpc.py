"""Every RPC of docs/api.md in normal use, through a real router over two real nodes.

Boards are cut so their members live in several shards (and, through the index slots, on both nodes), and
every read is compared with `Model`: one plain sorted list of all members, as docs/api.md's Semantics define it.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rankshard.shard_map import slot_for
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0
"""Seconds: the deadline of every call."""

CUTS = [10, 20, 30]
"""Four shards: (-inf, 10), [10, 20), [20, 30), [30, +inf)."""

ORDERS = ("desc", "asc")
OPERATORS = ("increment", "best", "set")
SERVICES = ("rankshard.v1.Leaderboard", "rankshard.v1.Admin")

# Ids whose order is bytewise, not case-insensitive or locale order: "B" < "Z" < "a" < "b" < "é" < "ü".
NAMES = [
    "zoe",
    "Amy",
    "bob",
    "émile",
    "carl",
    "Dan",
    "eve",
    "B",
    "a",
    "Z",
    "üwe",
    "frank",
    "Gus",
    "hal",
    "ivy",
    "Jo",
    "kim",
    "lee",
    "Max",
    "ned",
    "o1",
    "o10",
    "o2",
    "pat",
    "Quinn",
]
SCORES = [0, 5, 5, 5, 9, 10, 10, 12, 15, 19, 20, 20, 20, 20, 25, 29, 30, 30, 33, 40, -1, -7, 100, 9, 19]
"""Ties inside shards, at shard boundaries, and across the first rows of most pages."""


class Model:
    """The single sorted list docs/api.md describes: best score first, ties by user id bytewise; competition ranks."""

    def __init__(self, order: str = "desc", operator: str = "increment") -> None:
        self.descending = order == "desc"
        self.operator = operator
        self.scores: dict[str, int] = {}

    def better(self, a: int, b: int) -> bool:
        return a > b if self.descending else a < b

    def update(self, user: str, value: int) -> tuple[int, bool]:
        """Applies one update; returns the member's score after it and whether it was applied."""
        old = self.scores.get(user)
        if old is None or self.operator == "set":
            new, applied = value, True
        elif self.operator == "increment":
            new, applied = old + value, True
        else:
            new, applied = (value, True) if self.better(value, old) else (old, False)
        self.scores[user] = new
        return new, applied

    def rank(self, score: int) -> int:
        return 1 + sum(1 for s in self.scores.values() if self.better(s, score))

    def ordered(self) -> list[tuple[str, int, int]]:
        rows = sorted(self.scores.items(), key=lambda us: (-us[1] if self.descending else us[1], us[0].encode()))
        return [(u, s, self.rank(s)) for u, s in rows]

    def top(self, offset: int, limit: int) -> list[tuple[str, int, int]]:
        return self.ordered()[offset : offset + limit]

    def around(self, user: str, radius: int) -> list[tuple[str, int, int]]:
        rows = self.ordered()
        at = [u for u, _, _ in rows].index(user)
        return rows[max(0, at - radius) : at + radius + 1]

    def members_in(self, shard: admin_pb2.Shard) -> int:
        low = shard.lower if shard.HasField("lower") else None
        high = shard.upper if shard.HasField("upper") else None
        return sum(1 for s in self.scores.values() if (low is None or s >= low) and (high is None or s < high))


# ---- calls ------------------------------------------------------------------------------------------------


def update(client, board: str, user: str, score: int, request_id: str | None = None) -> tuple[int, int, bool]:
    request = pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=score)
    if request_id is not None:
        request.request_id = request_id
    r = client.lb.UpdateScore(request, timeout=T)
    return r.score, r.rank, r.applied


def batch_request(board: str, updates: list[tuple]) -> pb.BatchUpdateScoresRequest:
    """`updates`: (user, score) or (user, score, request_id)."""
    items = [pb.ScoreUpdate(user_id=u[0], score=u[1], request_id=(*u, "")[2]) for u in updates]
    return pb.BatchUpdateScoresRequest(leaderboard=board, updates=items)


def batch(client, board: str, updates: list[tuple]) -> list[tuple[int, int, bool]]:
    results = client.lb.BatchUpdateScores(batch_request(board, updates), timeout=T).results
    return [(r.score, r.rank, r.applied) for r in results]


def rows(response) -> list[tuple[str, int, int]]:
    return [(e.user_id, e.score, e.rank) for e in response.entries]


def top(client, board: str, offset: int = 0, limit: int = 1000) -> tuple[list[tuple[str, int, int]], int]:
    r = client.lb.GetTop(pb.GetTopRequest(leaderboard=board, offset=offset, limit=limit), timeout=T)
    return rows(r), r.total


def around(client, board: str, user: str, radius: int) -> tuple[list[tuple[str, int, int]], int]:
    r = client.lb.GetAround(pb.GetAroundRequest(leaderboard=board, user_id=user, radius=radius), timeout=T)
    return rows(r), r.total


def ranks(client, board: str, users: list[str]) -> list[tuple[str, int, int]]:
    return rows(client.lb.GetRanks(pb.GetRanksRequest(leaderboard=board, user_ids=users), timeout=T))


def shard_map(client, board: str) -> admin_pb2.ShardMap:
    return client.admin.GetShardMap(admin_pb2.GetShardMapRequest(leaderboard=board), timeout=T)


def status_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=T, **kwargs)
    return info.value


def fill(client, board: str, model: Model, names=NAMES, scores=SCORES) -> None:
    for user, score in zip(names, scores, strict=True):
        model.update(user, score)
    batch(client, board, list(zip(names, scores, strict=True)))


def check_board(client, board: str, model: Model) -> None:
    """Every read of the whole board equals the model: the full page, each rank, GetRanks, shard sizes."""
    expected = model.ordered()
    assert top(client, board) == (expected, len(expected))
    for user, score, rank in expected:
        r = client.lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id=user), timeout=T)
        assert (r.entry.user_id, r.entry.score, r.entry.rank, r.total) == (user, score, rank, len(expected))
        assert r.percentile == pytest.approx(100 * (len(expected) - rank) / len(expected))
    assert ranks(client, board, [u for u, _, _ in reversed(expected)]) == expected
    shards = shard_map(client, board).shards
    assert [s.members for s in shards] == [model.members_in(s) for s in shards]
    assert sum(s.members for s in shards) == len(expected)


# ---- UpdateScore ------------------------------------------------------------------------------------------

# (user, value): new members in every shard, then updates that cross shard boundaries both ways, ties
# with the old score, and a zero.
SCRIPT = [
    ("a", 5),
    ("b", 15),
    ("c", 25),
    ("d", 35),
    ("e", -4),
    ("a", 12),
    ("b", 15),
    ("c", 3),
    ("d", -20),
    ("e", 40),
    ("f", 25),
    ("a", 0),
    ("c", 30),
    ("f", -25),
]


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("order", ORDERS)
def test_update_score_applies_the_operator_across_shards(client, order, operator):
    client.create("b", order, operator, CUTS)
    model = Model(order, operator)
    for user, value in SCRIPT:
        old = model.scores.get(user)
        score, applied = model.update(user, value)
        assert update(client, "b", user, value) == (score, model.rank(score), applied), (user, value)
        if old is None:
            assert score == value, "a new member starts from the submitted value under every operator"
        elif operator == "increment":
            assert score == old + value
        elif operator == "set":
            assert score == value
        elif not model.better(value, old):
            assert (score, applied) == (old, False), "BEST with a value that is not better changes nothing"
    check_board(client, "b", model)


# ---- idempotency ------------------------------------------------------------------------------------------


def test_request_ids_make_retries_harmless(client):
    client.create("inc", boundaries=CUTS)
    client.create("best", operator="best", boundaries=CUTS)
    model = Model()
    assert update(client, "inc", "u1", 5, "r1") == (5, 1, True)
    model.update("u1", 5)

    # The same id and value again: the first call's result, not applied, nothing changed.
    assert update(client, "inc", "u1", 5, "r1") == (5, 1, False)
    check_board(client, "inc", model)

    # The same id with another value: FAILED_PRECONDITION naming the request id; nothing changed.
    request = pb.UpdateScoreRequest(leaderboard="inc", user_id="u1", score=7, request_id="r1")
    error = status_of(client.lb.UpdateScore, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "request_id" in error.details()
    check_board(client, "inc", model)

    # Request ids are scoped to a member: the same id on another member is another request.
    assert update(client, "inc", "u2", 5, "r1") == (5, 1, True)
    model.update("u2", 5)
    # ... and to a board.
    assert update(client, "best", "u1", 5, "r1")[2] is True

    # A retry that comes after later updates still gets the first call's score, and changes nothing.
    assert update(client, "inc", "u1", 20, "r2")[:2] == (25, 1)  # moves u1 from shard (-inf,10) to [20,30)
    model.update("u1", 20)
    assert update(client, "inc", "u1", 5, "r1")[::2] == (5, False)
    assert update(client, "inc", "u1", 20, "r2") == (25, 1, False)
    check_board(client, "inc", model)

    # An id stays recognised while it is among the member's last 8 updates.
    for i in range(3, 9):  # r2..r8 after r1: seven
        update(client, "inc", "u1", 1, f"r{i}")
        model.update("u1", 1)
    assert update(client, "inc", "u1", 5, "r1")[::2] == (5, False)
    assert update(client, "inc", "u1", 1, "r8")[::2] == (31, False)

    # Without a request id, every call is applied.
    assert update(client, "inc", "u2", 5)[::2] == (10, True)
    assert update(client, "inc", "u2", 5)[::2] == (15, True)
    model.update("u2", 5), model.update("u2", 5)

    # Batches honour request ids too, also for an id first seen earlier in the same batch.
    assert batch(client, "inc", [("u2", 5, "r1"), ("u3", 4, "b1"), ("u3", 4, "b1"), ("u1", 2, "b2")]) == [
        (5, 3, False),
        (4, 3, True),
        (4, 3, False),
        (33, 1, True),
    ]
    model.update("u3", 4), model.update("u1", 2)
    error = status_of(client.lb.BatchUpdateScores, batch_request("inc", [("u4", 1), ("u3", 5, "b1")]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "request_id" in error.details()
    check_board(client, "inc", model)

    # BEST: a retried update that was not applied the first time answers the same way.
    assert update(client, "best", "u1", 3, "x") == (5, 1, False)
    assert update(client, "best", "u1", 3, "x") == (5, 1, False)
    assert update(client, "best", "u1", 50, "y") == (50, 1, True)
    assert update(client, "best", "u1", 50, "y") == (50, 1, False)


def test_request_ids_are_scoped_to_their_board_whatever_the_names(client):
    """Board names may hold ':' and user ids anything: ("a", "b:c") and ("a:b", "c") are different members
    of different boards, so a request id of one is no request id of the other."""
    client.create("a", boundaries=CUTS)
    client.create("a:b", boundaries=CUTS)
    assert update(client, "a", "b:c", 5, "r1") == (5, 1, True)
    assert update(client, "a:b", "c", 5, "r1") == (5, 1, True)
    assert update(client, "a:b", "c", 6, "r2") == (11, 1, True)
    model = Model()
    model.update("c", 11)
    check_board(client, "a:b", model)


# ---- BatchUpdateScores ------------------------------------------------------------------------------------


def test_batch_update_scores(client):
    client.create("b", boundaries=CUTS)
    model = Model()
    users = [f"p{i}" for i in range(10)]
    assert {slot_for(u) % 2 for u in users} == {0, 1}, "the batch should span both index nodes"
    values = [-5, 3, 12, 18, 22, 29, 30, 31, 45, 10]
    updates = [*zip(users, values, strict=True), ("new", 5), ("p3", 4), ("new", 20)]
    expected = [model.update(u, v) for u, v in updates]
    results = batch(client, "b", updates)
    # In request order; a member updated twice sees its first update (new -> 5 -> 25, p3 18 -> 22).
    assert [(s, a) for s, _, a in results] == expected
    last = {u: i for i, (u, _) in enumerate(updates)}
    for i, (user, _) in enumerate(updates):
        if last[user] == i:
            assert results[i][1] == model.rank(model.scores[user]), user
    check_board(client, "b", model)

    # One bad update fails the whole call before anything is applied.
    bad = [*((u, 100) for u in users), ("p9", 2**53), ("fresh", 1)]
    error = status_of(client.lb.BatchUpdateScores, batch_request("b", bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "updates[10].score" in error.details()
    check_board(client, "b", model)

    # So does a request-id conflict met on one index node after the other node's share was fine.
    batch(client, "b", [("p0", 1, "once")])
    model.update("p0", 1)
    conflicting = [(u, 7, f"c-{u}") for u in users] + [("p0", 2, "once")]
    error = status_of(client.lb.BatchUpdateScores, batch_request("b", conflicting))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "updates[10].request_id" in error.details()
    check_board(client, "b", model)
    # ... and the ids of the refused call were not recorded: they apply now.
    assert batch(client, "b", conflicting[:-1])[0][2] is True
    for u, s, _ in conflicting[:-1]:
        model.update(u, s)

    # An existing member twice in one batch, crossing shard boundaries both ways.
    results = batch(client, "b", [("p1", 10), ("p1", -30), ("p8", -40)])
    assert [(s, a) for s, _, a in results] == [model.update("p1", 10), model.update("p1", -30), model.update("p8", -40)]
    check_board(client, "b", model)


# ---- reads ------------------------------------------------------------------------------------------------


def test_a_batch_of_distinct_members_over_both_index_nodes_is_refused_whole(client):
    """The check round before a batch over several index nodes, for a batch in which no member comes twice: a
    reused request id (of a member present, or of one removed since) or an overflow on either node refuses the
    whole batch, and nothing of it is applied."""
    client.create("chk", boundaries=CUTS)
    model = Model()
    users = [f"q{i}" for i in range(10)]
    assert {slot_for(u) % 2 for u in users} == {0, 1}, "the batch should span both index nodes"
    batch(client, "chk", [(u, 1, f"first-{u}") for u in users])
    for u in users:
        model.update(u, 1)
    assert remove(client, "chk", "q9")
    del model.scores["q9"]
    for refused, code, field in (
        (("q3", 2, "first-q3"), grpc.StatusCode.FAILED_PRECONDITION, "request_id"),
        (("q9", 2, "first-q9"), grpc.StatusCode.FAILED_PRECONDITION, "request_id"),  # removed: records still count
        (("q5", 2**53 - 1, "big"), grpc.StatusCode.OUT_OF_RANGE, "score"),
    ):
        others = [(u, 3, f"second-{u}") for u in users if u != refused[0]]
        error = status_of(client.lb.BatchUpdateScores, batch_request("chk", [*others, refused]))
        assert error.code() == code, error
        assert f"updates[{len(others)}].{field}" in error.details() and "nothing was applied" in error.details()
        check_board(client, "chk", model)
    # A retry of the first batch's ids with their values is answered, not applied again.
    assert [a for _, _, a in batch(client, "chk", [(u, 1, f"first-{u}") for u in users[:9]])] == [False] * 9
    check_board(client, "chk", model)


def test_get_rank_is_competition_rank_with_percentile(client):
    for order, expected in (("desc", {"w": 1, "x": 2, "y": 2, "z": 4}), ("asc", {"z": 1, "x": 2, "y": 2, "w": 4})):
        client.create(order, order, boundaries=[35, 45])
        model = Model(order)
        fill(client, order, model, ["w", "x", "y", "z"], [50, 40, 40, 30])
        for user, rank in expected.items():
            r = client.lb.GetRank(pb.GetRankRequest(leaderboard=order, user_id=user), timeout=T)
            assert (r.entry.user_id, r.entry.score, r.entry.rank, r.total) == (user, model.scores[user], rank, 4)
            assert r.percentile == pytest.approx(100 * (4 - rank) / 4)
        assert top(client, order)[0] == model.ordered()
        # One member alone: rank 1 of 1, percentile 0.
        client.create(f"{order}-one", order)
        update(client, f"{order}-one", "solo", 3)
        r = client.lb.GetRank(pb.GetRankRequest(leaderboard=f"{order}-one", user_id="solo"), timeout=T)
        assert (r.entry.rank, r.total, r.percentile) == (1, 1, 0.0)


def test_get_ranks(client):
    client.create("b", boundaries=CUTS)
    model = Model()
    fill(client, "b", model)
    everyone = model.ordered()
    by_user = {u: (u, s, r) for u, s, r in everyone}

    # Best first whatever the request order; unknown users left out; a duplicate listed once.
    asked = ["nobody", "o2", "Amy", "o2", "ghost", "Quinn", "B", "é"]
    expected = sorted((by_user[u] for u in set(asked) if u in by_user), key=everyone.index)
    assert ranks(client, "b", asked) == expected
    # Tied members (20, 20, 20, 20) come in user-id order (bytewise), asked in any order.
    tied = [u for u, s, _ in everyone if s == 20]
    assert len(tied) == 4
    assert ranks(client, "b", tied[::-1]) == [by_user[u] for u in tied]
    assert ranks(client, "b", []) == []
    assert ranks(client, "b", ["nobody", "ghost"]) == []
    assert ranks(client, "b", [u for u, _, _ in everyone]) == everyone


def test_get_top_pages_across_shards(client):
    for order in ORDERS:
        client.create(order, order, boundaries=CUTS)
        model = Model(order)
        fill(client, order, model)
        total = len(NAMES)
        assert top(client, order, 0, 0) == (model.top(0, 10), total), "limit 0 means 10"
        assert top(client, order, 0, 1000) == (model.ordered(), total)
        for limit in (1, 3, 7):
            for offset in range(total + 2):
                assert top(client, order, offset, limit) == (model.top(offset, limit), total), (offset, limit)
        # Pages starting inside a run of ties still carry the run's rank.
        tie_starts = [i for i, (_, s, r) in enumerate(model.ordered()) if i and r != i + 1]
        assert tie_starts
        for offset in tie_starts:
            assert top(client, order, offset, 2)[0][0][2] < offset + 1
        for offset in (total, total + 1, 10**12, 2**63 - 1):
            assert top(client, order, offset, 5) == ([], total), "an offset past the end is an empty page"
    client.create("empty", boundaries=CUTS)
    assert top(client, "empty") == ([], 0)


def test_get_around_windows_across_shards(client):
    for order in ORDERS:
        client.create(order, order, boundaries=CUTS)
        model = Model(order)
        fill(client, order, model)
        total = len(NAMES)
        ordered = model.ordered()
        for user in NAMES:
            assert around(client, order, user, 0) == (model.around(user, 4), total), "radius 0 means 4"
            for radius in (1, 2, 3, 100):
                assert around(client, order, user, radius) == (model.around(user, radius), total), (user, radius)
        # At the very top and the very bottom the window is one-sided; the user is always included.
        first, last = ordered[0][0], ordered[-1][0]
        assert around(client, order, first, 2)[0] == ordered[:3]
        assert around(client, order, last, 2)[0] == ordered[-3:]
        assert around(client, order, first, 100)[0] == ordered
    client.create("solo")
    update(client, "solo", "only", 1)
    assert around(client, "solo", "only", 4) == ([("only", 1, 1)], 1)


# ---- RemoveMember -----------------------------------------------------------------------------------------


def remove(client, board: str, user: str) -> bool:
    return client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard=board, user_id=user), timeout=T).removed


def test_remove_member(client):
    client.create("inc", boundaries=CUTS)
    client.create("best", operator="best", boundaries=CUTS)
    model = Model()
    fill(client, "inc", model)

    assert remove(client, "inc", "bob") is True  # score 5, in the lowest shard
    assert remove(client, "inc", "lee") is True  # score 30, in the top shard
    del model.scores["bob"], model.scores["lee"]
    assert remove(client, "inc", "bob") is False
    assert remove(client, "inc", "nobody") is False
    for gone in ("bob", "lee"):
        for call, request in (
            (client.lb.GetRank, pb.GetRankRequest(leaderboard="inc", user_id=gone)),
            (client.lb.GetAround, pb.GetAroundRequest(leaderboard="inc", user_id=gone)),
        ):
            error = status_of(call, request)
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert gone in error.details()
    assert ranks(client, "inc", ["bob", "lee", "eve"]) == [e for e in model.ordered() if e[0] == "eve"]
    check_board(client, "inc", model)
    for user in ("zoe", "Quinn"):
        assert around(client, "inc", user, 100) == (model.ordered(), len(model.scores))

    # Re-adding starts fresh: the submitted value, not the old score plus it.
    assert update(client, "inc", "bob", 7)[::2] == (7, True)
    assert update(client, "inc", "lee", 22)[::2] == (22, True)
    model.update("bob", 7), model.update("lee", 22)
    check_board(client, "inc", model)

    # Also under BEST, where a worse value than before counts once the member is gone.
    best = Model(operator="best")
    update(client, "best", "m", 25), update(client, "best", "k", 12)
    assert remove(client, "best", "m") is True
    assert update(client, "best", "m", 3)[::2] == (3, True)
    best.update("m", 3), best.update("k", 12)
    check_board(client, "best", best)

    # The last member out leaves an empty board.
    for user in list(model.scores):
        assert remove(client, "inc", user) is True
    assert top(client, "inc") == ([], 0)
    assert sum(s.members for s in shard_map(client, "inc").shards) == 0


# ---- Admin ------------------------------------------------------------------------------------------------


def test_admin(client):
    config = admin_pb2.LeaderboardConfig
    plain = config(name="plain", sort_order=admin_pb2.SORT_ORDER_DESCENDING, operator=admin_pb2.OPERATOR_INCREMENT)
    cuts = config(
        name="cuts",
        sort_order=admin_pb2.SORT_ORDER_ASCENDING,
        operator=admin_pb2.OPERATOR_BEST,
        boundaries=[-10, 0, 10],
        expected_members=50,  # a layout of one hash per index slot and node: every member shares one
    )

    # Unspecified order and operator mean DESCENDING and INCREMENT.
    assert client.admin.CreateLeaderboard(config(name="plain"), timeout=T) == plain
    assert client.admin.CreateLeaderboard(cuts, timeout=T) == cuts
    created = client.admin.CreateLeaderboard(config(name="set", operator=admin_pb2.OPERATOR_SET), timeout=T)
    assert (created.sort_order, created.operator) == (admin_pb2.SORT_ORDER_DESCENDING, admin_pb2.OPERATOR_SET)
    error = status_of(client.admin.CreateLeaderboard, config(name="plain", sort_order=admin_pb2.SORT_ORDER_ASCENDING))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "plain" in error.details()

    assert client.admin.GetLeaderboard(admin_pb2.GetLeaderboardRequest(name="plain"), timeout=T) == plain
    assert client.admin.GetLeaderboard(admin_pb2.GetLeaderboardRequest(name="cuts"), timeout=T) == cuts
    listed = client.admin.ListLeaderboards(admin_pb2.ListLeaderboardsRequest(), timeout=T).leaderboards
    assert [c.name for c in listed] == ["cuts", "plain", "set"]
    assert listed[0] == cuts and listed[1] == plain

    # The defaulted board behaves as descending increment.
    assert update(client, "plain", "u", 5) == (5, 1, True)
    assert update(client, "plain", "u", 5) == (10, 1, True)
    assert update(client, "plain", "v", 9) == (9, 2, True)

    # Shard maps: ranges tile the line, unbounded ends are absent, sizes add up to the board's total.
    one = shard_map(client, "plain")
    assert (one.leaderboard, len(one.shards), one.epoch >= 1) == ("plain", 1, True)
    assert not one.shards[0].HasField("lower") and not one.shards[0].HasField("upper")
    assert one.shards[0].members == 2

    model = Model("asc", "best")
    fill(client, "cuts", model, NAMES, [s - 15 for s in SCORES])
    m = shard_map(client, "cuts")
    assert m.leaderboard == "cuts" and m.epoch >= 1
    assert len(m.shards) == 4 and len({s.id for s in m.shards}) == 4
    assert not m.shards[0].HasField("lower") and m.shards[0].upper == -10
    assert [(s.lower, s.upper) for s in m.shards[1:3]] == [(-10, 0), (0, 10)]
    assert m.shards[3].lower == 10 and not m.shards[3].HasField("upper")
    assert {s.state for s in m.shards} == {"ACTIVE"}
    assert len({s.node for s in m.shards}) == 2, "shards are dealt over both nodes"
    assert [s.members for s in m.shards] == [model.members_in(s) for s in m.shards]
    assert all(s.members for s in m.shards)
    assert sum(s.members for s in m.shards) == top(client, "cuts")[1] == len(NAMES)
    check_board(client, "cuts", model)


# ---- health and reflection --------------------------------------------------------------------------------


def test_health_and_reflection(client):
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", *SERVICES):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=T)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service

    reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="rankshard.v1.Leaderboard"),
    ]
    listed, found = list(reflection.ServerReflectionInfo(iter(requests), timeout=T))
    names = {s.name for s in listed.list_services_response.service}
    assert set(SERVICES) <= names
    assert found.file_descriptor_response.file_descriptor_proto, "the Leaderboard service's file is served"
