"""Creating and deleting boards through real routers over real nodes, with a node down part of the way.

Node n1 is a shared session node, n2 a Valkey process of the test's own that it stops and starts again; the
index slots and the shards of a board cut at CUTS are dealt over both, so every board needs both nodes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import redis

from cli._local import LocalValkey

from _router import Client, RouterThread, bootstrap
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0
"""Seconds: the deadline of every call, and of every wait on a condition."""

CUTS = [10, 20, 30]
MEMBERS = [("a", 5), ("b", 15), ("c", 25), ("d", 35), ("e", 35)]


@pytest.fixture
def split(control_plane_dsn: str, node_addresses: list[str], fresh_valkey: LocalValkey) -> Iterator[Client]:
    """A router over a shared node (n1) and `fresh_valkey` (n2), which the test may stop and start."""
    asyncio.run(bootstrap(control_plane_dsn, [node_addresses[0], fresh_valkey.address]))
    thread = RouterThread(control_plane_dsn).start()
    client = Client(thread.port)
    try:
        yield client
    finally:
        client.close()
        thread.stop()


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
        client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=score, request_id=f"r{i}"),
                              timeout=T)
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


def test_a_create_that_fails_part_way_leaves_no_board_and_can_be_retried(split: Client, fresh_valkey: LocalValkey):
    split.create("other")
    fresh_valkey.stop()

    error = error_of(split.admin.CreateLeaderboard,
                     admin_pb2.LeaderboardConfig(name="weekly", boundaries=CUTS))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "n2" in error.details()
    # Nothing half made is visible: not listed, unknown to every call, and the name is not taken.
    assert listed(split) == ["other"]
    for call in (lambda: top(split, "weekly"),
                 lambda: split.admin.GetLeaderboard(admin_pb2.GetLeaderboardRequest(name="weekly"), timeout=T)):
        assert code_of(call) == grpc.StatusCode.NOT_FOUND
    retry = error_of(split.admin.CreateLeaderboard, admin_pb2.LeaderboardConfig(name="weekly", boundaries=CUTS))
    assert retry.code() == grpc.StatusCode.UNAVAILABLE

    fresh_valkey.start()
    created = split.create("weekly", boundaries=CUTS)
    assert list(created.boundaries) == CUTS
    assert listed(split) == ["other", "weekly"]
    fill(split, "weekly")
    assert top(split, "weekly") == FILLED
