"""``rankshard check`` and ``rankshard repair``: find and fix what crashes and lost nodes left."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import click

from rankshard.shard_map import ControlPlane, JobState
from rankshard.shard_node import (
    BoardLayout,
    Cluster,
    Finding,
    LostMembers,
    RepairReport,
    audit_board,
    connect_cluster,
    finish_abandoned,
    repair_board,
)

from ._job_run import job_owner
from ._manage import run


async def _layouts(cp: ControlPlane, board: str | None) -> list[BoardLayout]:
    names = [board] if board else [c.name for c in await cp.list_boards()]
    return [BoardLayout(await cp.get_board(n), await cp.shard_map(n)) for n in names]


@click.command()
@click.option("--leaderboard", "-l", help="check one board (default: every board)")
@click.option("--json", "as_json", is_flag=True, help="print the violations as JSON")
@click.pass_context
def check(ctx: click.Context, leaderboard: str | None, as_json: bool) -> None:
    """Verify docs/architecture.md invariants 1, 2 and 4 on the live cluster; exit 0 only when none is violated.

    \b
    Checks: the shards tile the score line; each node holds the descriptor the map says; every
    member is in exactly one shard, the one whose range holds its score, as the index says; no
    pending move or stray shard data; served ranks equal the single sorted list's (sampled).

    \b
    Examples:
      rankshard check
      rankshard check -l global --json
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
        click.echo(
            json.dumps(
                {
                    b: [{"kind": f.kind, "shard": f.shard, "user": f.user, "detail": f.detail} for f in fs]
                    for b, fs in results.items()
                },
                indent=2,
            )
        )
    else:
        for board, findings in results.items():
            for finding in findings:
                click.echo(f"{board}: {finding}")
        click.echo(
            f"checked {len(results)} board(s) in {time.monotonic() - started:.1f}s: {violations or 'no'} violation(s)",
            file=sys.stderr,
        )
    ctx.exit(1 if violations else 0)


@click.command()
@click.option("--leaderboard", "-l", help="repair one board (default: every board)")
@click.pass_context
def repair(ctx: click.Context, leaderboard: str | None) -> None:
    """Roll pending moves forward, restore lost descriptors, rebuild lost shards from the index and
    lost index entries from the shards.

    Idempotent: a second run reports nothing done. Prints what could not be recovered (members whose
    index entry and shard copy were both lost, request-id records lost with the index), then ends
    with a check of the result: exit 0 when the board is sound.

    \b
    Examples:
      rankshard repair                 every board
      rankshard repair -l global       after a node came back empty
    """

    async def work(cp: ControlPlane) -> dict[str, tuple[RepairReport, list[Finding]]]:
        cluster = await connect_cluster(cp)
        try:
            await _end_abandoned_jobs(cp, cluster, leaderboard)
            out = {}
            for layout in await _layouts(cp, leaderboard):
                report = await repair_board(cluster, layout)
                out[layout.board] = (report, await audit_board(cluster, layout))
            return out
        finally:
            await cluster.aclose()

    clean = True
    for board, (report, findings) in run(ctx, work).items():
        for line in _report_lines(report):
            click.echo(f"{board}: {line}")
        for finding in findings:
            click.echo(f"{board}: still: {finding}")
        clean = clean and not findings
    ctx.exit(0 if clean else 1)


async def _end_abandoned_jobs(cp: ControlPlane, cluster: Cluster, board: str | None) -> None:
    """Every job whose claim has passed (its process is gone) finished when past its commit, else rolled back, each
    one printed; then the jobs still running: those another process is carrying on, and any that failed to end."""
    for job in await finish_abandoned(cp, cluster, job_owner(), roll_back=True):
        click.echo(f"{job.board}: {job.describe()}: {'finished' if job.state is JobState.DONE else 'rolled back'}")
    now = datetime.now(UTC)
    for job in await cp.jobs.list(board, running=True):
        if job.lease_until is not None and job.lease_until > now:
            left = (
                f"being run by {job.owner} (claimed until {job.lease_until.astimezone(UTC):%H:%M:%S} UTC); left to it"
            )
        else:
            left = f"at {job.step} could not be ended; run `rankshard repair` again once what failed is fixed"
        click.echo(f"{job.board}: {job.describe()} is {left}")


def _report_lines(report: RepairReport) -> list[str]:
    done = (
        f"descriptors restored {len(report.descriptors_installed)}, moves finished {report.moves_finished}, "
        f"members rewritten {report.members_rewritten}, stray copies removed {report.copies_removed}, "
        f"index entries rebuilt {report.entries_rebuilt}, index entries merged {report.entries_merged}"
    )
    lines = [done]
    if report.sizes_dropped:
        lines.append(f"kept sizes dropped (counted again on the next read): {', '.join(report.sizes_dropped)}")
    if report.records_lost:
        lines.append(
            f"lost: request-id records of {report.records_lost} members (their index entries were rebuilt "
            "from the shards): a retry of a request they sent before the loss may be applied again"
        )
    if report.entries_tied:
        lines.append(
            f"guessed: {report.entries_tied} rebuilt members were in two shards at one version (a move under "
            "way when their index was lost): the better score was kept, the other copy removed"
        )
    lines += [f"lost: {_lost_members(lost)}" for lost in report.lost]
    return lines


def _lost_members(lost: LostMembers) -> str:
    what = (
        f"members indexed on {lost.index_node} that lived in shards {', '.join(lost.shards)} "
        "(their index entries and shard copies were both lost): nothing that survived names them, "
        "so how many is unknown"
    )
    if lost.estimate is None:
        return f"{what} (no index node of the board survived to estimate it from)"
    return (
        f"{what}; about {lost.estimate}, by the share of index slots {lost.index_node} held "
        f"({lost.basis} members indexed on other nodes lived in those shards)"
    )
