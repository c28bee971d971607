"""Node-side setup of a board: the shard descriptors that fence every write and read."""

from __future__ import annotations

import asyncio

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
