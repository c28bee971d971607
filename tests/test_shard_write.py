"""A batch's shard writes on one node go in one call (docs/architecture.md write path step 3), yet each shard is fenced
on its own: a shard being carved from beside one that is not, or a shard the caller's map no longer describes beside
one it does, each get what a call of their own would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
from _router import Client

from rankshard.shard_map import ControlPlane, Job, JobState, JobStep, StaleMap
from rankshard.shard_node import (
    BoardLayout,
    Carver,
    Cluster,
    Update,
    UpdateCall,
    audit_board,
    connect_cluster,
    plan_move,
)
from rankshard.shard_node._keys import dirty_key, shard_key
from rankshard.v1 import leaderboard_pb2 as pb

BOARD = "sw"
CUTS = [100, 200, 300]
"""Four shards over the two nodes, two neighbours on each."""
SEEDS = {f"u{i}": i * 4 for i in range(100)}
"""Members in every shard (scores 0..396)."""

R = TypeVar("R")


class _Stop(Exception):
    """Raised from a job's step hook: the job stops there, as if its process had died."""


def _on_board(dsn: str, work: Callable[[ControlPlane, Cluster, BoardLayout], Awaitable[R]]) -> R:
    """`work`'s result on a control plane, cluster and layout of the test's own (as the CLI builds them)."""

    async def main() -> R:
        async with await ControlPlane.open(dsn) as cp:
            cluster = await connect_cluster(cp)
            try:
                return await work(cp, cluster, BoardLayout(await cp.get_board(BOARD), await cp.shard_map(BOARD)))
            finally:
                await cluster.aclose()

    return asyncio.run(main())


@pytest.fixture
def seeded(client: Client) -> Client:
    client.create(BOARD, boundaries=CUTS)
    updates = [pb.ScoreUpdate(user_id=u, score=s) for u, s in SEEDS.items()]
    client.lb.BatchUpdateScores(pb.BatchUpdateScoresRequest(leaderboard=BOARD, updates=updates), timeout=10)
    return client


async def _layout(_: ControlPlane, __: Cluster, layout: BoardLayout) -> BoardLayout:
    return layout


def _pair_on_one_node(layout: BoardLayout) -> tuple[str, str, str]:
    """Two shards on one node, and that node: (the one to move, the one that stays, node id)."""
    for node, shards in layout.by_node.items():
        if len(shards) >= 2:
            return shards[0].id, shards[1].id, node
    raise AssertionError(f"no node holds two shards: {layout.by_node}")


def _member_in(layout: BoardLayout, shard_id: str) -> str:
    return next(u for u, s in sorted(SEEDS.items()) if layout.map.shard_for(s).id == shard_id)


def _move_stopped_at_catch_up(dsn: str, shard_id: str) -> Job:
    """`shard_id` moving to the other node, stopped once copied: MIGRATING, its writes noted for the catch-up."""

    def stop(job: Job) -> None:
        if job.step is JobStep.CATCHUP:
            raise _Stop

    async def work(cp: ControlPlane, cluster: Cluster, layout: BoardLayout) -> Job:
        other = next(n for n in layout.by_node if n != layout.shards[shard_id].node)
        job = await plan_move(cp, BOARD, shard_id, other, "test", 30)
        with pytest.raises(_Stop):
            await Carver(cp, cluster, "test", on_step=stop).run(job)
        return job

    return _on_board(dsn, work)


def _resume(dsn: str, job: Job) -> None:
    async def work(cp: ControlPlane, cluster: Cluster, _: BoardLayout) -> None:
        done = await Carver(cp, cluster, "test").run(job)
        assert (done.state, done.step) == (JobState.DONE, JobStep.DONE), done

    _on_board(dsn, work)


def _board_is(client: Client, dsn: str, expected: dict[str, int]) -> None:
    """Every member's score, rank and place as a plain sorted list's, and `check` finds nothing."""
    top = client.lb.GetTop(pb.GetTopRequest(leaderboard=BOARD, limit=1000), timeout=10)
    model = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    assert ([(e.user_id, e.score) for e in top.entries], top.total) == (model, len(expected))
    for user in ("u0", "u30", "u60", "u99"):
        rank = client.lb.GetRank(pb.GetRankRequest(leaderboard=BOARD, user_id=user), timeout=10).entry.rank
        assert rank == 1 + sum(1 for s in expected.values() if s > expected[user])

    async def audit(_: ControlPlane, cluster: Cluster, layout: BoardLayout) -> None:
        assert await audit_board(cluster, layout) == []

    _on_board(dsn, audit)


def _node(address: str) -> redis.Redis:
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), decode_responses=True)


def test_one_batch_into_a_shard_being_moved_and_one_that_is_not_loses_no_write(
    seeded: Client, control_plane_dsn: str, node_addresses: list[str]
) -> None:
    """The moving shard notes its member for the job's catch-up, the other shard notes nothing; once the move is
    done both writes are on the board."""
    layout = _on_board(control_plane_dsn, _layout)
    moving, staying, node = _pair_on_one_node(layout)
    m, a = _member_in(layout, moving), _member_in(layout, staying)
    job = _move_stopped_at_catch_up(control_plane_dsn, moving)
    updates = [pb.ScoreUpdate(user_id=m, score=1), pb.ScoreUpdate(user_id=a, score=2)]  # both stay in their shards
    reply = seeded.lb.BatchUpdateScores(pb.BatchUpdateScoresRequest(leaderboard=BOARD, updates=updates), timeout=10)
    assert [(r.score, r.applied) for r in reply.results] == [(SEEDS[m] + 1, True), (SEEDS[a] + 2, True)]
    with _node(node_addresses[int(node[1:]) - 1]) as r:
        assert r.smembers(dirty_key(BOARD, moving)) == {m}
        assert not r.exists(dirty_key(BOARD, staying))
        assert r.zscore(shard_key(BOARD, staying), a) == -(SEEDS[a] + 2)  # descending: stored negated
    _resume(control_plane_dsn, job)
    _board_is(seeded, control_plane_dsn, {**SEEDS, m: SEEDS[m] + 1, a: SEEDS[a] + 2})


def test_a_shard_the_map_no_longer_describes_beside_one_it_does_is_written_once_retried_under_the_new_map(
    seeded: Client, control_plane_dsn: str, node_addresses: list[str]
) -> None:
    """A writer holding the map of before a move (read while it ran: the index takes it) writes both shards' members
    in one call to the node: the shard still described is written, the moved one refuses (`StaleMap`), and the call
    run again under the new map writes the moved member in its new shard and answers both."""
    before = _on_board(control_plane_dsn, _layout)
    moving, staying, node = _pair_on_one_node(before)
    m, a = _member_in(before, moving), _member_in(before, staying)
    job = _move_stopped_at_catch_up(control_plane_dsn, moving)
    stale = _on_board(control_plane_dsn, _layout)  # epoch of the floor
    _resume(control_plane_dsn, job)

    async def write(_: ControlPlane, cluster: Cluster, fresh: BoardLayout) -> list[tuple[int, int]]:
        call = UpdateCall(cluster, stale, [Update(m, 3, "rm"), Update(a, 4, "ra")])
        with pytest.raises(StaleMap):
            await call.run(stale)
        with _node(node_addresses[int(node[1:]) - 1]) as r:
            assert r.zscore(shard_key(BOARD, staying), a) == -(SEEDS[a] + 4)
        assert fresh.map.epoch > stale.map.epoch and moving not in fresh.shards
        return [(o.score, o.rank) for o in await call.run(fresh)]

    expected = {**SEEDS, m: SEEDS[m] + 3, a: SEEDS[a] + 4}
    rank = {u: 1 + sum(1 for s in expected.values() if s > expected[u]) for u in (m, a)}
    assert _on_board(control_plane_dsn, write) == [(expected[m], rank[m]), (expected[a], rank[a])]
    _board_is(seeded, control_plane_dsn, expected)


def _crossing_score(layout: BoardLayout, user: str) -> int:
    """A score for `user` in a shard of the other node than its own (a crossing whose steps meet both nodes)."""
    here = layout.shards[layout.map.shard_for(SEEDS[user]).id].node
    return next(s for s in range(0, 400, 50) if layout.shards[layout.map.shard_for(s).id].node != here)


def test_members_crossing_out_of_a_shard_being_moved_and_out_of_one_that_is_not_lose_no_write(
    seeded: Client, control_plane_dsn: str, node_addresses: list[str]
) -> None:
    """One batch's members leave two shards of one node in one drop call: the shard being moved notes its member
    for the job's catch-up, the other notes nothing; once the move is done both members are where they went."""
    layout = _on_board(control_plane_dsn, _layout)
    moving, staying, node = _pair_on_one_node(layout)
    m, a = _member_in(layout, moving), _member_in(layout, staying)
    job = _move_stopped_at_catch_up(control_plane_dsn, moving)
    target = {m: _crossing_score(layout, m), a: _crossing_score(layout, a)}
    updates = [pb.ScoreUpdate(user_id=u, score=s - SEEDS[u]) for u, s in target.items()]  # the board increments
    reply = seeded.lb.BatchUpdateScores(pb.BatchUpdateScoresRequest(leaderboard=BOARD, updates=updates), timeout=10)
    assert [r.score for r in reply.results] == [target[m], target[a]]
    with _node(node_addresses[int(node[1:]) - 1]) as r:
        assert r.smembers(dirty_key(BOARD, moving)) == {m}
        assert not r.exists(dirty_key(BOARD, staying))
        assert r.zscore(shard_key(BOARD, staying), a) is None
    _resume(control_plane_dsn, job)
    _board_is(seeded, control_plane_dsn, {**SEEDS, **target})


async def _recorded_run(
    cluster: Cluster, layout: BoardLayout, updates: list[Update]
) -> tuple[list[int], list[tuple[str, list[str]]]]:
    """`updates` run as one call, with each round trip the call made to a node: (node id, the scripts it ran)."""
    trips: list[tuple[str, list[str]]] = []
    for node in cluster.nodes.values():
        run_many = node.run_many

        async def recorded(batch, *, lazy=False, _id=node.id, _run=run_many):  # type: ignore[no-untyped-def]
            trips.append((_id, [script.name for script, _, _ in batch]))
            return await _run(batch, lazy=lazy)

        node.run_many = recorded  # type: ignore[method-assign]
    outcomes = await UpdateCall(cluster, layout, updates).run(layout)
    return [o.score for o in outcomes], trips  # type: ignore[union-attr]


def _node_of(layout: BoardLayout, score: int) -> str:
    return layout.shards[layout.map.shard_for(score).id].node


def test_a_batch_crossing_out_of_many_shards_costs_each_node_one_write_call_and_one_drop_call(
    seeded: Client, control_plane_dsn: str
) -> None:
    """However many shards a batch's crossings leave and reach, each node gets one call writing all its shards (the
    members that stay in theirs included) and dropping the crossings that stay on the node, and one dropping from
    all its shards those that left for another node; every member ends where a sorted list puts it."""
    layout = _on_board(control_plane_dsn, _layout)
    users = sorted(SEEDS)
    # Two of every three members cross (to the shard above or below), the third stays in its own.
    target = {u: (SEEDS[u] + (100 if i % 2 else 200)) % 400 if i % 3 else SEEDS[u] + 1 for i, u in enumerate(users)}
    left = {layout.map.shard_for(SEEDS[u]).id for u in users if target[u] != SEEDS[u] + 1}
    assert len(left) == len(layout.shards)  # every shard is left by some member
    pairs = [(_node_of(layout, SEEDS[u]), _node_of(layout, target[u])) for u in users if target[u] != SEEDS[u] + 1]
    staying, leaving = {a for a, b in pairs if a == b}, {a for a, b in pairs if a != b}
    assert staying == leaving == set(layout.by_node)  # on every node, crossings of both kinds

    async def write(_: ControlPlane, cluster: Cluster, fresh: BoardLayout) -> tuple[list[int], list[tuple[str, str]]]:
        scores, trips = await _recorded_run(cluster, fresh, [Update(u, target[u] - SEEDS[u]) for u in users])
        return scores, [(n, script) for n, scripts in trips for script in scripts]

    scores, calls = _on_board(control_plane_dsn, write)
    assert scores == [target[u] for u in users]
    assert sorted(n for n, script in calls if script == "shard_cross") == sorted(staying), calls
    assert sorted(n for n, script in calls if script == "shard_drop") == sorted(leaving), calls
    assert not [c for c in calls if c[1] in ("shard_write", "shard_apply", "shard_remove")], calls
    _board_is(seeded, control_plane_dsn, target)


def test_a_batch_whose_crossings_stay_on_their_nodes_makes_no_drop_round(
    seeded: Client, control_plane_dsn: str
) -> None:
    """Crossings between neighbouring shards of one node: each node gets one call writing and dropping them, with
    the ranks' count behind it in the same round trip; no drop call follows, and the board is as a sorted list."""
    layout = _on_board(control_plane_dsn, _layout)
    runs = {n: [s.id for s in shards] for n, shards in layout.by_node.items()}
    assert all(len(r) == 2 for r in runs.values()), runs  # two neighbouring shards per node
    # Every member crosses into the other shard of its node: 100 points up, or down from the upper one.
    upper = {shards[0].id for shards in layout.by_node.values()}  # best first: each node's better shard
    target = {u: s - 100 if layout.map.shard_for(s).id in upper else s + 100 for u, s in SEEDS.items()}
    assert all(_node_of(layout, SEEDS[u]) == _node_of(layout, target[u]) for u in SEEDS)

    async def write(
        _: ControlPlane, cluster: Cluster, fresh: BoardLayout
    ) -> tuple[list[int], list[tuple[str, list[str]]]]:
        return await _recorded_run(cluster, fresh, [Update(u, target[u] - SEEDS[u]) for u in sorted(SEEDS)])

    scores, trips = _on_board(control_plane_dsn, write)
    assert scores == [target[u] for u in sorted(SEEDS)]
    crossed = [(n, scripts) for n, scripts in trips if "shard_cross" in scripts]
    assert sorted(n for n, _ in crossed) == sorted(layout.by_node), trips
    assert all(
        scripts[0] == "shard_cross" and scripts[1:] in (["shard_tally"], ["shard_count"]) for _, scripts in crossed
    ), trips
    assert not [t for t in trips if "shard_drop" in t[1] or "shard_write" in t[1]], trips
    _board_is(seeded, control_plane_dsn, target)


def test_a_crossing_within_a_node_into_a_shard_the_map_no_longer_describes_keeps_its_source_until_retried(
    seeded: Client, control_plane_dsn: str, node_addresses: list[str]
) -> None:
    """A writer holding the map of before a move sends a crossing between two shards of one node, the destination
    being the moved one: its fence refuses, so the source keeps the member (a crossing leaves its source only once
    its destination holds it); run again under the new map, the member is in its new shard alone."""
    before = _on_board(control_plane_dsn, _layout)
    moving, staying, node = _pair_on_one_node(before)
    a = _member_in(before, staying)
    low = before.shards[moving].lower
    assert low is not None  # the better shard of the pair (best first), above the other
    job = _move_stopped_at_catch_up(control_plane_dsn, moving)
    stale = _on_board(control_plane_dsn, _layout)
    _resume(control_plane_dsn, job)

    async def write(_: ControlPlane, cluster: Cluster, fresh: BoardLayout) -> int:
        call = UpdateCall(cluster, stale, [Update(a, low - SEEDS[a], "ra")])
        with pytest.raises(StaleMap):
            await call.run(stale)
        with _node(node_addresses[int(node[1:]) - 1]) as r:
            assert r.zscore(shard_key(BOARD, staying), a) == -SEEDS[a]
        (outcome,) = await call.run(fresh)
        return outcome.score  # type: ignore[union-attr]

    assert _on_board(control_plane_dsn, write) == low
    with _node(node_addresses[int(node[1:]) - 1]) as r:
        assert r.zscore(shard_key(BOARD, staying), a) is None
    _board_is(seeded, control_plane_dsn, {**SEEDS, a: low})
