"""Thin commands over the control plane and the nodes: init, leaderboards, shards (nodes: `_nodes`)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from rankshard.shard_map import (
    BoardConfig,
    ControlPlane,
    Operator,
    RankshardError,
    SchemaMissing,
    SortOrder,
    check_board_name,
    check_expected_members,
    schema_version,
)
from rankshard.shard_node import BoardLayout, connect_cluster, create_board, delete_board, shard_sizes

from ._options import settings_of
from ._settings import control_plane_dsn

T = TypeVar("T")

ORDERS = {"desc": SortOrder.DESCENDING, "asc": SortOrder.ASCENDING}
ORDER_NAMES = {v: k for k, v in ORDERS.items()}
OPERATORS = {"increment": Operator.INCREMENT, "best": Operator.BEST, "set": Operator.SET}


def run(ctx: click.Context, work: Callable[[ControlPlane], Awaitable[T]], *, migrate: bool = False) -> T:
    """Opens the control plane named by the global options, runs `work`, turns errors into one line.

    Unless `migrate` (only `rankshard init`), the schema is checked, never created: a command pointed at a
    database without it (a mistyped DSN, say) says so and leaves that database as it was.
    """
    settings = settings_of(ctx)
    dsn = control_plane_dsn(settings.data_dir, settings.control_plane)

    async def main() -> T:
        async with await ControlPlane.open(
            dsn, migrate=migrate, timeout=settings.control_plane_timeout
        ) as control_plane:
            return await work(control_plane)

    try:
        return asyncio.run(main())
    except SchemaMissing as exc:
        raise click.ClickException(_schema_problem(exc)) from exc
    except RankshardError as exc:
        raise click.ClickException(str(exc)) from exc


def _schema_problem(exc: SchemaMissing) -> str:
    if exc.none_applied:
        return (
            f"the control plane at {exc.where} has no rankshard schema; run `rankshard init` or `rankshard cluster up`"
        )
    return (
        f"the control plane at {exc.where} has an older rankshard schema: schema migration(s) "
        f"{', '.join(map(str, exc.missing))} not applied; run `rankshard init` to upgrade it"
    )


@click.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create rankshard's schema in the control plane database, or bring it up to date; safe to re-run.

    Every other command needs it done once and never creates a table itself, so a mistyped DSN
    cannot fill some other database with rankshard's tables. `cluster up` does it for a local
    cluster; after upgrading rankshard, run it again to apply the new release's migrations.

    \b
    Examples:
      rankshard --control-plane postgresql://rankshard@db.internal:5432/rankshard init
      RANKSHARD_CONTROL_PLANE=postgresql://rankshard@db.internal/rankshard rankshard init
    """

    async def work(cp: ControlPlane) -> tuple[tuple[int, ...], str]:
        return cp.migrations_applied, cp.where

    applied, where = run(ctx, work, migrate=True)
    if not applied:
        click.echo(f"rankshard: the control plane at {where} is up to date (schema version {schema_version()})")
        return
    done = "initialised" if min(applied) == 1 else "upgraded"
    click.echo(
        f"rankshard: {done} the control plane at {where} (applied schema migrations {', '.join(map(str, applied))})"
    )


def parse_boundaries(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of integers", param_hint="--boundaries"
        ) from None


def emit(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cells = [[("-" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@click.group()
def leaderboards() -> None:
    """Create, list and delete leaderboards."""


@leaderboards.command("create")
@click.argument("name")
@click.option("--order", type=click.Choice(list(ORDERS)), default="desc", show_default=True)
@click.option("--operator", type=click.Choice(list(OPERATORS)), default="increment", show_default=True)
@click.option("--boundaries", help="ascending cut points, e.g. 100,1000,10000 (n cut points make n+1 shards)")
@click.option(
    "--expected-members",
    type=int,
    default=0,
    show_default=True,
    help="members to lay the board out for (fixed at creation); 0: a layout for up to a few million",
)
@click.pass_context
def create(
    ctx: click.Context, name: str, order: str, operator: str, boundaries: str | None, expected_members: int
) -> None:
    """Create leaderboard NAME.

    \b
    Examples:
      rankshard leaderboards create weekly --order desc --operator best --boundaries 100,1000
      rankshard leaderboards create season --boundaries 1000,5000 --expected-members 500000000
    """
    config = BoardConfig(_name(name), ORDERS[order], OPERATORS[operator], _expected(expected_members))
    cuts = parse_boundaries(boundaries)

    async def work(cp: ControlPlane) -> BoardLayout:
        cluster = await connect_cluster(cp)
        try:
            return await create_board(cp, cluster, config, cuts)
        finally:
            await cluster.aclose()

    layout = run(ctx, work)
    click.echo(f"created leaderboard {name} with {len(layout.map.shards)} shard(s) at epoch {layout.map.epoch}")


@leaderboards.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def list_boards(ctx: click.Context, as_json: bool) -> None:
    """List leaderboards with their order, operator and boundaries.

    \b
    Examples:
      rankshard leaderboards list
      rankshard leaderboards list --json
    """

    async def work(cp: ControlPlane) -> list[dict[str, Any]]:
        maps = await cp.shard_maps()
        return [
            {
                "name": c.name,
                "order": ORDER_NAMES[c.sort_order],
                "operator": c.operator.name.lower(),
                "shards": len(maps[c.name].shards),
                "epoch": maps[c.name].epoch,
                "boundaries": list(maps[c.name].boundaries),
                "expected_members": c.expected_members,
            }
            for c in await cp.list_boards()
        ]

    emit(run(ctx, work), as_json, ["name", "order", "operator", "shards", "epoch", "boundaries", "expected_members"])


@leaderboards.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation (needed without a terminal)")
@click.pass_context
def delete(ctx: click.Context, name: str, yes: bool) -> None:
    """Delete leaderboard NAME and all its members, from every node.

    Asks first on a terminal. The board stops serving at once; a node that is down keeps the
    delete from finishing (it says which): run it again once the node is back.

    \b
    Examples:
      rankshard leaderboards delete weekly
      rankshard leaderboards delete season:1 --yes
    """
    try:
        check_board_name(name, "name")
    except RankshardError as exc:
        raise click.ClickException(str(exc)) from exc
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(f"not deleting leaderboard {name} without confirmation: pass --yes")
        click.confirm(f"Delete leaderboard {name} and all its members?", abort=True)

    async def work(cp: ControlPlane) -> int:
        cluster = await connect_cluster(cp)
        try:
            return await delete_board(cp, cluster, name)
        finally:
            await cluster.aclose()

    removed = run(ctx, work)
    click.echo(f"deleted leaderboard {name} ({removed} key(s) removed from the nodes)")


@click.group()
def shards() -> None:
    """Inspect a leaderboard's shards; split, merge and move them online."""


@shards.command("list")
@click.option("--leaderboard", "-l", required=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def list_shards(ctx: click.Context, leaderboard: str, as_json: bool) -> None:
    """Shard id, score range, node, member count and state, lowest range first.

    \b
    Examples:
      rankshard shards list -l global
      rankshard shards list --leaderboard weekly --json
    """

    async def work(cp: ControlPlane) -> list[dict[str, Any]]:
        layout = BoardLayout(await cp.get_board(_name(leaderboard)), await cp.shard_map(leaderboard))
        cluster = await connect_cluster(cp)
        try:
            sizes = await shard_sizes(cluster, layout)
        finally:
            await cluster.aclose()
        return [
            {
                "id": s.id,
                "lower": s.lower,
                "upper": s.upper,
                "node": s.node,
                "members": sizes[s.id],
                "state": str(s.state),
            }
            for s in layout.map.shards
        ]

    emit(run(ctx, work), as_json, ["id", "lower", "upper", "node", "members", "state"])


def _name(name: str) -> str:
    try:
        return check_board_name(name)
    except RankshardError as exc:
        raise click.BadParameter(str(exc)) from exc


def _expected(members: int) -> int:
    try:
        return check_expected_members(members)
    except RankshardError as exc:
        raise click.BadParameter(str(exc), param_hint="--expected-members") from exc
