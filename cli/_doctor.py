"""``rankshard check`` and ``rankshard repair``: find and fix what crashes and lost nodes left."""

from __future__ import annotations

import json
import sys
import time

import click

from shard_map import ControlPlane
from shard_node import BoardLayout, Finding, RepairReport, audit_board, connect_cluster, repair_board

from ._manage import run


async def _layouts(cp: ControlPlane, board: str | None) -> list[BoardLayout]:
    names = [board] if board else [c.name for c in await cp.list_boards()]
    return [BoardLayout(await cp.get_board(n), await cp.shard_map(n)) for n in names]


@click.command()
@click.option("--leaderboard", "-l", help="check one board (default: every board)")
@click.option("--json", "as_json", is_flag=True, help="print the violations as JSON")
@click.pass_context
def check(ctx: click.Context, leaderboard: str | None, as_json: bool) -> None:
    """Verify SPEC invariants 1, 2 and 4 on the live cluster; exit 0 only when none is violated.

    \b
    Checks: the shards tile the score line; each node holds the descriptor the map says; every
    member is in exactly one shard, the one whose range holds its score, as the index says; no
    pending move or stray shard data; served ranks equal the single sorted list's (sampled).
    """
    started = time.monotonic()

    async def work(cp: ControlPlane) -> dict[str, list[Finding]]:
        cluster = await connect_cluster(cp)
        try:
            return {layout.board: await audit_board(cluster, layout) for layout in await _layouts(cp, leaderboard)}
        finally:
            await cluster.aclose()

    results = run(ctx, work)
    violations = sum(len(f) for f in results.values())
    if as_json:
        click.echo(json.dumps({b: [{"kind": f.kind, "shard": f.shard, "user": f.user, "detail": f.detail} for f in fs]
                               for b, fs in results.items()}, indent=2))
    else:
        for board, findings in results.items():
            for finding in findings:
                click.echo(f"{board}: {finding}")
        click.echo(f"checked {len(results)} board(s) in {time.monotonic() - started:.1f}s: "
                   f"{violations or 'no'} violation(s)", file=sys.stderr)
    ctx.exit(1 if violations else 0)


@click.command()
@click.option("--leaderboard", "-l", help="repair one board (default: every board)")
@click.pass_context
def repair(ctx: click.Context, leaderboard: str | None) -> None:
    """Roll pending moves forward, restore lost descriptors, rebuild lost shards from the index.

    Idempotent: a second run reports nothing done. Ends with a check of the result.
    """

    async def work(cp: ControlPlane) -> dict[str, tuple[RepairReport, list[Finding]]]:
        cluster = await connect_cluster(cp)
        try:
            out = {}
            for layout in await _layouts(cp, leaderboard):
                report = await repair_board(cluster, layout)
                out[layout.board] = (report, await audit_board(cluster, layout))
            return out
        finally:
            await cluster.aclose()

    clean = True
    for board, (report, findings) in run(ctx, work).items():
        click.echo(f"{board}: descriptors restored {len(report.descriptors_installed)}, moves finished "
                   f"{report.moves_finished}, members rewritten {report.members_rewritten}, stray copies "
                   f"removed {report.copies_removed}")
        for finding in findings:
            click.echo(f"{board}: still: {finding}")
        clean = clean and not findings
    ctx.exit(0 if clean else 1)
