"""docs/api.md, "Limits and errors", row by row through a real router.

Each test runs a table of cases against one router (a router per case would cost half a second each) and
reports every case that went wrong, not just the first. Around every table of refused requests the data of
both nodes is compared key by key: a refused call must leave stored data exactly as it was. Each test ends
with ordinary calls that succeed: no input, however malformed, stops a router serving.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import psycopg
import pytest
import redis
from _router import Client

from rankshard.shard_map import slot_for
from rankshard.shard_map._store import LISTENER_NAME
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0
"""Seconds: the deadline of every call that is meant to finish."""

MAX = 2**53 - 1
CUTS = [10, 20, 30]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

BAD_NAMES = {
    "empty": "",
    "65 chars": "b" * 65,
    "first char _": "_board",
    "first char -": "-board",
    "first char .": ".board",
    "first char :": ":board",
    "space": "a board",
    "slash": "a/b",
    "star": "a*",
    "brace": "a{b}",
    "non-ASCII": "böard",
    "trailing newline": "board\n",
    "NUL": "bo\x00ard",
}
GOOD_NAMES = ["n" * 64, "a", "7", "Az09_.:-", "a:b:c", "Z.z-9_"]

BAD_USERS = {
    "empty": "",
    "129 ASCII bytes": "x" * 129,
    "129 bytes in 65 chars": "é" * 64 + "x",
    "129 bytes in 43 chars": "€" * 43,
    "132 bytes in 33 chars": "😀" * 33,
    "NUL": "a\x00b",
    "\\x1f": "a\x1f",
    "DEL": "\x7f",
    "newline": "line\n",
    "tab": "a\tb",
    "C1 control": "a\x85b",
}
GOOD_USERS = ["x" * 128, "é" * 64, "€" * 42 + "xy", "😀" * 32, "a", "with space", "a|b:c~%{}", "ünï-cödé"]

BAD_SCORES = [MAX + 1, -(MAX + 1), 2**63 - 1, -(2**63)]
BAD_REQUEST_IDS = {
    "129 ASCII bytes": "r" * 129,
    "129 bytes in 65 chars": "é" * 64 + "r",
    "129 bytes in 43 chars": "€" * 43,
}


# ---- requests ---------------------------------------------------------------------------------------------


class Req:
    """Request builders; `send` finds the RPC from the request's type."""

    @staticmethod
    def update(board: str, user: str, score: int = 1, request_id: str | None = None) -> pb.UpdateScoreRequest:
        request = pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=score)
        if request_id is not None:
            request.request_id = request_id
        return request

    @staticmethod
    def batch(board: str, updates: list[tuple]) -> pb.BatchUpdateScoresRequest:
        """`updates`: (user, score) or (user, score, request_id)."""
        items = [pb.ScoreUpdate(user_id=u[0], score=u[1], request_id=(*u, "")[2]) for u in updates]
        return pb.BatchUpdateScoresRequest(leaderboard=board, updates=items)

    @staticmethod
    def rank(board: str, user: str) -> pb.GetRankRequest:
        return pb.GetRankRequest(leaderboard=board, user_id=user)

    @staticmethod
    def ranks(board: str, users: list[str]) -> pb.GetRanksRequest:
        return pb.GetRanksRequest(leaderboard=board, user_ids=users)

    @staticmethod
    def top(board: str, offset: int = 0, limit: int = 0) -> pb.GetTopRequest:
        return pb.GetTopRequest(leaderboard=board, offset=offset, limit=limit)

    @staticmethod
    def around(board: str, user: str, radius: int = 0) -> pb.GetAroundRequest:
        return pb.GetAroundRequest(leaderboard=board, user_id=user, radius=radius)

    @staticmethod
    def remove(board: str, user: str) -> pb.RemoveMemberRequest:
        return pb.RemoveMemberRequest(leaderboard=board, user_id=user)

    @staticmethod
    def every_rpc(board: str, user: str = "m1") -> list[Any]:
        """One ordinary request of every Leaderboard RPC."""
        return [
            Req.update(board, user),
            Req.batch(board, [(user, 1)]),
            Req.rank(board, user),
            Req.ranks(board, [user]),
            Req.top(board),
            Req.around(board, user),
            Req.remove(board, user),
        ]


def rpc_of(request: Any) -> str:
    name = type(request).__name__
    return "CreateLeaderboard" if name == "LeaderboardConfig" else name.removesuffix("Request")


def send(client: Client, request: Any, timeout: float = T) -> Any:
    rpc = rpc_of(request)
    service = client.admin if rpc in ("CreateLeaderboard", "GetLeaderboard", "GetShardMap") else client.lb
    return getattr(service, rpc)(request, timeout=timeout)


def update(client: Client, *args: Any) -> tuple[int, int, bool]:
    r = send(client, Req.update(*args))
    return r.score, r.rank, r.applied


def top(client: Client, board: str, offset: int = 0, limit: int = 1000) -> tuple[list[tuple[str, int, int]], int]:
    r = send(client, Req.top(board, offset, limit))
    return [(e.user_id, e.score, e.rank) for e in r.entries], r.total


def score_of(client: Client, board: str, user: str) -> int:
    return send(client, Req.rank(board, user)).entry.score


def board_names(client: Client) -> list[str]:
    return [c.name for c in client.admin.ListLeaderboards(admin_pb2.ListLeaderboardsRequest(), timeout=T).leaderboards]


def populate(client: Client, board: str = "b", count: int = 8, **config: Any) -> list[tuple[str, int, int]]:
    """A board with members m0.. (scores -3, 2, 7, ...) spread over four shards; returns its full page."""
    client.create(board, boundaries=CUTS, **config)
    send(client, Req.batch(board, [(f"m{i}", 5 * i - 3) for i in range(count)]))
    return top(client, board)[0]


def members_where_they_belong(client: Client, board: str) -> None:
    """Shard sizes add up to the board's total, and each shard holds exactly the members its range covers."""
    entries, total = top(client, board)
    while len(entries) < total:
        entries += top(client, board, len(entries))[0]
    shards = client.admin.GetShardMap(admin_pb2.GetShardMapRequest(leaderboard=board), timeout=T).shards
    expected = []
    for s in shards:
        low = s.lower if s.HasField("lower") else -(2**64)
        high = s.upper if s.HasField("upper") else 2**64
        expected.append(sum(1 for _, score, _ in entries if low <= score < high))
    assert [s.members for s in shards] == expected
    assert sum(expected) == total == len(entries)


# ---- checking refusals ------------------------------------------------------------------------------------


def stored(node_addresses: list[str]) -> dict[tuple[str, bytes], bytes]:
    """Every key of every node with its serialised value."""
    data = {}
    for address in node_addresses:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port)) as node:
            for key in node.scan_iter(count=1000):
                data[(address, key)] = node.dump(key)
    return data


def marks_cleared(node_addresses: list[str], within: float = 10.0) -> None:
    """Waits until no node holds a pending-write mark: the marks of answered writes are cleared in the background
    (docs/architecture.md write path step 6), so stored data settles only once they are."""
    deadline = time.monotonic() + within
    for address in node_addresses:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port)) as node:
            while any(node.zcard(key) for key in node.scan_iter(match="rs:m:*")):
                assert time.monotonic() < deadline, f"pending marks on {address} not cleared within {within}s"
                time.sleep(0.01)


class Refusals:
    """Collects what went wrong over a table of requests that must all be refused."""

    def __init__(self, client: Client, node_addresses: list[str]) -> None:
        self.client = client
        self.node_addresses = node_addresses
        self.problems: list[str] = []
        marks_cleared(node_addresses)
        self.before = stored(node_addresses)

    def expect(self, label: str, request: Any, code: grpc.StatusCode, *names: str, call: Any = None) -> None:
        """The request must fail with `code`, its message naming each of `names`."""
        label = f"{rpc_of(request)} {label}" if call is None else label
        try:
            send(self.client, request) if call is None else call(request, timeout=T)
        except grpc.RpcError as error:
            details = error.details() or ""
            if error.code() != code:
                self.problems.append(f"{label}: {error.code().name} {details!r}, expected {code.name}")
            self.problems += [f"{label}: message {details!r} does not name {n!r}" for n in names if n not in details]
        else:
            self.problems.append(f"{label}: accepted, expected {code.name}")

    def check(self) -> None:
        """Every case was refused as expected, and no stored byte changed."""
        assert not self.problems, "\n".join(self.problems)
        assert stored(self.node_addresses) == self.before, "a refused request changed stored data"


# ---- leaderboard ------------------------------------------------------------------------------------------


def test_leaderboard_names_and_configs(client, node_addresses):
    page = populate(client)
    config = admin_pb2.LeaderboardConfig
    refused = Refusals(client, node_addresses)
    for label, name in BAD_NAMES.items():
        for request in Req.every_rpc(name):
            refused.expect(label, request, INVALID, "leaderboard")
        refused.expect(label, admin_pb2.GetShardMapRequest(leaderboard=name), INVALID, "leaderboard")
        refused.expect(label, admin_pb2.GetLeaderboardRequest(name=name), INVALID, "name")
        refused.expect(label, config(name=name), INVALID, "name")
    for label, bad, field in (
        ("equal cuts", config(name="cfg", boundaries=[10, 10]), "boundaries[1]"),
        ("descending cuts", config(name="cfg", boundaries=[20, 30, 10]), "boundaries[2]"),
        ("cut above 2^53-1", config(name="cfg", boundaries=[MAX + 1]), "boundaries[0]"),
        ("cut below -(2^53-1)", config(name="cfg", boundaries=[-(MAX + 1), 0]), "boundaries[0]"),
        ("unknown sort order", config(name="cfg", sort_order=9), "sort_order"),
        ("unknown operator", config(name="cfg", operator=9), "operator"),
        ("negative expected members", config(name="cfg", expected_members=-1), "expected_members"),
        ("expected members above 10^10", config(name="cfg", expected_members=10**10 + 1), "expected_members"),
    ):
        refused.expect(label, bad, INVALID, field)
    refused.expect("of a refused config", admin_pb2.GetLeaderboardRequest(name="cfg"), NOT_FOUND, "cfg")
    refused.check()
    assert board_names(client) == ["b"]

    # The longest name and every allowed character work end to end; cuts at ±(2^53-1) are legal.
    for name in GOOD_NAMES:
        assert client.create(name, boundaries=[-MAX, 0, MAX]).name == name
        assert update(client, name, "u", 3) == (3, 1, True)
        assert top(client, name) == ([("u", 3, 1)], 1)
        assert send(client, admin_pb2.GetLeaderboardRequest(name=name)).name == name
        assert send(client, admin_pb2.GetShardMapRequest(leaderboard=name)).leaderboard == name
    assert sorted(board_names(client)) == sorted(["b", *GOOD_NAMES])
    assert top(client, "b")[0] == page


def test_unknown_leaderboard_is_not_found(client, node_addresses):
    page = populate(client)
    refused = Refusals(client, node_addresses)
    for request in Req.every_rpc("nope"):
        refused.expect("", request, NOT_FOUND, "nope")
    refused.expect("", admin_pb2.GetShardMapRequest(leaderboard="nope"), NOT_FOUND, "nope")
    refused.expect("", admin_pb2.GetLeaderboardRequest(name="nope"), NOT_FOUND, "nope")
    refused.check()
    assert board_names(client) == ["b"]
    assert top(client, "b")[0] == page

    # A board created after lookups failed can be used at once: the router must not go on saying NOT_FOUND
    # ("once a call has returned, every later read reflects it").
    client.create("nope", boundaries=CUTS)
    for request in Req.every_rpc("nope"):
        send(client, request)
    assert top(client, "nope") == ([], 0)


def test_a_board_created_through_the_router_is_known_to_it_at_once(client, control_plane_dsn):
    """The router remembers unknown board names for a while; its own CreateLeaderboard must not leave the new
    board behind that memory, even when no epoch notification comes (here its listener connection is cut, as a
    network blip would; without the cut the same failure shows up now and then, as a race)."""
    deadline = time.monotonic() + T
    with psycopg.connect(control_plane_dsn, autocommit=True) as conn:
        while not (
            cut := conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (LISTENER_NAME,),
            ).fetchall()
        ):
            assert time.monotonic() < deadline, "the router's epoch listener never connected"
    assert cut == [(True,)]
    with pytest.raises(grpc.RpcError) as info:
        send(client, Req.top("late"))
    assert info.value.code() == NOT_FOUND
    client.create("late")
    assert update(client, "late", "u", 1) == (1, 1, True)
    assert top(client, "late") == ([("u", 1, 1)], 1)


# ---- user ids ---------------------------------------------------------------------------------------------


def test_user_ids(client, node_addresses):
    page = populate(client)
    client.create("empty", boundaries=CUTS)
    refused = Refusals(client, node_addresses)
    for label, user in BAD_USERS.items():
        refused.expect(label, Req.update("b", user), INVALID, "user_id")
        refused.expect(label, Req.batch("b", [("m1", 1), (user, 1), ("m2", 1)]), INVALID, "updates[1].user_id")
        refused.expect(label, Req.rank("b", user), INVALID, "user_id")
        refused.expect(label, Req.ranks("b", ["m1", user]), INVALID, "user_ids[1]")
        refused.expect(label, Req.around("b", user), INVALID, "user_id")
        refused.expect(label, Req.remove("b", user), INVALID, "user_id")
    # An unknown (but valid) user: NOT_FOUND naming it where the call is about that user.
    for board in ("b", "empty"):
        refused.expect(f"unknown on {board}", Req.rank(board, "ghost"), NOT_FOUND, "ghost")
        refused.expect(f"unknown on {board}", Req.around(board, "ghost"), NOT_FOUND, "ghost")
    refused.check()
    # ... left out of GetRanks, and not removed.
    assert [e.user_id for e in send(client, Req.ranks("b", ["ghost", "m1"])).entries] == ["m1"]
    assert send(client, Req.remove("b", "ghost")).removed is False
    assert top(client, "b")[0] == page

    # 128 bytes of UTF-8, however many characters, and any non-control character work end to end.
    client.create("ok", boundaries=CUTS)
    for i, user in enumerate(GOOD_USERS):
        assert update(client, "ok", user, 10 * i) == (10 * i, 1, True), user
        assert score_of(client, "ok", user) == 10 * i
        assert send(client, Req.around("ok", user, 1)).entries[0].user_id == user
    entries, total = top(client, "ok")
    assert [u for u, _, _ in entries] == GOOD_USERS[::-1] and total == len(GOOD_USERS)
    for user in GOOD_USERS:
        assert send(client, Req.remove("ok", user)).removed is True
    assert top(client, "ok") == ([], 0)


def test_a_user_id_that_is_not_utf8_is_invalid_argument(client, node_addresses):
    """A client in another language can put any bytes in a protobuf string. docs/api.md: user_id is UTF-8, else
    INVALID_ARGUMENT naming the field (the same holds for the board name's rule)."""
    populate(client)
    raw = client.channel.unary_unary("/rankshard.v1.Leaderboard/UpdateScore")
    refused = Refusals(client, node_addresses)
    # Field 1 leaderboard, field 2 user_id, field 3 score 5.
    refused.expect("user_id \\xff\\xfe", b"\x0a\x01b\x12\x02\xff\xfe\x18\x05", INVALID, "user_id", call=raw)
    refused.expect("leaderboard b\\xc3", b"\x0a\x02b\xc3\x12\x01u\x18\x05", INVALID, "leaderboard", call=raw)
    refused.check()
    assert update(client, "b", "u", 5) == (5, 7, True)


def test_garbage_bytes_do_not_stop_the_router(client, node_addresses):
    populate(client)
    garbage = [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x18" + b"\xff" * 11, b"\x12\x02\xff\xfe", b"\x0b\x0c"]
    marks_cleared(node_addresses)
    before = stored(node_addresses)
    for request in Req.every_rpc("b"):
        raw = client.channel.unary_unary(f"/rankshard.v1.Leaderboard/{rpc_of(request)}")
        for body in garbage:
            with pytest.raises(grpc.RpcError):
                raw(body, timeout=T)
    assert stored(node_addresses) == before
    assert update(client, "b", "after", 1)[2] is True


# ---- scores -----------------------------------------------------------------------------------------------


def test_scores(client, node_addresses):
    for name, order, operator in (("inc", "desc", "increment"), ("best", "desc", "best"), ("set", "asc", "set")):
        populate(client, name, order=order, operator=operator)
    # ±(2^53-1) are legal scores, for a new member under every operator and for SET and BEST on old ones.
    for board in ("inc", "best", "set"):
        assert update(client, board, "top", MAX)[0::2] == (MAX, True)
        assert update(client, board, "bottom", -MAX)[0::2] == (-MAX, True)
    assert update(client, "set", "m1", MAX)[0::2] == (MAX, True)
    assert update(client, "best", "m2", MAX)[0::2] == (MAX, True)
    assert top(client, "inc", 0, 1)[0] == [("top", MAX, 1)]
    entries, total = top(client, "inc")
    assert entries[-1] == ("bottom", -MAX, total)
    assert top(client, "set", 0, 1)[0] == [("bottom", -MAX, 1)]

    refused = Refusals(client, node_addresses)
    for board in ("inc", "best", "set"):
        for score in BAD_SCORES:
            label = f"{board} {score}"
            refused.expect(label, Req.update(board, "m3", score), INVALID, "score")
            refused.expect(f"{label} new member", Req.update(board, "newbie", score, "r"), INVALID, "score")
            batch = Req.batch(board, [("m3", 1), ("m4", score), ("newbie", 2)])
            refused.expect(label, batch, INVALID, "updates[1].score")
    # Increments that would leave ±(2^53-1): OUT_OF_RANGE naming the score, nothing applied.
    for label, request in (
        ("top + 1", Req.update("inc", "top", 1)),
        ("bottom - 1", Req.update("inc", "bottom", -1)),
        ("m4 + (2^53-1)", Req.update("inc", "m4", MAX)),
        ("with a request id", Req.update("inc", "top", MAX, "o1")),
    ):
        refused.expect(label, request, OUT_OF_RANGE, "score")
    lows = [u for u in (f"lo{i}" for i in range(40)) if slot_for(u) % 2 == 0][:3]  # index on one node,
    highs = [u for u in (f"hi{i}" for i in range(40)) if slot_for(u) % 2 == 1][:3]  # ... and on the other
    for label, updates, field in (
        ("last of three", [("m1", 1), ("m2", 1, "o2"), ("top", 1)], "updates[2].score"),
        ("first", [("bottom", -MAX), ("m1", 1)], "updates[0].score"),
        ("only the sum overflows", [("m5", MAX - 100), ("m5", 100)], "updates[1].score"),
        ("after both index nodes' shares", [*((u, 1) for u in lows + highs), ("top", 2)], "updates[6].score"),
        ("a new member pushed over", [("fresh", MAX), ("fresh", 1)], "updates[1].score"),
    ):
        refused.expect(label, Req.batch("inc", updates), OUT_OF_RANGE, field)
    refused.check()

    # The request ids of refused calls were not recorded, and the extremes are still reachable exactly.
    assert update(client, "inc", "top", -1, "o1")[0::2] == (MAX - 1, True)
    assert update(client, "inc", "m2", 1, "o2")[2] is True
    m4 = score_of(client, "inc", "m4")
    assert update(client, "inc", "m4", MAX - m4)[0] == MAX
    assert update(client, "inc", "m4", -MAX)[0] == 0
    assert update(client, "inc", "m4", -MAX)[0] == -MAX
    for board in ("inc", "best", "set"):
        members_where_they_belong(client, board)


# ---- request ids ------------------------------------------------------------------------------------------


def test_request_ids(client, node_addresses):
    populate(client)
    refused = Refusals(client, node_addresses)
    for label, rid in BAD_REQUEST_IDS.items():
        refused.expect(label, Req.update("b", "m1", 1, rid), INVALID, "request_id")
        refused.expect(label, Req.batch("b", [("m1", 1, "fine"), ("m2", 1, rid)]), INVALID, "updates[1].request_id")
    refused.check()
    # 128 bytes, however many characters, is accepted and recognised on a retry.
    for i, rid in enumerate(("r" * 128, "é" * 64, "€" * 42 + "rr")):
        first = update(client, "b", f"m{i}", 7, rid)
        assert first[2] is True
        assert update(client, "b", f"m{i}", 7, rid) == (first[0], first[1], False)
    members_where_they_belong(client, "b")


# ---- counts and offsets -----------------------------------------------------------------------------------


def test_counts_and_offsets(client, node_addresses):
    page = populate(client, count=30)
    refused = Refusals(client, node_addresses)
    for limit in (1001, -1, 2**31 - 1, -(2**31)):
        refused.expect(f"limit {limit}", Req.top("b", limit=limit), INVALID, "limit")
    for offset in (-1, -(2**63)):
        refused.expect(f"offset {offset}", Req.top("b", offset=offset), INVALID, "offset")
    for radius in (101, -1, 2**31 - 1):
        refused.expect(f"radius {radius}", Req.around("b", "m1", radius), INVALID, "radius")
    refused.expect("1001", Req.batch("b", [(f"n{i}", 1) for i in range(1001)]), INVALID, "updates")
    refused.expect("1001", Req.ranks("b", [f"m{i % 30}" for i in range(1001)]), INVALID, "user_ids")
    refused.check()

    # The largest allowed values work.
    assert top(client, "b", 0, 1000) == (page, 30)
    entries = send(client, Req.around("b", "m15", 100)).entries
    assert [(e.user_id, e.score, e.rank) for e in entries] == page
    entries = send(client, Req.ranks("b", [f"m{i}" for i in range(1000)])).entries
    assert [(e.user_id, e.score, e.rank) for e in entries] == page
    results = send(client, Req.batch("b", [(f"n{i}", i) for i in range(1000)])).results
    assert [r.score for r in results] == list(range(1000)) and all(r.applied for r in results)
    assert top(client, "b", 0, 1)[1] == 1030
    members_where_they_belong(client, "b")


# ---- deadlines --------------------------------------------------------------------------------------------


def test_a_passed_deadline_is_deadline_exceeded(router, client):
    populate(client)
    # Whether a write with no time left reached a node is unknowable to its client; the retry settles it.
    m6 = score_of(client, "b", "m6")
    writes = [Req.update("b", "m6", 1, "t1"), Req.batch("b", [("m6", 1, "t2")]), Req.remove("b", "m7")]
    reads = [r for r in Req.every_rpc("b", "m1") if rpc_of(r).startswith("Get")]
    for request in writes + reads:
        # A 1 µs deadline almost always passes first, but grpc rounds deadlines, so a fast answer can
        # win the race on a loaded machine: when the call fails, it must be for the deadline.
        try:
            send(client, request, timeout=0.000001)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, rpc_of(request)
    for request in writes:
        send(client, request)
    assert score_of(client, "b", "m6") == m6 + 2
    with pytest.raises(grpc.RpcError) as info:
        score_of(client, "b", "m7")
    assert info.value.code() == NOT_FOUND

    # Deterministically past the deadline inside the router: the write stalls after its index commit (the
    # step hook blocks the router's loop) until the client has given up; a retry with the request id then
    # applies the update exactly once.
    before = score_of(client, "b", "m1")  # 2: moving it up 25 crosses two shard boundaries
    stalled, release = threading.Event(), threading.Event()

    def stall(step: str) -> None:
        if step == "intent_recorded" and not stalled.is_set():
            stalled.set()
            release.wait(T)

    router.hook = stall
    try:
        call = client.lb.UpdateScore.future(Req.update("b", "m1", 25, "late"), timeout=0.3)
        assert stalled.wait(T), "the write never reached the stall"
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
        router.hook = None
    assert update(client, "b", "m1", 25, "late")[0::2] == (before + 25, False)
    assert score_of(client, "b", "m1") == before + 25
    assert update(client, "b", "m1", 1)[0] == before + 26
    members_where_they_belong(client, "b")


# ---- a node down ------------------------------------------------------------------------------------------


def test_a_node_down_is_unavailable_and_the_rest_keeps_serving(split_client, fresh_valkey):
    client, n2 = split_client, fresh_valkey
    on_n1 = [u for u in (f"a{i}" for i in range(40)) if slot_for(u) % 2 == 0][:4]  # index slots on n1
    on_n2 = [u for u in (f"b{i}" for i in range(40)) if slot_for(u) % 2 == 1][:2]
    client.create("solo")  # one shard, dealt to n1
    client.create("cut", boundaries=CUTS)  # shards on n1, n1, n2, n2
    for board in ("solo", "cut"):
        send(client, Req.batch(board, [(u, 5 + 10 * i) for i, u in enumerate(on_n1 + on_n2)]))
    cut_before = top(client, "cut")

    n2.stop()
    problems = []
    # on_n1[0] is indexed on n1; its move from 5 to 25 goes from shard (-inf, 10) on n1 to [20, 30) on n2.
    needs_n2 = [Req.update("cut", on_n1[0], 20, "retry-me"), Req.top("cut")]
    needs_n2 += [r for r in Req.every_rpc("solo", on_n2[0]) if rpc_of(r) != "GetTop"]  # indexed on n2
    for request in needs_n2:
        try:
            send(client, request)
        except grpc.RpcError as error:
            if error.code() != UNAVAILABLE or "n2" not in (error.details() or ""):
                problems.append(f"{rpc_of(request)}: {error.code().name} {error.details()!r}, expected UNAVAILABLE")
        else:
            problems.append(f"{rpc_of(request)}: served with its node down")
    assert not problems, "\n".join(problems)

    # Everything that needs only n1 keeps serving.
    assert update(client, "solo", on_n1[1], 1)[0::2] == (16, True)
    assert top(client, "solo")[1] == len(on_n1 + on_n2)
    assert score_of(client, "solo", on_n1[2]) == 25
    assert send(client, Req.around("solo", on_n1[3])).total == 6
    assert send(client, Req.remove("solo", on_n1[3])).removed is True

    # Back up: the retry with the same request id applies the update exactly once.
    n2.start()
    assert update(client, "cut", on_n1[0], 20, "retry-me")[0] == 25
    assert score_of(client, "cut", on_n1[0]) == 25
    entries, total = top(client, "cut")
    assert total == cut_before[1]
    moved = sorted((u, 25 if u == on_n1[0] else s) for u, s, _ in cut_before[0])
    assert sorted((u, s) for u, s, _ in entries) == moved
    members_where_they_belong(client, "cut")
