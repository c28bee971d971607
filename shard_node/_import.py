"""Bulk loading of members new to a board: what `rankshard leaderboards import` runs.

The same end state as their first `UpdateScore` (index entry at its first version, shard member, version
register), for a fraction of the node work: no request ids, no operator, no check round, so a board of
millions loads in minutes (moving an existing leaderboard in, sizing a deployment).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from rankshard.shard_map import StaleMap, user_hash

from . import _replies as replies
from ._client import NodeClient
from ._keys import moves_key
from ._layout import BoardLayout, Cluster
from ._scripts import INDEX_IMPORT
from ._writes import _write_groups


class ImportInterrupted(StaleMap):
    """A shard moved under the chunk after `added` of its members got their index entry: those are on the
    board (their shard writes are finished by the sweeper, or `sweep_board`), and sending the chunk again
    on the new map adds the rest (an attempt cannot tell its own earlier entries from older members)."""

    def __init__(self, added: int, cause: StaleMap) -> None:
        super().__init__(cause.node, f"a shard moved under the import after {added} of the chunk's members were added")
        self.added = added


async def import_members(cluster: Cluster, layout: BoardLayout, members: Sequence[tuple[str, int]]) -> int:
    """Adds each (user id, score) whose member is not on the board, at that score; returns how many.

    Members on the board already, or removed from it, are left as they are (so a chunk can be sent
    again after a failure). Validated by the caller: user ids and scores within docs/api.md's limits.
    Raises `ImportInterrupted` (a shard moved: reload the map, then send the chunk again), `StaleMap`
    (the same, before anything was written), `NodeError`.
    """
    board = layout.board
    by_node: dict[str, tuple[NodeClient, list[str], list[tuple[str, int]]]] = {}
    for user, score in members:
        node, key = cluster.index_of_hash(layout, user_hash(user))
        _, keys, mine = by_node.setdefault(node.id, (node, [], []))
        keys.append(key)
        mine.append((user, score))
    nodes = list(by_node.values())
    homes = await asyncio.gather(
        *(
            node.run(INDEX_IMPORT, [*keys, moves_key(board)], [layout.map.epoch, *(x for m in mine for x in m)])
            for node, keys, mine in nodes
        )
    )
    by_shard: dict[str, list[object]] = {}
    added: list[tuple[NodeClient, str, str, int]] = []
    for (node, keys, mine), raw in zip(nodes, homes, strict=True):
        for key, (user, score), imported in zip(keys, mine, replies.index_import(node.id, raw, len(mine)), strict=True):
            if imported is not None:
                home = layout.map.shard_for(score).id
                by_shard.setdefault(home, []).extend((user, layout.stored(score), imported.version))
                added.append((node, key, user, imported.version))
    if by_shard:
        try:
            await _write_groups(cluster, layout, by_shard)
        except StaleMap as exc:
            raise ImportInterrupted(len(added), exc) from exc
    for node, key, user, version in added:
        cluster.forgets.add(node, board, key, user, version)
    return len(added)
