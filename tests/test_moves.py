"""Boundary crossings (docs/architecture.md write path step 4): one home per member, and crash repair.

A crash is injected through the router's test-only step hook: the hook raises right after a step of
the protocol is durable, which abandons the move exactly there, as a router dying would.
"""

from __future__ import annotations

import grpc
import pytest
import redis
from _router import Client, RouterThread

from rankshard.shard_node import MOVE_STEPS
from rankshard.v1 import leaderboard_pb2 as pb

BOUNDARIES = [10, 20, 30]


class InjectedCrash(Exception):
    pass


def _homes(node_addresses: list[str], board: str, user: str) -> dict[str, float]:
    """Every shard (by id) that holds `user`, with the stored score, across all nodes."""
    found = {}
    for address in node_addresses:
        host, port = address.split(":")
        with redis.Redis(host=host, port=int(port), decode_responses=True) as r:
            for key in r.scan_iter(f"rs:z:{board}/*"):
                score = r.zscore(key, user)
                if score is not None:
                    found[key.rsplit("/", 1)[1]] = score
    return found


def _expected_shard(score: int) -> str:
    return f"s{sum(1 for b in BOUNDARIES if score >= b) + 1}"


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_member_crossing_boundaries_lives_in_exactly_one_shard(
    client: Client, node_addresses: list[str], order: str
) -> None:
    client.create("crossing", order=order, operator="set", boundaries=BOUNDARIES)
    for score in [5, 15, 25, 35, 12, -3, 30, 29, 10, 9]:
        reply = client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="crossing", user_id="alice", score=score))
        assert reply.score == score and reply.applied
        stored = score if order == "asc" else -score
        assert _homes(node_addresses, "crossing", "alice") == {_expected_shard(score): stored}
    removed = client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard="crossing", user_id="alice"))
    assert removed.removed
    assert _homes(node_addresses, "crossing", "alice") == {}


@pytest.mark.parametrize("step", MOVE_STEPS)
def test_crash_after_each_move_step_is_repaired_by_the_next_write(
    router: RouterThread, client: Client, node_addresses: list[str], step: str
) -> None:
    client.create("crash", boundaries=BOUNDARIES)
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="crash", user_id="bob", score=5))
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="crash", user_id="carol", score=12))

    def crash(at: str) -> None:
        if at == step:
            raise InjectedCrash(at)

    router.hook = crash
    with pytest.raises(grpc.RpcError) as failed:
        client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="crash", user_id="bob", score=20, request_id="r1"))
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    router.hook = None

    # The commit happened before the crash: a retry with the same request id is recognised, and the
    # member's next write rolls the move forward before applying.
    retry = client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="crash", user_id="bob", score=20, request_id="r1"))
    assert (retry.score, retry.applied) == (25, False)
    after = client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="crash", user_id="bob", score=1))
    assert (after.score, after.rank) == (26, 1)
    assert _homes(node_addresses, "crash", "bob") == {"s3": -26}
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard="crash"))
    assert [(e.user_id, e.score, e.rank) for e in top.entries] == [("bob", 26, 1), ("carol", 12, 2)]
    assert top.total == 2


@pytest.mark.parametrize("step", ["intent_recorded", "source_removed"])
def test_crash_during_removal_is_finished_by_the_next_write(
    router: RouterThread, client: Client, node_addresses: list[str], step: str
) -> None:
    client.create("gone", boundaries=BOUNDARIES)
    client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="gone", user_id="dave", score=15))

    def crash(at: str) -> None:
        if at == step:
            raise InjectedCrash(at)

    router.hook = crash
    with pytest.raises(grpc.RpcError):
        client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard="gone", user_id="dave"))
    router.hook = None
    # The removal committed; the next write finishes it, then starts the member afresh.
    reply = client.lb.UpdateScore(pb.UpdateScoreRequest(leaderboard="gone", user_id="dave", score=3))
    assert reply.score == 3
    assert _homes(node_addresses, "gone", "dave") == {"s1": -3}
    assert client.lb.GetTop(pb.GetTopRequest(leaderboard="gone")).total == 1
