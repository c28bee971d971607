"""The router's opt-in size cache (`size_cache_ms`, docs/api.md consistency): a count takes the shard sizes a router
saw on a node within the bound instead of asking it, so a rank misses other routers' writes of at most that long
ago there, never the router's own; by default every count asks every node and every read is exact."""

from __future__ import annotations

import asyncio

from _router import Client, RoundTrips, RouterThread, write_scores

from rankshard.shard_map import ControlPlane
from rankshard.shard_node import BoardLayout, Cluster, Update, apply_each, connect_cluster, rank_members
from rankshard.v1 import leaderboard_pb2 as pb

BOUNDARIES = [10, 20, 30]


def test_a_cached_count_misses_other_routers_writes_for_the_bound_and_never_its_own(
    control_plane_dsn: str, client: Client
) -> None:
    """A router caching sizes for 1 s ranks a member in the worst shard without asking the node that holds none
    of its shards; another router's new members there leave that rank as it was until the bound has passed, then
    the next rank asks the node and counts them. Its own writes there count at once, and a router without the
    cache counts the other's writes at once."""
    client.create("cached", boundaries=BOUNDARIES, order="desc", operator="set")
    write_scores(client, "cached", {"low": 0, **{f"m{i}": 12 + i for i in range(6)}})
    now = [1000.0]

    async def main() -> list[tuple[str, int, int, list[str]]]:
        async with await ControlPlane.open(control_plane_dsn) as cp:
            layout = BoardLayout(await cp.get_board("cached"), await cp.shard_map("cached"))
            cached, exact = await connect_cluster(cp), await connect_cluster(cp)
            cached.size_cache, cached.clock = 1.0, lambda: now[0]
            try:
                low_node = layout.shards[layout.map.shard_for(0).id].node
                far = next(s for s in layout.best_first if s.node != low_node)  # a shard on the other node
                score = next(v for v in range(40, -1, -1) if layout.map.shard_for(v).id == far.id)
                out = []

                async def rank(name: str, cluster: Cluster) -> None:
                    trips = RoundTrips()
                    for node in cluster.nodes.values():
                        node.observer = trips
                    ((entry, total),) = await rank_members(cluster, layout, ["low"])  # type: ignore[misc]
                    for node in cluster.nodes.values():
                        node.observer = None
                    out.append((name, entry.rank, total, trips.nodes))

                await rank("first", cached)  # asks every node: nothing cached yet
                await rank("cached", cached)
                # Another router adds two members better than "low", in the shard on the far node.
                await apply_each(exact, layout, [Update("o1", score), Update("o2", score)])
                await rank("exact", exact)
                await rank("within the bound", cached)
                now[0] += 1.01
                await rank("past the bound", cached)
                await rank("cached again", cached)
                await apply_each(cached, layout, [Update("own", score)])  # its own write to the far node
                await rank("after its own write", cached)
                out.append(("far node", 0, 0, [far.node, cached.index_of(layout, "low")[0].id]))
                return out
            finally:
                await cached.aclose()
                await exact.aclose()

    answers = {name: (rank, total, trips) for name, rank, total, trips in asyncio.run(main())}
    far_node, index_node = answers.pop("far node")[2]
    # Round trips to the far node, one more each time where it holds the index entry of "low" too (read first).
    on_far = {name: trips.count(far_node) for name, (_, _, trips) in answers.items()}
    index_read = int(far_node == index_node)
    assert (answers["first"][:2], on_far["first"]) == ((7, 7), 1 + index_read)  # nothing seen yet: counted there
    assert (answers["cached"][:2], on_far["cached"]) == ((7, 7), index_read)  # its sizes not asked for
    assert answers["exact"][:2] == (9, 9)  # without the cache: at once
    assert (answers["within the bound"][:2], on_far["within the bound"]) == ((7, 7), index_read)
    # Past the bound its sizes are read again (riding in the index read where that goes to the far node).
    assert (answers["past the bound"][:2], on_far["past the bound"]) == ((9, 9), 1)
    assert answers["cached again"][:2] == (9, 9)
    assert answers["after its own write"][:2] == (10, 10)


def test_a_router_started_with_a_size_cache_serves_ranks_from_it(control_plane_dsn: str, client: Client) -> None:
    """`size_cache_ms` reaches the router's counts: a router started with a minute's cache answers GetRank without
    counting another router's members added since on a node holding none of the member's shards, while the default
    router counts them; members added beside the member itself are counted fresh by both."""
    client.create("routed", boundaries=BOUNDARIES, order="desc", operator="set")
    write_scores(client, "routed", {"low": 0, "high": 35, "mid": 15})

    async def far_score() -> int:
        async with await ControlPlane.open(control_plane_dsn) as cp:
            layout = BoardLayout(await cp.get_board("routed"), await cp.shard_map("routed"))
        low_node = layout.shards[layout.map.shard_for(0).id].node
        far = next(s for s in layout.best_first if s.node != low_node)
        return next(v for v in range(40, -1, -1) if layout.map.shard_for(v).id == far.id)

    score = asyncio.run(far_score())
    caching = RouterThread(control_plane_dsn, size_cache_ms=60_000).start()
    try:
        cached = Client(caching.port)
        try:

            def rank(c: Client) -> tuple[int, int]:
                reply = c.lb.GetRank(pb.GetRankRequest(leaderboard="routed", user_id="low"), timeout=10)
                return reply.entry.rank, reply.total

            assert rank(cached) == (3, 3)
            write_scores(client, "routed", {f"n{i}": score for i in range(4)} | {f"k{i}": 5 for i in range(3)})
            assert rank(client) == (10, 10)
            assert rank(cached) == (6, 6)  # the 3 beside "low", not the 4 on the far node
        finally:
            cached.close()
    finally:
        caching.stop()
