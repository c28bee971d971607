"""Board setup and removal across the control plane and the nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from rankshard.shard_map import (
    BoardConfig,
    Buckets,
    ControlPlane,
    ControlPlaneError,
    NodeError,
    NodeUnavailable,
    check_board_name,
    check_boundaries,
)

from ._client import DEFAULT_NODE_TIMEOUT, NodeClient
from ._keys import board_pattern, descriptor_key
from ._layout import BoardLayout, Cluster
from ._reads import shard_sizes

PURGE_BATCH = 1000
"""Keys asked for per SCAN step when removing a board's keys (each step's keys go in one UNLINK)."""


async def install_descriptors(cluster: Cluster, layout: BoardLayout) -> None:
    """Writes every shard's descriptor to its node, so the board can take traffic; raises `NodeError`."""
    await asyncio.gather(
        *(
            cluster.node(node_id).commands(
                [("SET", descriptor_key(layout.board, s.id), layout.descriptors[s.id]) for s in shards]
            )
            for node_id, shards in layout.by_node.items()
        )
    )


async def create_board(
    control_plane: ControlPlane, cluster: Cluster, config: BoardConfig, boundaries: Sequence[int]
) -> BoardLayout:
    """Creates a board (shards dealt over the active nodes), all or nothing: it is recorded CREATING, which
    nothing reads, its shards are fenced on their nodes, and only then it becomes ACTIVE.

    A failure part way (a node down) leaves nothing visible; calling again with the same configuration
    resumes that board (its first placement and layout), another configuration is refused until it is
    finished or deleted. The key layout is sized for `config.expected_members` over the nodes
    (`Buckets.sized_for`; the given `config.buckets` are ignored). Raises `AlreadyExists`, `InvalidArgument`
    (boundaries, expected members), `ControlPlaneError`, `NodeError`.
    """
    cuts = check_boundaries(boundaries)
    nodes = [n.id for n in await control_plane.list_nodes() if n.state == "ACTIVE"]
    if not nodes:
        raise ControlPlaneError("the control plane has no active node to place shards on")
    config = replace(config, buckets=Buckets.sized_for(config.expected_members, len(nodes)))
    config, shard_map = await control_plane.begin_board(config, cuts, nodes)
    layout = BoardLayout(config, shard_map)
    if shard_map.epoch > 1:
        # The name was a board before (`begin_board`): writes in flight while it was deleted may have left keys.
        await _purge(control_plane, cluster, config.name, "create it again")
    await install_descriptors(cluster, layout)
    # Counted once now, so each node keeps the new shards' sizes (0) before the board takes traffic: its first
    # reads then find them kept and write nothing.
    await shard_sizes(cluster, layout)
    await control_plane.activate_board(config.name, shard_map.epoch)
    return layout


async def delete_board(control_plane: ControlPlane, cluster: Cluster, name: str) -> int:
    """Deletes board `name` and its keys on every registered node; returns how many keys were removed.

    In an order that a crash or a node down anywhere leaves resumable by deleting again: the board is
    hidden first (routers forget it; the name cannot be created), then its keys are removed from each node
    in batches, then the name is freed. Raises `InvalidArgument` (a bad name, naming ``name``), `NotFound`,
    `ControlPlaneError`, and `NodeUnavailable` naming every node that could not be cleared (the board
    stays hidden, and its name taken, until a delete finishes).
    """
    check_board_name(name, "name")
    await control_plane.begin_delete(name)
    removed = await _purge(control_plane, cluster, name, "delete it again")
    await control_plane.finish_delete(name)
    return removed


async def _purge(control_plane: ControlPlane, cluster: Cluster, board: str, retry: str) -> int:
    """Removes every key of `board` from every registered node, nodes in parallel; raises `NodeUnavailable`
    naming the nodes that failed (the others are cleared all the same)."""
    registered = await control_plane.list_nodes()
    for node in registered:
        if node.id not in cluster.nodes:
            cluster.nodes[node.id] = NodeClient(node.id, node.address)
    ids = [node.id for node in registered]
    results = await asyncio.gather(*(_purge_node(cluster.nodes[i], board) for i in ids), return_exceptions=True)
    failed = [r for r in results if isinstance(r, NodeError)]
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, NodeError):
            raise result
    if failed:
        raise NodeUnavailable(
            ", ".join(e.node for e in failed),
            f"the keys of leaderboard {board!r} there are not removed ({'; '.join(map(str, failed))});"
            f" {retry} once the node is back",
        )
    return sum(r for r in results if isinstance(r, int))


async def _purge_node(node: NodeClient, board: str) -> int:
    removed, cursor = 0, 0
    while True:
        cursor, keys = await node.command("SCAN", cursor, "MATCH", board_pattern(board), "COUNT", PURGE_BATCH)
        if keys:
            removed += int(await node.command("UNLINK", *keys))
        if int(cursor) == 0:
            return removed


async def connect_cluster(
    control_plane: ControlPlane, node_timeout: float = DEFAULT_NODE_TIMEOUT, size_cache: float = 0.0
) -> Cluster:
    """A `Cluster` of every registered node and the slot table, each node's commands bounded by `node_timeout`
    seconds, its counts using sizes seen within `size_cache` seconds (`Cluster.size_cache`; 0: off); raises
    `ControlPlaneError`."""
    slots = await control_plane.slot_table()
    if slots is None:
        raise ControlPlaneError("the control plane has no index slot table yet (no nodes bootstrapped)")
    nodes = {n.id: NodeClient(n.id, n.address, timeout=node_timeout) for n in await control_plane.list_nodes()}
    cluster = Cluster(nodes, slots)
    cluster.size_cache = size_cache
    return cluster
