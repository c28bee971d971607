"""Tombstones (shard_node._keys: Versions, Tombstones): what removals and members leaving a shard leave on
the nodes is collected once old enough, members coming back after that get versions above anything left
of them, and a late old write still cannot bring a removed member back while its tombstone is needed.
Through a real router over real nodes; collection is run with an age limit of the test's choosing (its
clock), the way the router's sweeper runs it with the real one."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from _router import Client, on_board

from rankshard.shard_node import (
    Collected,
    audit_board,
    collect_tombstones,
    import_members,
)
from rankshard.shard_node._keys import TOMBSTONE_TTL_MS, registered_version
from rankshard.shard_node._moves import apply_call, shard_call
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0
CUTS = [10, 20, 30]
"""Four shards over the two nodes: members crossing them leave tombstones on both."""


@pytest.fixture
def nodes(node_addresses: list[str]) -> Iterator[list[redis.Redis]]:
    clients = [redis.Redis(host=a.rsplit(":", 1)[0], port=int(a.rsplit(":", 1)[1])) for a in node_addresses]
    yield clients
    for c in clients:
        c.close()


def _collect(dsn: str, board: str, max_age_ms: int, budget: int = 10**6) -> Collected:
    return on_board(dsn, board, lambda c, lay: collect_tombstones(c, lay, max_age_ms=max_age_ms, budget=budget))


def _stored(nodes: list[redis.Redis], board: str, kind: str) -> dict[tuple[int, bytes, bytes], bytes]:
    """Every field of the board's index ('i') or version-register ('v') hashes: (node, key, user) -> value."""
    found = {}
    for n, node in enumerate(nodes):
        for key in node.scan_iter(f"rs:{kind}:{board}/*"):
            for user, value in node.hgetall(key).items():
                found[(n, key, user)] = value
    return found


def _tombstones(nodes: list[redis.Redis], board: str) -> dict[tuple[int, bytes, bytes], bytes]:
    """Every member's tombstone (not the index hashes' floors, field '')."""
    return {k: v for kind in "iv" for k, v in _stored(nodes, board, kind).items() if v.startswith(b"~") and k[2]}


def _update(client: Client, board: str, user: str, score: int, rid: str = "") -> tuple[int, bool]:
    r = client.lb.UpdateScore(
        pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=score, request_id=rid), timeout=T
    )
    return r.score, r.applied


def _remove(client: Client, board: str, user: str) -> bool:
    return client.lb.RemoveMember(pb.RemoveMemberRequest(leaderboard=board, user_id=user), timeout=T).removed


def _rank(client: Client, board: str, user: str) -> tuple[int, int]:
    entry = client.lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id=user), timeout=T).entry
    return entry.score, entry.rank


def _absent(client: Client, board: str, user: str) -> bool:
    with pytest.raises(grpc.RpcError) as info:
        client.lb.GetRank(pb.GetRankRequest(leaderboard=board, user_id=user), timeout=T)
    return info.value.code() == grpc.StatusCode.NOT_FOUND


def _versions(nodes: list[redis.Redis], board: str, user: str) -> list[int]:
    """What every node's version register holds for `user` (tombstones included)."""
    return [registered_version(v.decode()) for (_, _, u), v in _stored(nodes, board, "v").items() if u == user.encode()]


def _index_version(nodes: list[redis.Redis], board: str, user: str) -> int:
    [value] = [v for (_, _, u), v in _stored(nodes, board, "i").items() if u == user.encode()]
    return int(value.split(b"|")[1])


def test_removed_members_leave_nothing_on_the_nodes_once_their_tombstones_are_collected(
    client, nodes, control_plane_dsn
):
    client.create("gone", boundaries=CUTS)
    users = [f"u{i}" for i in range(40)]
    for i, user in enumerate(users):
        _update(client, "gone", user, i % 10)
        _update(client, "gone", user, 10 * (i % 4), rid="cross")  # most cross into another shard
    _update(client, "gone", "keeper", 25)
    for user in users:
        assert _remove(client, "gone", user)
    left = _tombstones(nodes, "gone")
    assert {u for _, _, u in left} >= {u.encode() for u in users}
    assert all(v.count(b"|") == 1 for v in left.values())  # '~ver|ms': each knows when it was written

    # Young tombstones stay: a retry of a removed member's request id is still recognised...
    assert _collect(control_plane_dsn, "gone", max_age_ms=60_000).deleted == 0
    assert _tombstones(nodes, "gone") == left
    assert _update(client, "gone", "u1", 10, rid="cross") == (11, False)
    # ... and once they are older than the limit, every one goes: nothing of the removed members is left.
    collected = _collect(control_plane_dsn, "gone", max_age_ms=0)
    assert collected.deleted == len(left) and collected.rounds == len(nodes)
    assert _tombstones(nodes, "gone") == {}
    # What is left instead: a floor per index slot (in its first hash), the highest version it lost.
    floors = {
        (n, key): registered_version(v.decode()) for (n, key, u), v in _stored(nodes, "gone", "i").items() if not u
    }
    highest: dict[tuple[int, bytes], int] = {}
    for (n, key, _), value in left.items():
        if key.startswith(b"rs:i:"):
            first = key.rsplit(b":", 1)[0] + b":0"
            highest[(n, first)] = max(highest.get((n, first), 0), registered_version(value.decode()))
    assert floors == highest
    removed = {u.encode() for u in users}
    assert not [k for kind in "iv" for k in _stored(nodes, "gone", kind) if k[2] in removed]
    assert _rank(client, "gone", "keeper") == (25, 1)
    assert on_board(control_plane_dsn, "gone", audit_board) == []


def test_a_member_back_after_collection_gets_versions_above_any_left_and_its_writes_land(
    client, nodes, control_plane_dsn
):
    client.create("back", boundaries=CUTS)
    for user in ("m", "i"):
        for score in (1, 12, 25, 35, 5):  # through every shard, so both nodes' registers know the member
            _update(client, "back", user, score - (_rank(client, "back", user)[0] if score != 1 else 0))
    _update(client, "back", "other", 15)
    assert _remove(client, "back", "m") and _remove(client, "back", "i")
    old = {u: _versions(nodes, "back", u) for u in ("m", "i")}
    assert all(len(v) == len(nodes) for v in old.values())
    # Stand for a node whose collection lags: its registers keep the old incarnations' tombstones while
    # the index forgot the members.
    lagging = {k: v for k, v in _tombstones(nodes, "back").items() if k[1].startswith(b"rs:v:")}
    assert _collect(control_plane_dsn, "back", max_age_ms=0).deleted > 0
    for (n, key, user), value in lagging.items():
        nodes[n].hset(key, user, value)

    assert _update(client, "back", "m", 3) == (3, True)  # a new member: the value as sent
    assert _index_version(nodes, "back", "m") > max(old["m"])
    assert _rank(client, "back", "m") == (3, 2)
    for delta, expected in ((10, (13, 2)), (10, (23, 1)), (-20, (3, 2))):  # across both nodes' shards
        _update(client, "back", "m", delta)
        assert _rank(client, "back", "m") == expected
    # An import of a member that went the same way lands too.
    assert on_board(control_plane_dsn, "back", lambda c, lay: import_members(c, lay, [("i", 33)])) == 1
    assert _index_version(nodes, "back", "i") > max(old["i"])
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard="back"), timeout=T)
    assert [(e.user_id, e.score, e.rank) for e in top.entries] == [("i", 33, 1), ("other", 15, 2), ("m", 3, 3)]
    assert on_board(control_plane_dsn, "back", audit_board) == []


def test_a_late_old_write_does_not_bring_a_removed_member_back_while_its_tombstone_is_needed(
    client, nodes, control_plane_dsn
):
    client.create("late", boundaries=CUTS)
    assert _update(client, "late", "m", 15) == (15, True)
    _update(client, "late", "other", 5)
    version = _index_version(nodes, "late", "m")
    assert _remove(client, "late", "m")

    async def late_write(cluster, layout):
        # The shard write of m's last update, arriving after the removal (a writer that stalled).
        shard = next(s.id for s in layout.map.shards if s.lower == 10)
        return await shard_call(cluster, layout, shard, apply_call(layout, shard, ["m", layout.stored(15), version]))

    for max_age_ms in (TOMBSTONE_TTL_MS, 60_000):  # the real limit, and one still above the tombstone's age
        assert _collect(control_plane_dsn, "late", max_age_ms=max_age_ms).deleted == 0
        on_board(control_plane_dsn, "late", late_write)
        assert _absent(client, "late", "m")
        top = client.lb.GetTop(pb.GetTopRequest(leaderboard="late"), timeout=T)
        assert [(e.user_id, e.score) for e in top.entries] == [("other", 5)] and top.total == 1
    assert on_board(control_plane_dsn, "late", audit_board) == []


def test_tombstones_from_older_releases_are_stamped_when_first_seen_then_collected(client, nodes, control_plane_dsn):
    client.create("old", boundaries=CUTS)
    _update(client, "old", "m", 15)
    _update(client, "old", "n", 15)
    assert _remove(client, "old", "m") and _remove(client, "old", "n")
    # The plain '~ver' tombstones older releases wrote.
    plain = {k: b"~7" for k in _tombstones(nodes, "old")}
    for (n, key, user), value in plain.items():
        nodes[n].hset(key, user, value)

    before = int(time.time() * 1000)
    stamped = _collect(control_plane_dsn, "old", max_age_ms=60_000)
    assert stamped.deleted == 0 and stamped.stamped <= len(plain)  # the router's own sweeper may stamp some too
    now = _tombstones(nodes, "old")
    assert set(now) == set(plain)
    for value in now.values():
        ver, ms = value[1:].split(b"|")
        assert ver == b"7" and int(ms) >= before - 1000  # its age counts from when it was first seen

    # Still a tombstone: m comes back above its old versions; then every tombstone goes.
    assert _update(client, "old", "m", 2) == (2, True)
    assert _index_version(nodes, "old", "m") > 7
    assert _collect(control_plane_dsn, "old", max_age_ms=0).deleted > 0
    assert _tombstones(nodes, "old") == {}
    assert _rank(client, "old", "m") == (2, 1) and _absent(client, "old", "n")


def test_the_walk_goes_on_in_small_steps_where_the_last_one_stopped(client, nodes, control_plane_dsn):
    client.create("walk", boundaries=CUTS, expected_members=100)  # a few hundred hashes per node
    for i in range(30):
        _update(client, "walk", f"u{i}", 15)
        assert _remove(client, "walk", f"u{i}")
    count = len(_tombstones(nodes, "walk"))

    async def walk(cluster, layout) -> tuple[Collected, int]:
        # Until every tombstone went (the router's sweeper steps the same walk meanwhile, deleting none).
        total, steps = Collected(), 0
        while total.deleted < count and steps < 1000:
            total += await collect_tombstones(cluster, layout, max_age_ms=0, budget=50)
            steps += 1
        return total, steps

    total, steps = on_board(control_plane_dsn, "walk", walk)
    assert total.deleted == count and _tombstones(nodes, "walk") == {}
    assert steps > 4  # each step looked at a part only


def test_the_routers_sweeper_runs_the_collection(client, nodes):
    client.create("swept", boundaries=CUTS, expected_members=100)
    _update(client, "swept", "m", 15)
    assert _remove(client, "swept", "m")
    plain = {k: b"~9" for k in _tombstones(nodes, "swept")}
    for (n, key, user), value in plain.items():
        nodes[n].hset(key, user, value)
    deadline = time.monotonic() + 30
    while any(v == b"~9" for v in _tombstones(nodes, "swept").values()):  # stamped by the router itself
        assert time.monotonic() < deadline, _tombstones(nodes, "swept")
        time.sleep(0.1)
    assert all(v.startswith(b"~9|") for v in _tombstones(nodes, "swept").values())


def test_a_members_version_still_counts_its_updates(client, nodes):
    client.create("count")
    for _ in range(3):
        _update(client, "count", "m", 1)
    assert _index_version(nodes, "count", "m") == 3  # what the Jepsen checker relies on
