"""Tombstone collection: what a removal (or a member leaving a shard) leaves on the nodes goes once nothing
can need it, so a node's memory follows the members a board has, not every member it ever had.

The rule and the formats are in `_keys` (Versions, Tombstones); the walk over a node's hashes is
``scripts/collect_tombstones.lua``. The router's sweeper takes one bounded step per node and board each
round; the position of the walk lives on the node, so every router's steps continue the same walk.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from rankshard.shard_map import NUM_SLOTS, NodeError

from . import _replies as replies
from ._client import NodeClient
from ._keys import TOMBSTONE_TTL_MS, collection_key, index_stem, versions_stem
from ._layout import BoardLayout, Cluster
from ._scripts import COLLECT_TOMBSTONES

log = logging.getLogger("rankshard.tombstones")

DEFAULT_BUDGET = 500
"""Hash fields one step looks at on one node: about 1.5 ms of its time (measured: 2-3 µs a field, most of
it handing HSCAN's reply to Lua). A walk over a node holding the index entries and registers of a
million members then takes about two hours at one step per 2 s round of one router's sweeper."""


@dataclass(frozen=True, slots=True)
class Collected:
    deleted: int = 0
    """Tombstones old enough to go, deleted."""
    stamped: int = 0
    """Tombstones of older releases (no time of their own), given the time they were first seen."""
    looked_at: int = 0
    """Hash fields looked at."""
    rounds: int = 0
    """Nodes whose walk passed its start during the step: everything there was looked at since the last time."""

    def __add__(self, other: Collected) -> Collected:
        return Collected(
            self.deleted + other.deleted,
            self.stamped + other.stamped,
            self.looked_at + other.looked_at,
            self.rounds + other.rounds,
        )


async def collect_tombstones(
    cluster: Cluster, layout: BoardLayout, *, max_age_ms: int = TOMBSTONE_TTL_MS, budget: int = DEFAULT_BUDGET
) -> Collected:
    """One step of the board's tombstone collection on every node: deletes tombstones older than
    `max_age_ms` among the next `budget` or so hash fields of each node's walk.

    `max_age_ms` below `TOMBSTONE_TTL_MS` is for tests (and an operator who knows no write or retry of a
    removed member is still under way). A node that cannot be reached is skipped; nothing is raised for it.
    """
    steps = await asyncio.gather(*(_step(cluster, layout, node, max_age_ms, budget) for node in cluster.nodes.values()))
    total = Collected()
    for step in steps:
        total += step
    return total


async def _step(cluster: Cluster, layout: BoardLayout, node: NodeClient, max_age_ms: int, budget: int) -> Collected:
    board, buckets = layout.board, layout.config.buckets
    slots = " ".join(str(s) for s in range(NUM_SLOTS) if cluster.slots.node_for(s) == node.id)
    args = [index_stem(board), slots, buckets.index, versions_stem(board), buckets.versions, max_age_ms, budget]
    try:
        raw = await node.run(COLLECT_TOMBSTONES, [collection_key(board)], args, lazy=True)
        step = replies.collect_tombstones(node.id, raw)
    except NodeError as exc:
        log.warning("tombstone collection of %r skipped a node: %s", board, exc)
        return Collected()
    return Collected(step.deleted, step.stamped, step.looked_at, int(step.wrapped))
