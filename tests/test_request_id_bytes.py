"""Request ids are any bytes up to 128 (docs/api.md limits): NUL, ``|``, newlines and record-like ids are stored
whole and told apart exactly, and one member's request-id records, however they got into the node, never
fail the other updates of the same script call. Through a real router over real nodes."""

from __future__ import annotations

import grpc
import pytest
import redis
from _records import packed_ids, text_record
from _router import Client

from rankshard.shard_map import user_hash
from rankshard.shard_node._keys import DEDUP_GEN_MS, dedup_key
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0
NUL_ID = "\0" * 10
# Every kind of byte the stored format gives a meaning to, and ids that only differ past one of them.
ODD_IDS = [
    "\0",
    "\0a",
    "\0b",
    "a\0",
    "|",
    "||",
    "a|b",
    "|1|x",
    "1|2|3|1|x",
    "\n",
    "\r\n",
    "line\nbreak",
    "\t|\0\n",
    "".join(map(chr, range(128))),  # 128 bytes: every ASCII byte, controls and NUL included
    "é" * 64,  # 128 bytes of two-byte UTF-8
    "\0" * 128,
]


def _update(client: Client, board: str, user: str, score: int, rid: str) -> tuple[int, bool]:
    response = client.lb.UpdateScore(
        pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=score, request_id=rid), timeout=T
    )
    return response.score, response.applied


def _batch(client: Client, board: str, updates: list[tuple[str, int, str]]) -> list[tuple[int, bool]]:
    request = pb.BatchUpdateScoresRequest(
        leaderboard=board, updates=[pb.ScoreUpdate(user_id=u, score=s, request_id=r) for u, s, r in updates]
    )
    return [(r.score, r.applied) for r in client.lb.BatchUpdateScores(request, timeout=T).results]


def _score(client: Client, board: str, user: str) -> int:
    return client.lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id=user), timeout=T).entry.score


def _records(node_addresses: list[str], board: str, user: str) -> tuple[redis.Redis, str, bytes]:
    """The node holding `user`'s request-id records, their hash and their stored bytes."""
    stem = dedup_key(board, user_hash(user))
    for address in node_addresses:
        host, port = address.rsplit(":", 1)
        node = redis.Redis(host=host, port=int(port))
        for key in node.scan_iter(f"{stem}:*"):
            raw = node.hget(key, user)
            if raw is not None:
                return node, key.decode(), raw
        node.close()
    raise AssertionError(f"no node holds {user}'s request-id records")


def _stored_ids(raw: bytes) -> list[bytes]:
    """The request ids of stored records, oldest first; fails unless every byte belongs to a well-formed record."""
    return packed_ids(raw)


def test_a_request_id_of_nul_bytes_is_recognised_and_the_members_later_ids_work(client, node_addresses):
    client.create("nul")
    assert _update(client, "nul", "victim", 1, NUL_ID) == (1, True)
    assert _update(client, "nul", "victim", 1, NUL_ID) == (1, False)  # a retry: not applied again
    assert _update(client, "nul", "victim", 1, "x") == (2, True)
    assert _update(client, "nul", "victim", 1, "y") == (3, True)
    for rid, score in ((NUL_ID, 1), ("x", 2), ("y", 3)):
        assert _update(client, "nul", "victim", 1, rid) == (score, False)
    assert _score(client, "nul", "victim") == 3
    node, _, raw = _records(node_addresses, "nul", "victim")
    assert _stored_ids(raw) == [NUL_ID.encode(), b"x", b"y"]
    node.close()


def test_request_ids_of_any_bytes_are_stored_whole_and_told_apart(client, node_addresses):
    client.create("odd")
    for user in ("u1", "u2"):  # u2 gets them in reverse order: no id is only ever first or last
        ids = ODD_IDS if user == "u1" else ODD_IDS[::-1]
        for i, rid in enumerate(ids):
            assert _update(client, "odd", user, 1, rid) == (i + 1, True), rid
            # Still recognised among the member's last 8 updates, and the newest is the first call's result.
            for back, old in enumerate(ids[max(0, i - 7) : i + 1][::-1]):
                assert _update(client, "odd", user, 1, old) == (i + 1 - back, False), old
        node, _, raw = _records(node_addresses, "odd", user)
        assert _stored_ids(raw) == [r.encode() for r in ids[-8:]]
        node.close()
        assert _score(client, "odd", user) == len(ODD_IDS)


def test_a_nul_request_id_never_fails_the_other_updates_of_its_batch(client):
    client.create("nb", boundaries=[10])
    users = ["n1", "n2", "n3"]
    rounds = [NUL_ID, "x", "y", NUL_ID, "\0x"]
    expected = {"victim": 0, **{u: 0 for u in users}}
    for i, victim_id in enumerate(rounds):
        updates = [("victim", 1, victim_id), *((u, 4, f"r{i}") for u in users)]
        applied = victim_id not in rounds[:i]
        expected["victim"] += applied
        answers = _batch(client, "nb", updates)
        for u in users:
            expected[u] += 4
        assert answers[1:] == [(expected[u], True) for u in users]
        assert answers[0][1] is applied
        # Retries of the whole batch: each update answered as the duplicate it is.
        retry = _batch(client, "nb", updates)
        assert retry[1:] == [(expected[u], False) for u in users]
    for user, score in expected.items():
        assert _score(client, "nb", user) == score


def test_concurrent_unary_updates_coalesced_with_a_nul_request_id_all_succeed(client):
    client.create("nc", boundaries=[50])
    users = [f"p{i:02d}" for i in range(30)]
    victim_ids = [NUL_ID, "x", "y", "\0\0", NUL_ID]
    for round_ in range(len(victim_ids)):
        # The victim's call goes in the middle of a burst: the router answers the burst with few script calls.
        calls = [
            client.lb.UpdateScore.future(
                pb.UpdateScoreRequest(leaderboard="nc", user_id=u, score=2, request_id=f"r{round_}"), timeout=T
            )
            for u in users[:15]
        ]
        victim = client.lb.UpdateScore.future(
            pb.UpdateScoreRequest(leaderboard="nc", user_id="victim", score=1, request_id=victim_ids[round_]), timeout=T
        )
        calls += [
            client.lb.UpdateScore.future(
                pb.UpdateScoreRequest(leaderboard="nc", user_id=u, score=2, request_id=f"r{round_}"), timeout=T
            )
            for u in users[15:]
        ]
        assert [(c.result().score, c.result().applied) for c in calls] == [(2 * round_ + 2, True)] * len(users)
        assert victim.result().applied is (victim_ids[round_] not in victim_ids[:round_])
    assert _score(client, "nc", "victim") == 4
    assert all(_score(client, "nc", u) == 10 for u in users)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: how a client in another language may send any bytes in a string."""
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize("method", ["UpdateScore", "BatchUpdateScores"])
def test_a_request_id_that_is_not_utf8_is_invalid_argument_and_nothing_is_stored(client, method):
    client.create("utf")
    bad = b"\xff\xfe\0"
    if method == "UpdateScore":
        body = _field(1, b"utf") + _field(2, b"u") + bytes([3 << 3, 5]) + _field(4, bad)
        field = "request_id"
    else:
        update = _field(1, b"u") + bytes([2 << 3, 5]) + _field(3, bad)
        body = _field(1, b"utf") + _field(2, _field(1, b"v") + bytes([2 << 3, 1])) + _field(2, update)
        field = "updates[1].request_id"
    call = client.channel.unary_unary(f"/rankshard.v1.Leaderboard/{method}")
    with pytest.raises(grpc.RpcError) as info:
        call(body, timeout=T)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"{field}: is not valid UTF-8"
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard="utf"), timeout=T)
    assert top.total == 0


@pytest.mark.parametrize("first", ["retry", "new-id"])
@pytest.mark.parametrize("damage", ["nul-then-one", "nul-then-short", "nul-last", "garbage"])
def test_a_member_whose_stored_records_are_corrupt_fails_no_neighbour_and_heals(client, node_addresses, damage, first):
    client.create("heal", boundaries=[10])
    users = ["n1", "n2", "n3"]
    assert _batch(client, "heal", [("victim", 1, "r0"), *((u, 1, "r0") for u in users)]) == [(1, True)] * 4
    node, key, _ = _records(node_addresses, "heal", "victim")
    # What the stored records (the text form of older releases) looked like after the old `%s` formatting met a
    # NUL id: the NUL record's id missing while its length counts it, then (once) a record written behind it,
    # long or short enough to end inside the missing id; or plain garbage.
    ts = b"%d" % (DEDUP_GEN_MS - 1)  # at the end of the generation of the key: inside the window
    raw = text_record(ts, 1, 1, b"r0")
    old_nul = text_record(ts, 1, 1, b"", length=len(NUL_ID))
    behind = {"nul-then-one": text_record(ts, 1, 2, b"x"), "nul-then-short": text_record(b"0", 1, 2, b"x")}
    if damage in behind:
        broken = raw + old_nul + behind[damage]
    elif damage == "nul-last":
        broken = raw + old_nul
    else:
        broken = raw + b"12|x|y|zz|\0\xff|||"
    node.hset(key, "victim", broken)

    # The neighbours sharing the script call are unaffected, whether the victim's records are read
    # (a retry) or only added to (an id never seen).
    victim = ("victim", 1, "r0") if first == "retry" else ("victim", 1, "y")
    answers = _batch(client, "heal", [victim, *((u, 1, "r1") for u in users)])
    assert answers == [(1, False) if first == "retry" else (2, True), *[(2, True)] * 3]
    # Healed at once: the damaged bytes are gone from the node, rewritten as well-formed records.
    _, _, healed = _records(node_addresses, "heal", "victim")
    assert _stored_ids(healed)[0] == b"r0"
    if first == "retry":
        assert _update(client, "heal", "victim", 1, "y") == (2, True)
    assert _batch(client, "heal", [("victim", 1, "y"), *((u, 1, "r1") for u in users)]) == [(2, False)] * 4
    assert _update(client, "heal", "victim", 1, "r0") == (1, False)  # the record before the damage is kept
    if damage in behind:  # ... and the one behind the cut record is found again
        assert _update(client, "heal", "victim", 1, "x") == (2, False)
    for user in users:  # each neighbour's own unary updates too
        assert _update(client, "heal", user, 1, "r2") == (3, True)
    _, _, healed = _records(node_addresses, "heal", "victim")
    assert _stored_ids(healed) == [b"r0", *([b"x"] if damage in behind else []), b"y"]
    assert _update(client, "heal", "victim", 1, "z") == (3, True)
    assert _update(client, "heal", "victim", 1, "z") == (3, False)
    assert _score(client, "heal", "victim") == 3
    node.close()
