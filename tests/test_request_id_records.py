"""Where a member's request-id records are found: its index entry names their generation (one lookup), and
entries from before that field existed still find them. Through a real router over real nodes; the
stored data is rearranged on the nodes to stand for states that otherwise take minutes to reach."""

from __future__ import annotations

import grpc
import redis

from shard_map import user_hash
from shard_node._keys import DEDUP_GEN_MS, dedup_key, index_key

from rankshard.v1 import leaderboard_pb2 as pb

from _router import Client


def _update(client: Client, board: str, user: str, score: int, rid: str) -> tuple[int, bool]:
    response = client.lb.UpdateScore(
        pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=score, request_id=rid), timeout=10)
    return response.score, response.applied


def _conflicts(client: Client, board: str, user: str, score: int, rid: str) -> bool:
    try:
        _update(client, board, user, score, rid)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        return True
    return False


def _index_node(node_addresses: list[str], board: str, user: str) -> tuple[redis.Redis, str]:
    key = index_key(board, user_hash(user))
    for address in node_addresses:
        host, port = address.rsplit(":", 1)
        node = redis.Redis(host=host, port=int(port), decode_responses=True)
        if node.hexists(key, user):
            return node, key
        node.close()
    raise AssertionError(f"no node holds {user}'s index entry")


def _records(node: redis.Redis, board: str, user: str) -> tuple[int, str]:
    """The generation holding `user`'s records, and their stored form."""
    stem = dedup_key(board, user_hash(user))
    found = [(int(k.rsplit(":", 1)[1]), node.hget(k, user)) for k in node.scan_iter(f"{stem}:*")]
    found = [(g, v) for g, v in found if v is not None]
    assert len(found) == 1, found
    return found[0]


def test_entries_written_before_they_named_a_generation_still_find_their_records(client, node_addresses):
    client.create("old")
    assert _update(client, "old", "u", 5, "r1") == (5, True)
    node, key = _index_node(node_addresses, "old", "u")
    score, ver, home, from_, to, rgen = node.hget(key, "u").split("|")
    assert rgen != ""
    node.hset(key, "u", "|".join((score, ver, home, from_, to)))  # the five-field form

    assert _conflicts(client, "old", "u", 6, "r1")
    assert _update(client, "old", "u", 5, "r1") == (5, False)
    assert _update(client, "old", "u", 1, "r2") == (6, True)
    assert node.hget(key, "u").split("|")[5] == rgen  # named again once written
    assert _update(client, "old", "u", 5, "r1") == (5, False)
    node.close()


def test_an_update_that_changes_nothing_still_records_where_its_request_id_went(client, node_addresses):
    client.create("best", operator="best")
    assert _update(client, "best", "u", 50, "r1") == (50, True)
    node, key = _index_node(node_addresses, "best", "u")
    gen, stored = _records(node, "best", "u")
    # Stand for an hour-window member whose last request id came one generation earlier: the same
    # records (their times are relative to their generation's start) one generation back.
    stem = dedup_key("best", user_hash("u"))
    ts, rest = stored.split("|", 1)
    node.delete(f"{stem}:{gen}")
    node.hset(f"{stem}:{gen - 1}", "u", f"{int(ts) + DEDUP_GEN_MS}|{rest}")
    fields = node.hget(key, "u").split("|")
    node.hset(key, "u", "|".join([*fields[:5], str((gen - 1) % 100)]))

    assert _conflicts(client, "best", "u", 60, "r1")  # found one generation back
    assert _update(client, "best", "u", 10, "r2") == (50, False)  # not applied: the entry is not written...
    moved_to, _ = _records(node, "best", "u")
    assert moved_to >= gen  # ... but the records moved to the current generation
    assert node.hget(key, "u").split("|")[5] == str(moved_to % 100)
    assert _conflicts(client, "best", "u", 60, "r1")
    assert _conflicts(client, "best", "u", 60, "r2")
    assert _update(client, "best", "u", 10, "r2") == (50, False)
    node.close()
