"""Board setup across the control plane and the nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from shard_map import BoardConfig, Buckets, ControlPlane, ControlPlaneError, check_boundaries

from ._client import NodeClient
from ._keys import descriptor_key
from ._layout import BoardLayout, Cluster


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
    """Records a new board (epoch 1, shards dealt over the active nodes) and fences its shards.

    The board's key layout is sized for `config.expected_members` over those nodes (`Buckets.sized_for`;
    the given `config.buckets` are ignored; the store checks the size). Raises `AlreadyExists`,
    `InvalidArgument` (boundaries, expected members), `ControlPlaneError`, `NodeError`.
    """
    cuts = check_boundaries(boundaries)
    nodes = [n.id for n in await control_plane.list_nodes() if n.state == "ACTIVE"]
    if not nodes:
        raise ControlPlaneError("the control plane has no active node to place shards on")
    config = replace(config, buckets=Buckets.sized_for(config.expected_members, len(nodes)))
    shard_map = await control_plane.create_board(config, cuts, nodes)
    layout = BoardLayout(config, shard_map)
    await install_descriptors(cluster, layout)
    return layout


async def connect_cluster(control_plane: ControlPlane) -> Cluster:
    """A `Cluster` of every registered node and the slot table; raises `ControlPlaneError`."""
    slots = await control_plane.slot_table()
    if slots is None:
        raise ControlPlaneError("the control plane has no index slot table yet (no nodes bootstrapped)")
    nodes = {n.id: NodeClient(n.id, n.address) for n in await control_plane.list_nodes()}
    return Cluster(nodes, slots)
