"""Round trips on the read and write paths (docs/architecture.md): a round trip to a node wakes it, and on a
router under moderate load most batches hold one call, so each node a call asks once less is a wake-up saved.
For a batch of a few calls (`SMALL_BATCH`), GetTop reads its page in the count's round trip when the sizes a router
saw last place it where the fresh count does (and reads it again after the count when they do not); GetRank and
UpdateScore read the index node's sizes in the index round, so the count asks again only the nodes it still
needs."""

from __future__ import annotations

import asyncio
import random

from _router import Client, RoundTrips, on_board, write_scores

from rankshard.shard_node import BoardLayout, Cluster, Entry, Update, apply_each, get_top, rank_members
from rankshard.v1 import leaderboard_pb2 as pb

BOUNDARIES = [10, 20, 30]


def _model_top(scores: dict[str, int], offset: int, limit: int) -> list[Entry]:
    """What one sorted list of all members gives: best first, ties by user id's bytes, competition ranks."""
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0].encode()))
    return [Entry(u, s, 1 + sum(1 for v in scores.values() if v > s)) for u, s in ordered[offset : offset + limit]]


def test_a_top_page_whose_place_is_known_takes_one_round_trip_per_node(control_plane_dsn: str, client: Client) -> None:
    client.create("top", boundaries=BOUNDARIES, order="desc", operator="set")
    scores = {f"u{i:02d}": 31 + i for i in range(12)} | {f"v{i:02d}": i for i in range(25)}
    write_scores(client, "top", scores)

    async def work(cluster: Cluster, layout: BoardLayout) -> tuple[list[Entry], list[Entry], dict[str, int]]:
        first, _ = await get_top(cluster, layout, 0, 10)  # learns the sizes
        trips = RoundTrips()
        for node in cluster.nodes.values():
            node.observer = trips
        second, total = await get_top(cluster, layout, 2, 6)
        assert total == len(scores)
        return first, second, trips.count

    first, second, trips = on_board(control_plane_dsn, "top", work)
    assert first == _model_top(scores, 0, 10)
    assert second == _model_top(scores, 2, 6)
    assert set(trips.values()) == {1}, trips  # every node once: the page rode in the count's round trip


def test_a_top_page_moved_by_other_routers_writes_is_read_where_the_fresh_count_puts_it(
    control_plane_dsn: str, client: Client
) -> None:
    """Between two reads of a router, writes through another router change the sizes of the shards above the
    page: the page read with the count (where the old sizes put it) is set aside, and the answer is the page the
    fresh count places, for pages inside one shard and across shard boundaries alike."""
    client.create("moving", boundaries=BOUNDARIES, order="desc", operator="set")
    rng = random.Random(11)
    scores = {f"m{i:02d}": rng.randrange(-5, 45) for i in range(40)}
    write_scores(client, "moving", scores)
    windows = [(0, 10), (3, 7), (8, 12), (15, 20), (30, 15), (0, 60)]

    async def work(cluster: Cluster, layout: BoardLayout) -> list[tuple[int, int, list[Entry], list[Entry]]]:
        out = []
        for round_ in range(6):
            for offset, limit in windows:
                got, total = await get_top(cluster, layout, offset, limit)
                assert total == len(scores)
                out.append((offset, limit, got, _model_top(scores, offset, limit)))
            # Another router's writes: this router's last sizes are now wrong for the shards they touched.
            fresh = {f"n{round_}-{i}": rng.randrange(-5, 45) for i in range(7)}
            moved = {u: rng.randrange(-5, 45) for u in rng.sample(sorted(scores), 5)}
            await asyncio.to_thread(write_scores, client, "moving", fresh | moved)
            scores.update(fresh | moved)
        return out

    for offset, limit, got, expected in on_board(control_plane_dsn, "moving", work):
        assert got == expected, (offset, limit)


def test_a_rank_takes_one_round_trip_per_node_its_counts_need(control_plane_dsn: str, client: Client) -> None:
    """Once a router has seen the board's sizes, a rank reads the member's index node and, in the same round trip,
    that node's sizes; the count then asks only the nodes not asked yet and the node of the member's shard."""
    client.create("ranks", boundaries=BOUNDARIES, order="desc", operator="set")
    rng = random.Random(5)
    scores = {f"r{i:02d}": rng.randrange(-5, 45) for i in range(40)}
    write_scores(client, "ranks", scores)

    async def work(cluster: Cluster, layout: BoardLayout) -> list[tuple[str, int, int, int]]:
        await rank_members(cluster, layout, ["r00"])  # learns the sizes
        out = []
        for user in sorted(scores):
            trips = RoundTrips()
            for node in cluster.nodes.values():
                node.observer = trips
            ((entry, total),) = await rank_members(cluster, layout, [user])  # type: ignore[misc]
            assert total == len(scores)
            index_node = cluster.index_of(layout, user)[0].id
            shard_node = layout.shards[layout.map.shard_for(entry.score).id].node
            expected = len(cluster.nodes) + (shard_node == index_node)
            out.append((user, entry.rank, sum(trips.count.values()), expected))
        return out

    answers = on_board(control_plane_dsn, "ranks", work)
    for user, rank, trips, expected in answers:
        assert rank == 1 + sum(1 for v in scores.values() if v > scores[user]), user
        assert trips == expected, (user, trips, expected)
    assert {e for *_, e in answers} == {2, 3}  # both cases met


def test_an_update_takes_one_round_trip_per_node_its_rank_needs(control_plane_dsn: str, client: Client) -> None:
    """Once a router has seen the board's sizes, an update that keeps its member in its shard (no crossing, the
    usual update) commits at the member's index node and reads that node's sizes in the same round trip; the shard
    write and its rank then ask the member's shard node and the nodes not asked yet."""
    client.create("writes", boundaries=BOUNDARIES, order="desc", operator="set")
    rng = random.Random(9)
    scores = {f"w{i:02d}": rng.randrange(-5, 45) for i in range(30)}
    write_scores(client, "writes", scores)

    async def work(cluster: Cluster, layout: BoardLayout) -> list[tuple[str, int, int, int]]:
        await rank_members(cluster, layout, ["w00"])  # learns the sizes
        out = []
        for user in sorted(scores):
            cell = sum(1 for b in BOUNDARIES if scores[user] >= b)
            score = rng.randrange(([-5, *BOUNDARIES])[cell], ([*BOUNDARIES, 45])[cell])  # in the member's shard
            await cluster.forgets.drain()  # the last update's background clearing goes before counting starts
            trips = RoundTrips()
            for node in cluster.nodes.values():
                node.observer = trips
            (outcome,) = await apply_each(cluster, layout, [Update(user, score)])
            for node in cluster.nodes.values():
                node.observer = None
            scores[user] = score
            index_node = cluster.index_of(layout, user)[0].id
            shard_node = layout.shards[layout.map.shard_for(score).id].node
            expected = len(cluster.nodes) + (shard_node == index_node)
            assert not isinstance(outcome, Exception)
            out.append((user, outcome.rank, sum(trips.count.values()), expected))
        return out

    answers = on_board(control_plane_dsn, "writes", work)
    for user, _, trips, expected in answers:
        assert trips == expected, (user, trips, expected)
    assert {e for *_, e in answers} == {2, 3}  # both cases met
    final = {u: client.lb.GetRank(pb.GetRankRequest(leaderboard="writes", user_id=u)).entry.rank for u in scores}
    assert final == {u: 1 + sum(1 for v in scores.values() if v > s) for u, s in scores.items()}
