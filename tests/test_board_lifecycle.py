"""Creating and deleting boards through real routers over real nodes, with a node down part of the way.

Node n1 is a shared session node, n2 a Valkey process of the test's own that it stops and starts again; the
index slots and the shards of a board cut at CUTS are dealt over both, so every board needs both nodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
import redis
from _processes import RouterProcess
from _router import Client

from rankshard.cli._local import LocalValkey
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0
"""Seconds: the deadline of every call, and of every wait on a condition."""

CUTS = [10, 20, 30]
MEMBERS = [("a", 5), ("b", 15), ("c", 25), ("d", 35), ("e", 35)]


def error_of(call: Callable[..., object], request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=T)
    return info.value


def listed(client: Client) -> list[str]:
    return [b.name for b in client.admin.ListLeaderboards(admin_pb2.ListLeaderboardsRequest(), timeout=T).leaderboards]


def top(client: Client, board: str) -> tuple[list[tuple[str, int, int]], int]:
    r = client.lb.GetTop(pb.GetTopRequest(leaderboard=board, limit=100), timeout=T)
    return [(e.user_id, e.score, e.rank) for e in r.entries], r.total


def fill(client: Client, board: str) -> None:
    """MEMBERS, with request ids (so request-id records exist), and one member removed again (a tombstone)."""
    for i, (user, score) in enumerate(MEMBERS):
        client.lb.UpdateScore(
            pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=score, request_id=f"r{i}"), timeout=T
        )
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=board, user_id="gone", score=1), timeout=T)
    client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard=board, user_id="gone"), timeout=T)


FILLED = ([("d", 35, 1), ("e", 35, 1), ("c", 25, 3), ("b", 15, 4), ("a", 5, 5)], 5)
"""`top` of a board after `fill`."""


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + T
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# ---- creation is all or nothing, and resumable ------------------------------------------------------------


def test_a_create_that_fails_part_way_leaves_no_board_and_can_be_retried(
    split_client: Client, fresh_valkey: LocalValkey
):
    split_client.create("other")
    fresh_valkey.stop()

    error = error_of(split_client.admin.CreateLeaderboard, admin_pb2.LeaderboardConfig(name="weekly", boundaries=CUTS))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "n2" in error.details()
    # Nothing half made is visible: not listed, unknown to every call, and the name is not taken.
    assert listed(split_client) == ["other"]
    for call in (
        lambda: top(split_client, "weekly"),
        lambda: split_client.admin.GetLeaderboard(admin_pb2.GetLeaderboardRequest(name="weekly"), timeout=T),
    ):
        assert code_of(call) == grpc.StatusCode.NOT_FOUND
    retry = error_of(split_client.admin.CreateLeaderboard, admin_pb2.LeaderboardConfig(name="weekly", boundaries=CUTS))
    assert retry.code() == grpc.StatusCode.UNAVAILABLE

    fresh_valkey.start()
    created = split_client.create("weekly", boundaries=CUTS)
    assert list(created.boundaries) == CUTS
    assert listed(split_client) == ["other", "weekly"]
    fill(split_client, "weekly")
    assert top(split_client, "weekly") == FILLED

    # Another configuration for a name whose creation did not finish is refused, naming what to do.
    fresh_valkey.stop()
    error_of(split_client.admin.CreateLeaderboard, admin_pb2.LeaderboardConfig(name="half", boundaries=CUTS))
    fresh_valkey.start()
    other = error_of(split_client.admin.CreateLeaderboard, admin_pb2.LeaderboardConfig(name="half", boundaries=[1]))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS and "same one" in other.details()
    assert listed(split_client) == ["other", "weekly"]


# ---- delete ------------------------------------------------------------------------------------------------


def keys_of(addresses: list[str], board: str) -> list[str]:
    """Every key of `board` on the nodes at `addresses`."""
    found = []
    for address in addresses:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), decode_responses=True) as node:
            found += node.scan_iter(match=f"rs:?:{board}/*", count=1000)
    return found


def delete(client: Client, name: str) -> admin_pb2.DeleteLeaderboardResponse:
    return client.admin.DeleteLeaderboard(admin_pb2.DeleteLeaderboardRequest(name=name), timeout=T)


def test_delete_removes_the_board_everywhere_and_the_name_can_be_made_again(
    split_client: Client, control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey
):
    addresses = [node_addresses[0], fresh_valkey.address]
    split_client.create("weekly", boundaries=CUTS)
    split_client.create("x:weekly", boundaries=CUTS)  # its keys end in "weekly/" too, behind a colon
    fill(split_client, "weekly")
    fill(split_client, "x:weekly")
    assert keys_of(addresses, "weekly")
    second = RouterProcess(control_plane_dsn).start()  # another router process, with the board cached
    other_router = Client(second.port)
    try:
        assert top(other_router, "weekly") == FILLED

        assert delete(split_client, "weekly").deleted
        assert code_of(lambda: top(split_client, "weekly")) == grpc.StatusCode.NOT_FOUND
        wait_for(
            lambda: code_of(lambda: top(other_router, "weekly")) == grpc.StatusCode.NOT_FOUND,
            "the other router to forget the deleted board",
        )
        assert listed(split_client) == ["x:weekly"]
        assert keys_of(addresses, "weekly") == []
        assert top(split_client, "x:weekly") == top(other_router, "x:weekly") == FILLED

        # Made again, under another configuration: empty, and nothing of the old board shows, on either router,
        # not even a key a write still in flight during the delete would have left (it is removed first).
        with redis.Redis(host="127.0.0.1", port=fresh_valkey.port) as n2:
            n2.hset("rs:i:weekly/1:0", "a", "5|1|s1|||")
        split_client.create("weekly", order="asc", boundaries=[100])
        assert keys_of(addresses, "weekly") and not [k for k in keys_of(addresses, "weekly") if k.startswith("rs:i:")]
        assert top(split_client, "weekly") == ([], 0)
        wait_for(
            lambda: code_of(lambda: top(other_router, "weekly")) == grpc.StatusCode.OK,
            "the other router to serve the board made again",
        )
        assert top(other_router, "weekly") == ([], 0)
        r = other_router.lb.UpdateScore(
            pb.UpdateScoreRequest(leaderboard="weekly", user_id="a", score=3, request_id="r0"), timeout=T
        )
        assert (r.score, r.rank, r.applied) == (3, 1, True)  # a new member, not the old one's 5 + 3 nor a repeat of r0
        assert top(split_client, "weekly") == ([("a", 3, 1)], 1)
    finally:
        other_router.close()
        second.stop()


def test_a_delete_with_a_node_down_says_so_and_finishes_when_run_again(
    split_client: Client, node_addresses: list[str], fresh_valkey: LocalValkey
):
    split_client.create("weekly", boundaries=CUTS)
    fill(split_client, "weekly")
    fresh_valkey.stop()

    error = error_of(split_client.admin.DeleteLeaderboard, admin_pb2.DeleteLeaderboardRequest(name="weekly"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "n2" in error.details() and "delete it again" in error.details()
    # Hidden already: unknown to reads, not listed, and the name not free for another board yet.
    assert code_of(lambda: top(split_client, "weekly")) == grpc.StatusCode.NOT_FOUND
    assert listed(split_client) == []
    taken = error_of(split_client.admin.CreateLeaderboard, admin_pb2.LeaderboardConfig(name="weekly"))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS and "being deleted" in taken.details()

    fresh_valkey.start()
    assert delete(split_client, "weekly").deleted
    assert keys_of([node_addresses[0], fresh_valkey.address], "weekly") == []
    split_client.create("weekly", boundaries=CUTS)
    assert top(split_client, "weekly") == ([], 0)


def test_delete_of_an_unknown_board_or_a_bad_name(split_client: Client):
    split_client.create("weekly")
    missing = error_of(split_client.admin.DeleteLeaderboard, admin_pb2.DeleteLeaderboardRequest(name="monthly"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "monthly" in missing.details()
    for bad in ("", "bad name", "a/b"):
        error = error_of(split_client.admin.DeleteLeaderboard, admin_pb2.DeleteLeaderboardRequest(name=bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in error.details()
    assert delete(split_client, "weekly").deleted
    again = error_of(split_client.admin.DeleteLeaderboard, admin_pb2.DeleteLeaderboardRequest(name="weekly"))
    assert again.code() == grpc.StatusCode.NOT_FOUND
    assert listed(split_client) == []
