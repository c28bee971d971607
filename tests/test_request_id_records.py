"""Where a member's request-id records are found: its index entry names their generation (one lookup), and
entries from before that field existed still find them. Through a real router over real nodes; the
stored data is rearranged on the nodes to stand for states that otherwise take minutes to reach."""

from __future__ import annotations

import itertools

import grpc
import pytest
import redis
from _records import pack, packed_ids, packed_records, text_record
from _router import Client

from rankshard.shard_map import Buckets, slot_for, user_hash
from rankshard.shard_node._keys import (
    DEDUP_BUCKETS,
    DEDUP_DEPTH,
    DEDUP_GEN_MS,
    DEDUP_WINDOW_MS,
    dedup_key,
    index_key,
)
from rankshard.v1 import leaderboard_pb2 as pb


def _update(client: Client, board: str, user: str, score: int, rid: str) -> tuple[int, bool]:
    response = client.lb.UpdateScore(
        pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=score, request_id=rid), timeout=10
    )
    return response.score, response.applied


def _conflicts(client: Client, board: str, user: str, score: int, rid: str) -> bool:
    try:
        _update(client, board, user, score, rid)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        return True
    return False


def _index_node(node_addresses: list[str], board: str, user: str) -> tuple[redis.Redis, str]:
    key = index_key(board, Buckets(), user_hash(user))  # boards created without expected_members
    for address in node_addresses:
        host, port = address.rsplit(":", 1)
        node = redis.Redis(host=host, port=int(port), decode_responses=True)
        if node.hexists(key, user):
            return node, key
        node.close()
    raise AssertionError(f"no node holds {user}'s index entry")


def _records(node: redis.Redis, board: str, user: str) -> tuple[int, bytes]:
    """The generation holding `user`'s records, and their stored bytes."""
    stem = dedup_key(board, user_hash(user))
    kwargs = node.connection_pool.connection_kwargs
    with redis.Redis(host=kwargs["host"], port=kwargs["port"]) as raw:  # records are bytes
        found = [(int(k.rsplit(":", 1)[1]), raw.hget(k, user)) for k in node.scan_iter(f"{stem}:*")]
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
    # records (their times are the node's clock) one generation back.
    stem = dedup_key("best", user_hash("u"))
    node.delete(f"{stem}:{gen}")
    node.hset(f"{stem}:{gen - 1}", "u", stored)
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


def _stored_ids(stored: bytes) -> list[str]:
    """The request ids of stored records, oldest first."""
    return [rid.decode() for rid in packed_ids(stored)]


def test_a_member_keeps_its_last_ids_and_none_older_than_the_window(client, node_addresses):
    client.create("keep")
    for i in range(20):
        assert _update(client, "keep", "u", 1, f"r{i}") == (i + 1, True)
    node, _ = _index_node(node_addresses, "keep", "u")
    gen, stored = _records(node, "keep", "u")
    last = [f"r{i}" for i in range(20 - DEDUP_DEPTH, 20)]
    assert _stored_ids(stored) == last  # dedup memory stays bounded, however busy the member
    for i in range(20 - DEDUP_DEPTH, 20):
        assert _update(client, "keep", "u", 1, f"r{i}") == (i + 1, False)
    node.close()

    # Records moved in from older generations stay in the current one's hash: one older than the window
    # there is no longer recognised, and is dropped at the next write, whichever id that write carries.
    assert _update(client, "keep", "v", 1, "v1") == (1, True)
    node, _ = _index_node(node_addresses, "keep", "v")
    stem = dedup_key("keep", user_hash("v"))
    for old, rid, score in (("ancient", "ancient", 5), ("older", "v2", 6)):
        gen, stored = _records(node, "keep", "v")
        aged = (gen * DEDUP_GEN_MS - DEDUP_WINDOW_MS - 1, 1, 0, old.encode())
        node.hset(f"{stem}:{gen}", "v", pack([aged, *packed_records(stored)]))
        assert _update(client, "keep", "v", 1 if rid == "v2" else 4, rid) == (score, True)
    assert _stored_ids(_records(node, "keep", "v")[1]) == ["v1", "ancient", "v2"]
    assert _update(client, "keep", "v", 4, "ancient") == (5, False)
    node.close()


def test_records_stored_as_text_by_older_releases_are_recognised_and_stored_again_packed(client, node_addresses):
    client.create("text")
    assert _update(client, "text", "u", 5, "r1") == (5, True)
    node, key = _index_node(node_addresses, "text", "u")
    gen, _ = _records(node, "text", "u")
    stem = dedup_key("text", user_hash("u"))
    # An older release's records one generation back, their times relative to its start: r1 and r2 (an id
    # whose bytes look like a record of their own), and one older than the window.
    r2 = b"1|2|3|1|x"
    old = [text_record(-DEDUP_WINDOW_MS, 1, 0, b"aged"), text_record(10, 5, 5, b"r1"), text_record(20, 2, 7, r2)]
    node.delete(f"{stem}:{gen}")
    node.hset(f"{stem}:{gen - 1}", "u", b"".join(old))
    fields = node.hget(key, "u").split("|")
    node.hset(key, "u", "|".join([*fields[:5], str((gen - 1) % 100)]))

    assert _conflicts(client, "text", "u", 6, "r1")
    # So does a batch over both index nodes (its check round reads them), and nothing of it is applied.
    others = [f"o{i}" for i in range(8)]
    assert {slot_for(o) % 2 for o in [*others, "u"]} == {0, 1}, "the batch should span both index nodes"
    batch = pb.BatchUpdateScoresRequest(
        leaderboard="text",
        updates=[
            *(pb.ScoreUpdate(user_id=o, score=1, request_id="b") for o in others),
            pb.ScoreUpdate(user_id="u", score=6, request_id="r1"),
        ],
    )
    with pytest.raises(grpc.RpcError) as refused:
        client.lb.BatchUpdateScores(batch, timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing was applied" in refused.value.details()
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard="text", limit=100), timeout=10)
    assert [(e.user_id, e.score) for e in top.entries] == [("u", 5)]
    assert _update(client, "text", "u", 2, r2.decode()) == (7, False)
    assert _update(client, "text", "u", 0, "aged") == (5, True)  # older than the window: a new request
    moved_to, stored = _records(node, "text", "u")
    assert moved_to >= gen
    records = packed_records(stored)
    assert [rid for *_, rid in records] == [b"r1", r2, b"aged"]
    assert [(value, score) for _, value, score, _ in records] == [(5, 5), (2, 7), (0, 5)]
    assert records[0][0] == (gen - 1) * DEDUP_GEN_MS + 10  # rebased to the node's clock
    assert _update(client, "text", "u", 5, "r1") == (5, False)
    node.close()


def _batch(client: Client, board: str, updates: list[tuple[str, int, str]]) -> list[tuple[int, bool]]:
    request = pb.BatchUpdateScoresRequest(
        leaderboard=board, updates=[pb.ScoreUpdate(user_id=u, score=s, request_id=r) for u, s, r in updates]
    )
    return [(r.score, r.applied) for r in client.lb.BatchUpdateScores(request, timeout=10).results]


def test_a_batch_mixing_entries_of_an_older_release_with_others_applies_each_update_once(client, node_addresses):
    client.create("mixed")
    assert _update(client, "mixed", "old", 5, "r0") == (5, True)
    node, key = _index_node(node_addresses, "mixed", "old")
    node.hset(key, "old", "|".join(node.hget(key, "old").split("|")[:5]))  # the five-field form
    # Members on the same index node, so the batch is one call, ahead of the old entry in it.
    users = [u for u in (f"m{i}" for i in range(40)) if slot_for(u) % 2 == slot_for("old") % 2][:4]
    updates = [*((u, 2, f"{u}-1") for u in users), ("old", 1, "r1")]

    assert _batch(client, "mixed", updates) == [(2, True)] * 4 + [(6, True)]
    assert _batch(client, "mixed", updates) == [(2, False)] * 4 + [(6, False)]
    for u in users:
        assert _stored_ids(_records(node, "mixed", u)[1]) == [f"{u}-1"]
    assert _stored_ids(_records(node, "mixed", "old")[1]) == ["r0", "r1"]
    assert node.hget(key, "old").split("|")[:2] == ["6", "2"]
    node.close()


def test_every_records_hash_expires_once_its_generation_has_left_the_window(client, node_addresses):
    client.create("ttl")
    assert _update(client, "ttl", "u", 1, "a") == (1, True)
    node, _ = _index_node(node_addresses, "ttl", "u")
    # Another member whose records share u's hash: same bucket, same index node.
    bucket, side = user_hash("u") % DEDUP_BUCKETS, slot_for("u") % 2
    v = next(
        f"v{i}"
        for i in itertools.count()
        if user_hash(f"v{i}") % DEDUP_BUCKETS == bucket and slot_for(f"v{i}") % 2 == side
    )
    gen, _ = _records(node, "ttl", "u")
    hash_key = f"{dedup_key('ttl', user_hash('u'))}:{gen}"
    expiry = (gen + 1) * DEDUP_GEN_MS + DEDUP_WINDOW_MS
    assert node.pexpiretime(hash_key) == expiry

    assert _update(client, "ttl", v, 1, "b") == (1, True)
    assert _records(node, "ttl", v)[0] == gen, "the test needs both members' records in one generation"
    assert node.hlen(hash_key) == 2
    assert node.pexpiretime(hash_key) == expiry
    # A hash gone (expired, or emptied) and written again gets its expiry again.
    node.delete(hash_key)
    assert _update(client, "ttl", "u", 1, "c") == (2, True)
    assert node.pexpiretime(hash_key) == expiry
    node.close()
