"""The control plane's rows for data nodes: registering them, changing their state and removing them.

Each function runs inside a transaction the store opened and lets psycopg's exceptions through; the store
translates them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection

from ._errors import AlreadyExists, NotFound, RankshardError

NODE_QUERY = "SELECT id, address, state FROM nodes"
_NAMED_SHARDS = 5
"""Shards a refusal to remove a node names before it only counts the rest."""


@dataclass(frozen=True, slots=True)
class Node:
    """A registered data node: its store-assigned id (``n1``, ``n2``...), address and state."""

    id: str
    address: str
    state: str


class NodeInUse(RankshardError):
    """A node still owns shards or index slots, so it cannot be removed; the message names what it owns."""

    def __init__(self, node: str, shards: Sequence[str], slots: int) -> None:
        owned = []
        if shards:
            named = ", ".join(shards[:_NAMED_SHARDS]) + (", ..." if len(shards) > _NAMED_SHARDS else "")
            owned.append(f"{len(shards)} shard(s) ({named})")
        if slots:
            owned.append(f"{slots} index slot(s)")
        super().__init__(
            f"node {node} owns {' and '.join(owned)}; only a node that owns nothing can be "
            "removed (nothing was removed)"
        )
        self.node = node
        self.shards = tuple(shards)
        self.slots = slots


async def insert_node(conn: AsyncConnection, address: str) -> Node:
    """Registers `address` with the next id. Raises `AlreadyExists` if it is registered."""
    cur = await conn.execute("SELECT id FROM nodes WHERE address = %s", (address,))
    if (row := await cur.fetchone()) is not None:
        raise AlreadyExists(f"node address {address!r} is already registered as {row[0]}")
    try:
        cur = await conn.execute(
            "INSERT INTO nodes (seq, id, address) SELECT s, 'n' || s, %s"
            " FROM nextval('node_seq') AS s RETURNING id, address, state",
            (address,),
        )
    except psycopg.errors.UniqueViolation as exc:  # registered concurrently
        raise AlreadyExists(f"node address {address!r} is already registered") from exc
    return Node(*(await cur.fetchall())[0])


async def delete_node(conn: AsyncConnection, node: str) -> Node:
    """Unregisters the node whose id, or else address, is `node`, if it owns no shard and no index slot.

    The node's row is locked first: a board creation or slot assignment naming the node waits for this
    transaction (their foreign keys lock the row too), so what is counted here is what it owns.
    Raises `NotFound` or `NodeInUse`.
    """
    found = await _locked(conn, "id", node) or await _locked(conn, "address", node)
    if found is None:
        raise NotFound(f"node {node!r} not found")
    cur = await conn.execute(
        "SELECT board || '/' || id FROM shards WHERE node = %s ORDER BY board COLLATE \"C\", lower NULLS FIRST",
        (found.id,),
    )
    shards = [shard for (shard,) in await cur.fetchall()]
    cur = await conn.execute("SELECT count(*) FROM index_slots WHERE node = %s", (found.id,))
    slots = (await cur.fetchall())[0][0]
    if shards or slots:
        raise NodeInUse(found.id, shards, slots)
    await conn.execute("DELETE FROM nodes WHERE id = %s", (found.id,))
    return found


async def update_node_state(conn: AsyncConnection, node: str, state: str) -> Node:
    """Sets the state of the node whose id, or else address, is `node`; returns the node as it is now.
    Raises `NotFound`."""
    found = await _locked(conn, "id", node) or await _locked(conn, "address", node)
    if found is None:
        raise NotFound(f"node {node!r} not found")
    await conn.execute("UPDATE nodes SET state = %s WHERE id = %s", (state, found.id))
    return Node(found.id, found.address, state)


async def _locked(conn: AsyncConnection, column: str, value: str) -> Node | None:
    query = NODE_QUERY + (" WHERE id = %s FOR UPDATE" if column == "id" else " WHERE address = %s FOR UPDATE")
    cur = await conn.execute(query, (value,))
    row = await cur.fetchone()
    return None if row is None else Node(*row)
