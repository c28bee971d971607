"""A node whose data is lost for good (docs/architecture.md failure model): `rankshard repair` rebuilds what survives.

Two nodes of the test's own: n1 owns the even index slots and shards s1 (-inf, 10) and s2 [10, 20); n2 owns
the odd slots and s3 [20, 30) and s4 [30, +inf) (slots are dealt round-robin, shards in runs of neighbours;
`_check_layout` verifies the shards). n2 is stopped, its data directory moved away and n2 started empty on the
same port: its index slots, its shards and its version registers are gone. Members then fall in four groups:

- indexed on n1, living on n1: untouched;
- indexed on n1, living on n2: their shards are rebuilt from the index;
- indexed on n2, living on n1: their index entries are rebuilt from the shards (score and version
  register), without their request-id records;
- indexed on n2, living on n2: gone for good, nothing on any node names them.

Repair must keep everything in the first three groups, leave the board sound (`check` clean, ranks exact
over what is left), and say what it could not recover.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import redis
from _router import Client, RouterThread, bootstrap
from click.testing import CliRunner

from rankshard.cli import main
from rankshard.cli._local import LocalValkey, free_port
from rankshard.shard_map import slot_for
from rankshard.shard_node import BoardLayout
from rankshard.shard_node import _moves as moves
from rankshard.shard_node._keys import IndexEntry
from rankshard.v1 import admin_pb2
from rankshard.v1 import leaderboard_pb2 as pb

T = 10.0
CUTS = [10, 20, 30]
BOARD = "lossy"
BASE_SCORES = [-3, 4, 12, 17, 22, 27, 33, 48]
"""First scores cycled over the members: two in each shard's range."""


def _index_node(user: str) -> str:
    return f"n{slot_for(user) % 2 + 1}"


def _shard_node(score: int) -> str:
    return "n1" if score < CUTS[1] else "n2"


def _ranked(scores: dict[str, int], descending: bool) -> list[tuple[str, int, int]]:
    sign = -1 if descending else 1
    ordered = sorted(scores.items(), key=lambda kv: (sign * kv[1], kv[0].encode()))
    return [(u, s, 1 + sum(1 for t in scores.values() if sign * t < sign * s)) for u, s in ordered]


def _cli(dsn: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--control-plane", dsn, *args])
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    return result.exit_code, result.output + (repr(result.exception) if crashed else "")


def _check_layout(client: Client) -> None:
    shards = client.admin.GetShardMap(admin_pb2.GetShardMapRequest(leaderboard=BOARD), timeout=T).shards
    assert [(s.id, s.node) for s in shards] == [("s1", "n1"), ("s2", "n1"), ("s3", "n2"), ("s4", "n2")]


def _top(client: Client) -> tuple[list[tuple[str, int, int]], int]:
    r = client.lb.GetTop(pb.GetTopRequest(leaderboard=BOARD, limit=1000), timeout=T)
    return [(e.user_id, e.score, e.rank) for e in r.entries], r.total


def _update(client: Client, user: str, delta: int, rid: str) -> pb.UpdateScoreResponse:
    return client.lb.UpdateScore(
        pb.UpdateScoreRequest(leaderboard=BOARD, user_id=user, score=delta, request_id=rid), timeout=T
    )


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[LocalValkey, LocalValkey]]:
    """n1 and n2: Valkey processes of this test's own, each with its data directory."""
    started: list[LocalValkey] = []
    try:
        for name in ("n1", "n2"):
            node = LocalValkey(tmp_path / name, free_port())
            node.start()
            started.append(node)
        yield started[0], started[1]
    finally:
        for node in started:
            node.stop()


@pytest.fixture
def router(control_plane_dsn: str, nodes: tuple[LocalValkey, LocalValkey]) -> Iterator[RouterThread]:
    """A router over `nodes` whose sweeper never acts: only repair heals here (the `client` fixture of
    _fixtures_cluster calls it)."""
    asyncio.run(bootstrap(control_plane_dsn, [n.address for n in nodes]))
    thread = RouterThread(control_plane_dsn, sweep_age_ms=10**9).start()
    yield thread
    thread.stop()


def _traffic(client: Client, order: str) -> dict[str, int]:
    """48 members over all four (index node, shard node) pairs, each written with request ids; a third of
    them cross into the next shard on their second update (into the other node's from s2). Returns the
    acknowledged scores."""
    client.create(BOARD, order=order, boundaries=CUTS)
    _check_layout(client)
    scores: dict[str, int] = {}
    for i in range(48):
        user = f"m{i:02d}"
        scores[user] = _update(client, user, BASE_SCORES[i % len(BASE_SCORES)], f"{user}-0").score
    for i, user in enumerate(scores):
        delta = 10 if i % 3 == 0 else 1
        reply = _update(client, user, delta, f"{user}-1")
        assert reply.applied and reply.score == scores[user] + delta
        scores[user] = reply.score
    groups = {(_index_node(u), _shard_node(s)) for u, s in scores.items()}
    assert groups == {("n1", "n1"), ("n1", "n2"), ("n2", "n1"), ("n2", "n2")}
    return scores


def _lose_data(node: LocalValkey, tmp_path: Path) -> None:
    """Stops `node`, moves its data directory away and starts it empty on the same port."""
    node.stop()
    node.data_dir.rename(tmp_path / "lost-data")
    node.start()


def _assert_sound(dsn: str, client: Client, expected: dict[str, int], descending: bool) -> None:
    """`check` clean, and every read equals the single sorted list of `expected`."""
    code, out = _cli(dsn, "check", "-l", BOARD)
    assert code == 0, out
    assert _top(client) == (_ranked(expected, descending), len(expected))
    for user, _, rank in _ranked(expected, descending):
        reply = client.lb.GetRank(pb.GetRankRequest(leaderboard=BOARD, user_id=user), timeout=T)
        assert (reply.entry.score, reply.entry.rank, reply.total) == (expected[user], rank, len(expected)), user


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_repair_after_a_node_lost_its_data_keeps_every_member_that_survived(
    control_plane_dsn: str, client: Client, nodes: tuple[LocalValkey, LocalValkey], tmp_path: Path, order: str
) -> None:
    """Nothing that survived on n1 is deleted; the board is sound and its ranks exact over what is left,
    for writes after repair too; repair says what it could not recover, and a second run does nothing."""
    descending = order == "desc"
    scores = _traffic(client, order)
    _lose_data(nodes[1], tmp_path)

    code, out = _cli(control_plane_dsn, "repair")
    assert code == 0, out
    gone = {u for u, s in scores.items() if _index_node(u) == _shard_node(s) == "n2"}
    reindexed = sum(1 for u, s in scores.items() if _index_node(u) == "n2" and _shard_node(s) == "n1")
    rebuilt = sum(1 for u, s in scores.items() if _index_node(u) == "n1" and _shard_node(s) == "n2")
    survivors = {u: s for u, s in scores.items() if u not in gone}
    _assert_sound(control_plane_dsn, client, survivors, descending)
    assert f"members rewritten {rebuilt}," in out
    assert f"index entries rebuilt {reindexed}," in out
    assert f"{BOARD}: lost: request-id records of {reindexed} members" in out
    # The members indexed on n2 that lived in s3 and s4 are named by no node: repair says so, and how many
    # were in those shards as far as anything that survived tells.
    assert f"{BOARD}: lost: members indexed on n2 that lived in shards s3, s4" in out
    # n2 held half the index slots: as many as were rebuilt into s3 and s4 from n1's index, by estimate.
    assert f"about {rebuilt}" in out

    for n, user in enumerate(sorted(survivors)):
        reply = _update(client, user, 1 + n % 3, f"{user}-after")
        survivors[user] = reply.score
        total = len(survivors)
        assert reply.applied and reply.rank == next(k for u, _, k in _ranked(survivors, descending) if u == user)
        assert 1 <= reply.rank <= total
    _assert_sound(control_plane_dsn, client, survivors, descending)

    code, again = _cli(control_plane_dsn, "repair")
    assert code == 0, again
    assert "lost:" not in again
    assert (
        f"{BOARD}: descriptors restored 0, moves finished 0, members rewritten 0, stray copies removed 0, "
        "index entries rebuilt 0, index entries merged 0"
    ) in again


def test_updates_between_the_loss_and_repair_are_merged_with_the_surviving_scores(
    control_plane_dsn: str, client: Client, nodes: tuple[LocalValkey, LocalValkey], tmp_path: Path
) -> None:
    """Until repair, a member whose index entry was lost is new to the index: an update commits an entry
    that starts from the submitted value, its shard (which registers a newer version) ignores it, and the
    call fails on the lost shards' descriptors. Repair merges the two under the board's operator
    (increment: the surviving score plus what was added since), and the client's retry is a duplicate. A
    member nothing of which survived comes back as new, with what its updates since the loss gave it."""
    scores = _traffic(client, "desc")
    _lose_data(nodes[1], tmp_path)
    late = list(
        itertools.islice((u for u, s in scores.items() if _index_node(u) == "n2" and _shard_node(s) == "n1"), 3)
    )
    assert len(late) == 3
    # And one that moved from n1 to n2 on its second update, and was lost: n1 registers its removal at
    # version 2, above the version 1 of its new entry, so its update is ignored there too.
    first = {u: BASE_SCORES[i % len(BASE_SCORES)] for i, u in enumerate(scores)}
    reborn = next(
        u
        for u, s in scores.items()
        if _index_node(u) == "n2" and _shard_node(first[u]) == "n1" and _shard_node(s) == "n2"
    )
    with pytest.raises(grpc.RpcError):
        _update(client, reborn, 2, f"{reborn}-late")
    scores[reborn] = 2
    late.append(reborn)
    for user in late[:3]:
        # 2 falls in s1 (n1), where the member's surviving copy is registered at version 2: ignored there.
        with pytest.raises(grpc.RpcError) as failed:
            _update(client, user, 2, f"{user}-late")
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        scores[user] += 2

    code, out = _cli(control_plane_dsn, "repair", "-l", BOARD)
    assert code == 0, out
    survivors = {u: s for u, s in scores.items() if u in late or not _index_node(u) == _shard_node(s) == "n2"}
    _assert_sound(control_plane_dsn, client, survivors, True)
    assert ", index entries merged 4" in out
    for user in late:
        retry = _update(client, user, 2, f"{user}-late")
        assert not retry.applied
    _assert_sound(control_plane_dsn, client, survivors, True)


class _Crash(Exception):
    pass


Removals = dict[str, list[object]]


def _copies(node: LocalValkey, user: str) -> dict[str, float]:
    """The shards of node `node` holding `user`, with its stored score in each."""
    with redis.Redis(host="127.0.0.1", port=node.port) as r:
        found = {k.decode().rsplit("/", 1)[1]: r.zscore(k, user) for k in r.scan_iter(f"rs:z:{BOARD}/*")}
    return {shard: score for shard, score in found.items() if score is not None}


def _cross_then_die(router: RouterThread, client: Client, scores: dict[str, int]) -> str:
    """A member indexed on n2 crossing from s1 to s2 (both on n1), through a router that dies right after the
    crossing's destination step; returns the member (its score in `scores` is the crossing's)."""
    mover = next(u for u, s in scores.items() if _index_node(u) == "n2" and 0 <= s < 10)

    def crash(step: str) -> None:
        if step == "destination_written":
            router.hook = None
            raise _Crash(step)

    router.hook = crash
    with pytest.raises(grpc.RpcError):
        _update(client, mover, 10, f"{mover}-cross")
    scores[mover] += 10
    return mover


def _repaired_after_losing_n2(
    dsn: str, client: Client, nodes: tuple[LocalValkey, LocalValkey], tmp_path: Path, scores: dict[str, int]
) -> str:
    """n2's data lost, then `repair`: the board is sound over what survived; returns repair's output."""
    _lose_data(nodes[1], tmp_path)
    code, out = _cli(dsn, "repair", "-l", BOARD)
    assert code == 0, out
    survivors = {u: s for u, s in scores.items() if not _index_node(u) == _shard_node(s) == "n2"}
    _assert_sound(dsn, client, survivors, True)
    return out


def test_a_crossing_within_a_node_leaves_one_copy_whatever_the_crash(
    control_plane_dsn: str, router: RouterThread, client: Client, nodes: tuple[LocalValkey, LocalValkey], tmp_path: Path
) -> None:
    """A member crossing between two shards of one node is written into the destination and dropped from the
    source in one call: a router that dies right after it leaves one copy, and when the member's index (on n2) is
    lost too, repair rebuilds the entry from that copy without guessing."""
    scores = _traffic(client, "desc")
    mover = _cross_then_die(router, client, scores)
    assert _copies(nodes[0], mover) == {"s2": -scores[mover]}
    assert "guessed" not in _repaired_after_losing_n2(control_plane_dsn, client, nodes, tmp_path, scores)


def test_a_move_under_way_when_its_index_was_lost_keeps_one_copy(
    control_plane_dsn: str,
    router: RouterThread,
    client: Client,
    nodes: tuple[LocalValkey, LocalValkey],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The member's destination was written and its source not yet cleared when its index (on n2) was lost:
    both copies are on n1, under one version register, as a router of an earlier release left a crossing within
    a node when it died between the two calls it made (emulated: the router here takes every crossing's removal
    in a call of its own). One copy stays, the better score (scores on a board mostly improve, and here the move
    went to the better one), and repair says it guessed."""
    scores = _traffic(client, "desc")
    source_removals = moves._source_removals

    def in_calls_of_their_own(layout: BoardLayout, entries: Sequence[IndexEntry]) -> tuple[Removals, Removals]:
        staying, leaving = source_removals(layout, entries)
        return {}, {**leaving, **staying}

    monkeypatch.setattr(moves, "_source_removals", in_calls_of_their_own)
    mover = _cross_then_die(router, client, scores)
    assert set(_copies(nodes[0], mover)) == {"s1", "s2"}
    out = _repaired_after_losing_n2(control_plane_dsn, client, nodes, tmp_path, scores)
    assert f"{BOARD}: guessed: 1 rebuilt members were in two shards at one version" in out
