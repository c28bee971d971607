"""The sweeper: finishes writes and moves a crashed writer left behind, without waiting for the
member's next write (docs/architecture.md failure model, "router killed mid-write")."""

from __future__ import annotations

import asyncio
import logging

from rankshard.shard_map import NodeError

from . import _replies as replies
from ._client import NodeClient
from ._keys import IndexEntry, moves_key
from ._layout import BoardLayout, Cluster
from ._moves import apply_call, finish_move, shard_call
from ._scripts import INDEX_FORGET, INDEX_STALE_MOVES

log = logging.getLogger("rankshard.sweeper")

_GONE = 2**62
"""The version passed when forgetting a member with no entry: no live version is above it."""

DEFAULT_MIN_AGE_MS = 5000
"""A move this old is abandoned: a live writer finishes its move within its call's deadline."""


async def sweep_board(
    cluster: Cluster, layout: BoardLayout, *, min_age_ms: int = DEFAULT_MIN_AGE_MS, limit: int = 200
) -> int:
    """Finishes the board's writes and moves committed over `min_age_ms` ago; returns how many.

    A node that cannot be reached is skipped (its moves wait for the next sweep); nothing is raised
    for it. Safe to run from every router at once: each step of a move is idempotent.
    """
    index_nodes = [cluster.node(n) for n in dict.fromkeys(cluster.slots.owners)]
    counts = await asyncio.gather(*(_sweep_node(cluster, layout, n, min_age_ms, limit) for n in index_nodes))
    return sum(counts)


async def count_pending_marks(cluster: Cluster, layout: BoardLayout) -> int:
    """How many of the board's members have a write, move or removal committed on the index and not yet confirmed
    in the shards (what `sweep_board` finishes once abandoned): one ZCARD per index node. Raises `NodeError`."""
    index_nodes = [cluster.node(n) for n in dict.fromkeys(cluster.slots.owners)]
    counts = await asyncio.gather(*(n.command("ZCARD", moves_key(layout.board)) for n in index_nodes))
    return sum(replies.command_count(node.id, "ZCARD", raw) for node, raw in zip(index_nodes, counts, strict=True))


async def _sweep_node(cluster: Cluster, layout: BoardLayout, node: NodeClient, min_age_ms: int, limit: int) -> int:
    try:
        raw = await node.run(INDEX_STALE_MOVES, [moves_key(layout.board)], [min_age_ms, limit])
        finished = 0
        for user in replies.index_stale_moves(node.id, raw):
            finished += await settle_member(cluster, layout, user)
        return finished
    except NodeError as exc:
        log.warning("sweep of %r skipped a node: %s", layout.board, exc)
        return 0


async def settle_member(cluster: Cluster, layout: BoardLayout, user: str) -> int:
    """Finishes one marked member: its move, or its plain shard write (re-sent: a no-op if it landed)."""
    node, key = cluster.index_of(layout, user)
    entry = IndexEntry.parse(user, await node.command("HGET", key, user))
    if entry is not None and entry.moving:
        await finish_move(cluster, layout, entry)
        return 1
    if entry is not None:
        args = [user, layout.stored(entry.score), entry.version]
        home = layout.home_of(entry)
        await shard_call(cluster, layout, home, apply_call(layout, home, args))
    version = _GONE if entry is None else entry.version
    replies.index_forget(node.id, await node.run(INDEX_FORGET, [key, moves_key(layout.board)], [user, version]))
    return 0 if entry is None else 1
