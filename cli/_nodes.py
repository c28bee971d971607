"""``rankshard nodes``: list, register (or start, in a local cluster), drain and remove data nodes."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import click

from rankshard.shard_map import (
    AlreadyExists,
    ControlPlane,
    Node,
    NodeError,
    RankshardError,
    SlotTable,
)
from rankshard.shard_node import BoardLayout, NodeClient, check_new_node, node_members

from ._local_node import record_local_node, register_local_node, wait_node_serving
from ._manage import emit, run
from ._options import settings_of


@click.group()
def nodes() -> None:
    """List, register (or start), drain and remove data nodes."""


@nodes.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def list_nodes(ctx: click.Context, as_json: bool) -> None:
    """Registered nodes with their address, state (ACTIVE, or DRAINING: it gets no new shard), how many
    shards of all boards they own and those shards' members (- for a node that does not answer).

    \b
    Examples:
      rankshard nodes list
      rankshard nodes list --json
    """
    timeout = settings_of(ctx).node_timeout

    async def work(cp: ControlPlane) -> list[dict[str, Any]]:
        registered = await cp.list_nodes()
        maps = await cp.shard_maps()
        layouts = [BoardLayout(c, maps[c.name]) for c in await cp.list_boards() if c.name in maps]
        clients = {n.id: NodeClient(n.id, n.address, timeout=timeout) for n in registered}
        try:
            members = await node_members(clients, layouts)
        finally:
            await asyncio.gather(*(c.aclose() for c in clients.values()))
        owned = Counter(s.node for layout in layouts for s in layout.map.shards)
        return [
            {"id": n.id, "address": n.address, "state": n.state, "shards": owned[n.id], "members": members[n.id]}
            for n in registered
        ]

    emit(run(ctx, work), as_json, ["id", "address", "state", "shards", "members"])


@nodes.command("add")
@click.argument("address", required=False)
@click.option("--local", is_flag=True, help="start another node in the local cluster running in --data-dir")
@click.pass_context
def add_node(ctx: click.Context, address: str | None, local: bool) -> None:
    """Register a running node at ADDRESS (host:port), or with --local start one in the local cluster
    and register it. New boards place shards on it; `rebalance` moves shards to it.

    The node must answer, and be empty or hold only rankshard's keys (rs:*): a server holding
    other data is refused, and so is an address already registered. The control plane must be
    initialised (`rankshard init`, or `cluster up` for a local cluster). With --local, the
    `cluster up` running in --data-dir starts the node (in nodes/nodeN/, its port recorded in
    cluster.json), restarts it when it dies and starts it again with the rest next time.

    \b
    Examples:
      rankshard nodes add 10.0.0.7:6379
      rankshard --control-plane postgresql://rankshard@db.internal/rankshard nodes add valkey-3:6379
      rankshard --data-dir /tmp/rs nodes add --local
    """
    if local:
        if address is not None:
            raise click.UsageError("give ADDRESS or --local, not both")
        _add_local(ctx)
        return
    if address is None:
        raise click.UsageError("missing argument 'ADDRESS'")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(f"{address!r} is not host:port", param_hint="ADDRESS")

    async def work(cp: ControlPlane) -> Node:
        registered = {n.address: n.id for n in await cp.list_nodes()}
        if address in registered:
            raise AlreadyExists(f"node address {address!r} is already registered as {registered[address]}")
        try:
            await check_new_node(address)
        except NodeError as exc:
            raise click.ClickException(f"{exc}; nothing was registered") from exc
        return await cp.add_node(address)

    node = run(ctx, work)
    click.echo(f"registered node {node.id} at {node.address}")


def _add_local(ctx: click.Context) -> None:
    settings = settings_of(ctx)
    data_dir = settings.data_dir.resolve()
    recorded, port = record_local_node(data_dir)
    wait_node_serving(data_dir, port)
    try:
        node = asyncio.run(register_local_node(recorded, port, settings.control_plane_timeout))
    except RankshardError as exc:
        raise click.ClickException(
            f"the node on port {port} started but was not registered ({exc}): once the control plane answers, "
            f"run `rankshard --data-dir {data_dir} nodes add 127.0.0.1:{port}`"
        ) from exc
    click.echo(f"started node {node.id} at {node.address}; the cluster in {data_dir} supervises it")


@nodes.command("deal-slots")
@click.pass_context
def deal_slots(ctx: click.Context) -> None:
    """Deal the index slots round-robin over the registered nodes, unless they are dealt already.

    Run it once the cluster's first nodes are registered and before its first router and
    board: routers refuse to start without the slots dealt. Once dealt they stay where they
    are (nodes added later get shards of new boards, not slots), so running it again only
    says who owns them: safe to re-run. `cluster up` deals them for a local cluster.

    \b
    Examples:
      rankshard nodes deal-slots
      rankshard --control-plane postgresql://rankshard@db.internal/rankshard nodes deal-slots
    """

    async def work(cp: ControlPlane) -> tuple[bool, SlotTable]:
        if (table := await cp.slot_table()) is not None:
            return False, table
        registered = [n.id for n in await cp.list_nodes()]
        if not registered:
            raise click.ClickException("no node is registered to own the index slots; run `rankshard nodes add`")
        table = SlotTable.spread(registered)
        await cp.assign_slots(table)
        return True, table

    dealt, table = run(ctx, work)
    owners = ", ".join(f"{node} {count}" for node, count in Counter(table.owners).items())
    said = "dealt the {} index slots" if dealt else "the {} index slots were dealt already; they stay"
    click.echo(f"{said.format(len(table.owners))}: {owners}")


@nodes.command("remove")
@click.argument("node")
@click.pass_context
def remove_node(ctx: click.Context, node: str) -> None:
    """Unregister NODE (its id, such as n3, or its address), if it owns no shard and no index slot.

    A node that owns anything is refused, with what it owns. Its data is left on the server.
    The control plane must be initialised (`rankshard init`).

    \b
    Examples:
      rankshard nodes remove n3
      rankshard nodes remove 10.0.0.7:6379
    """
    removed = run(ctx, lambda cp: cp.remove_node(node))
    click.echo(f"removed node {removed.id} at {removed.address}")
