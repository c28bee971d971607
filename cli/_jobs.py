"""``rankshard shards split|merge|move`` and ``rankshard jobs``: rebalancing jobs planned and run, listed, shown,
resumed and rolled back (docs/operations.md, "Rebalancing")."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import click

from rankshard.shard_map import ControlPlane, InvalidArgument, Job, JobState, JobStep
from rankshard.shard_node import Cluster, connect_cluster, plan_merge, plan_move, plan_split

from ._job_run import abort_job, job_owner, run_job, stopped_cleanly
from ._manage import emit, run
from ._options import settings_of

Planner = Callable[[ControlPlane, Cluster, str, float], Awaitable[Job]]
"""Plans a job (the control plane, the cluster, the owner, the lease in seconds)."""


def _carry_planned(ctx: click.Context, plan: Planner) -> None:
    """Plans a job (or finds the running one this command started before) and runs it to its end; exit 1 when it
    had to roll back."""
    settings = settings_of(ctx)

    async def work(cp: ControlPlane) -> Job:
        cluster = await connect_cluster(cp)
        try:
            job = await _planned(plan, cp, cluster, settings.job_lease)
            return await run_job(cp, cluster, job, settings)
        finally:
            await cluster.aclose()

    with stopped_cleanly():
        job = run(ctx, work)
    ctx.exit(0 if job.state is JobState.DONE else 1)


async def _planned(plan: Planner, cp: ControlPlane, cluster: Cluster, lease_s: float) -> Job:
    """The planned job; a refused option is a usage error naming it (`--shard`, `--at`, `--with`, `--to`)."""
    try:
        return await plan(cp, cluster, job_owner(), lease_s)
    except InvalidArgument as exc:
        problem = str(exc).removeprefix(f"{exc.field}: ")
        raise click.BadParameter(problem, param_hint=f"'--{exc.field}'") from exc


def _with_job(ctx: click.Context, job_id: int, work: Callable[[ControlPlane, Cluster, Job], Awaitable[Job]]) -> Job:
    """`work` on job `job_id` and a connected cluster; Ctrl-C is one line."""

    async def main(cp: ControlPlane) -> Job:
        job = await cp.jobs.get(job_id)
        if job.state is not JobState.RUNNING:
            return job
        cluster = await connect_cluster(cp)
        try:
            return await work(cp, cluster, job)
        finally:
            await cluster.aclose()

    with stopped_cleanly():
        return run(ctx, main)


_BOARD = click.option("--leaderboard", "-l", required=True, help="the board")
_SHARD = click.option("--shard", "shard_id", required=True, help="the shard's id, as `shards list` shows it")


@click.command("split")
@_BOARD
@_SHARD
@click.option("--at", type=int, help="the cut: [lower, AT) stays, [AT, upper) becomes a new shard (default: median)")
@click.pass_context
def split(ctx: click.Context, leaderboard: str, shard_id: str, at: int | None) -> None:
    """Split a shard in two, online: the members at or above the cut go to a new shard on the same node.

    Shows its progress, then the two shards. Interrupted (Ctrl-C, a lost connection), the job
    stays where it stood: run the command again or `rankshard jobs resume ID`.

    \b
    Examples:
      rankshard shards split -l global --shard s2
      rankshard shards split --leaderboard global --shard s2 --at 5000
    """
    _carry_planned(
        ctx, lambda cp, cluster, owner, lease: plan_split(cp, cluster, leaderboard, shard_id, at, owner, lease)
    )


@click.command("merge")
@_BOARD
@_SHARD
@click.option("--with", "with_id", required=True, help="the neighbour to merge with")
@click.pass_context
def merge(ctx: click.Context, leaderboard: str, shard_id: str, with_id: str) -> None:
    """Merge two adjacent shards, online: the one with fewer members is carved into the other, which keeps its id
    and node.

    \b
    Examples:
      rankshard shards merge -l global --shard s2 --with s3
    """
    _carry_planned(
        ctx, lambda cp, cluster, owner, lease: plan_merge(cp, cluster, leaderboard, shard_id, with_id, owner, lease)
    )


@click.command("move")
@_BOARD
@_SHARD
@click.option("--to", "node", required=True, help="the node (its id, such as n2, or its address)")
@click.pass_context
def move(ctx: click.Context, leaderboard: str, shard_id: str, node: str) -> None:
    """Move a shard to another node, online, as a new shard there (it gets a new id; its range is the same).

    Writes to the shard wait for up to about 2 seconds while it is frozen; reads never stop.

    \b
    Examples:
      rankshard shards move -l global --shard s2 --to n2
      rankshard shards move --leaderboard weekly --shard s1 --to 10.0.0.7:6379
    """
    _carry_planned(ctx, lambda cp, _, owner, lease: plan_move(cp, leaderboard, shard_id, node, owner, lease))


@click.group()
def jobs() -> None:
    """List, show, resume and roll back rebalancing jobs."""


@jobs.command("list")
@click.option("--leaderboard", "-l", help="one board's jobs (default: every board's)")
@click.option("--json", "as_json", is_flag=True, help="print JSON (the fields of `jobs show --json`)")
@click.pass_context
def list_jobs(ctx: click.Context, leaderboard: str | None, as_json: bool) -> None:
    """Jobs, newest first: kind, shards, step, state, progress, owner and when it last changed.

    \b
    Examples:
      rankshard jobs list
      rankshard jobs list -l global --json
    """
    found = run(ctx, lambda cp: cp.jobs.list(leaderboard))
    if as_json:
        emit([job_json(j) for j in found], True, [])
        return
    columns = ["id", "board", "kind", "shards", "step", "state", "progress", "owner", "updated"]
    emit([_job_row(j) for j in found], False, columns)


@jobs.command("show")
@click.argument("job_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def show(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """Everything the control plane records of job ID: its plan, progress, owner, claim and error.

    \b
    Examples:
      rankshard jobs show 7
      rankshard jobs show 7 --json
    """
    job = run(ctx, lambda cp: cp.jobs.get(job_id))
    if as_json:
        click.echo(json.dumps(job_json(job), indent=2))
        return
    click.echo(job.describe())
    for key, value in job_json(job).items():
        if key == "plan":
            value = ", ".join(f"{k} {_text(v)}" for k, v in value.items())
        click.echo(f"  {key}: {_text(value)}")


@jobs.command("resume")
@click.argument("job_id", metavar="ID", type=int)
@click.pass_context
def resume(ctx: click.Context, job_id: int) -> None:
    """Claim job ID and carry it on from where its row says: finish it, or, if it was rolling back, roll it back.

    A job another process is running is refused until that process's claim has passed
    (RANKSHARD_JOB_LEASE after it was last heard from). A job that has ended is left as it is.

    \b
    Examples:
      rankshard jobs resume 7
    """
    settings = settings_of(ctx)
    was: list[JobStep] = []

    async def work(cp: ControlPlane, cluster: Cluster, job: Job) -> Job:
        was.append(job.step)
        return await run_job(cp, cluster, job, settings)

    job = _with_job(ctx, job_id, work)
    if not was:
        click.echo(f"{job.describe()} has ended already: {job.state}; nothing to resume")
    wanted = JobState.ABORTED if was == [JobStep.ABORTING] else JobState.DONE
    ctx.exit(0 if not was or job.state is wanted else 1)


@jobs.command("abort")
@click.argument("job_id", metavar="ID", type=int)
@click.pass_context
def abort(ctx: click.Context, job_id: int) -> None:
    """Roll job ID back: the source shard serves as before the job (under a new generation), the target is
    cleared. Refused for a job past its commit, which can only be finished (`jobs resume`).

    \b
    Examples:
      rankshard jobs abort 7
    """
    settings = settings_of(ctx)
    ran: list[bool] = []

    async def work(cp: ControlPlane, cluster: Cluster, job: Job) -> Job:
        if job.step.committed:
            raise click.ClickException(
                f"{job.describe()} is past its commit (step {job.step}): it can only be finished, with "
                f"`rankshard jobs resume {job.id}`; nothing was changed"
            )
        ran.append(True)
        return await abort_job(cp, cluster, job, settings)

    job = _with_job(ctx, job_id, work)
    if ran:
        return
    if job.state is JobState.DONE:
        raise click.ClickException(f"{job.describe()} has ended already: DONE; there is nothing to roll back")
    click.echo(f"{job.describe()} has ended already: {job.state}")


def job_json(job: Job) -> dict[str, Any]:
    """Every field of the job's row (times in ISO 8601, UTC), its plan as an object."""
    return {
        "id": job.id,
        "board": job.board,
        "kind": str(job.kind),
        "state": str(job.state),
        "step": str(job.step),
        "source": job.source,
        "target": job.target,
        "target_node": job.target_node,
        "copied": job.copied,
        "total": job.total,
        "dirty": job.dirty,
        "freeze_ms": job.freeze_ms,
        "owner": job.owner,
        "lease_until": _time(job.lease_until),
        "error": job.error,
        "created_at": _time(job.created_at),
        "updated_at": _time(job.updated_at),
        "plan": job.plan.to_json(),
    }


def _job_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "board": job.board,
        "kind": str(job.kind),
        "shards": f"{job.source} -> {job.target}",
        "step": str(job.step),
        "state": str(job.state),
        "progress": f"{job.copied:,}/{job.total:,}" if job.total else None,
        "owner": job.owner,
        "updated": None if job.updated_at is None else f"{job.updated_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC",
    }


def _time(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _text(value: object) -> str:
    return "-" if value is None else str(value)
