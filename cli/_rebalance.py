"""``rankshard rebalance`` and ``rankshard nodes drain``: plans of the shard planner (docs/architecture.md,
"Rebalancing"), printed, then carried out one job at a time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence

import click

from rankshard.shard_map import (
    DEFAULT_THRESHOLD_PCT,
    ControlPlane,
    Node,
    NotFound,
    Plan,
    ServingNode,
    ShardMap,
    plan_drain,
    plan_rebalance,
)
from rankshard.shard_node import (
    DRAINING,
    BoardLayout,
    Cluster,
    board_stats,
    carry_out,
    connect_cluster,
    serving_nodes,
)

from ._job_run import job_owner
from ._manage import _name, run
from ._options import settings_of
from ._plan_run import StepRunner

_SHARD_NUMBER = re.compile(r"s(\d+)")


def parse_weights(given: Sequence[str]) -> dict[str, float]:
    """``NODE=W`` options as a mapping; raises `click.BadParameter` naming the one that is not."""
    weights: dict[str, float] = {}
    for text in given:
        node, _, value = text.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not node or not (0 <= weight < float("inf")):
            raise click.BadParameter(f"{text!r} is not NODE=W with W a number >= 0", param_hint="--weight")
        weights[node] = weight
    return weights


@click.command()
@click.option("--leaderboard", "-l", required=True)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 100, min_open=True),
    default=DEFAULT_THRESHOLD_PCT,
    show_default=True,
    help="percent a node may be off its target",
)
@click.option("--weight", "weights", multiple=True, metavar="NODE=W", help="a node's share (default 1; 0 drains it)")
@click.option("--dry-run", is_flag=True, help="print the plan and change nothing")
@click.pass_context
def rebalance(ctx: click.Context, leaderboard: str, threshold: float, weights: tuple[str, ...], dry_run: bool) -> None:
    """Plan, and unless --dry-run carry out, the splits, moves and merges that bring every serving node
    within --threshold percent of its target share of the board's members.

    A node's target is the board's members times its weight over the sum of the weights of the
    ACTIVE nodes; a DRAINING node (or one of weight 0) gets nothing and gives all it holds. Each step
    runs as one online job, one at a time; if one fails, the steps before it stay done and running
    `rebalance` again plans from where the board stands. Refused while a job of the board is in flight.

    \b
    Examples:
      rankshard rebalance -l global --dry-run
      rankshard rebalance --leaderboard global --threshold 5
      rankshard rebalance -l global --weight n1=2 --weight n3=0
    """
    name, shares = _name(leaderboard), parse_weights(weights)

    async def work(cp: ControlPlane, cluster: Cluster, runner: StepRunner) -> None:
        layout = await _layout(cp, name)
        nodes = await _prechecked(cp, cluster, name, shares)
        stats = await board_stats(cluster, layout)
        plan = plan_rebalance(layout.map, stats, nodes, next_shard=_next_shard(layout.map), threshold_pct=threshold)
        click.echo(f"plan for leaderboard {name} at epoch {layout.map.epoch}:")
        click.echo(plan.format(), nl=False)
        if dry_run or not plan.steps:
            click.echo("dry run: nothing was changed" if dry_run and plan.steps else "nothing was changed")
            return
        await _carried_out(cp, cluster, name, plan, runner)

    _run_jobs(ctx, work)


@click.command()
@click.argument("node")
@click.pass_context
def drain(ctx: click.Context, node: str) -> None:
    """Mark NODE (id or address) DRAINING, so it gets no new shard, and move every shard of every board off it.

    Each shard moves online as one job, its largest first, to the node then furthest below its
    target. The last serving node cannot be drained. A drain stopped part way leaves the node
    DRAINING: run it again to go on. Index slots cannot move, so a drained node keeps its own and
    `nodes remove` goes on refusing it while it has any.

    \b
    Examples:
      rankshard nodes drain n3
      rankshard nodes drain 10.0.0.7:6379
    """

    async def work(cp: ControlPlane, cluster: Cluster, runner: StepRunner) -> None:
        target = await _drainable(cp, node)
        await _prechecked(cp, cluster, None, {})
        await cp.set_node_state(target.id, DRAINING)
        click.echo(f"node {target.id} is {DRAINING}: it gets no new shard")
        for config in await cp.list_boards():
            layout = await _layout(cp, config.name)
            if not any(s.node == target.id for s in layout.map.shards):
                continue
            nodes = await serving_nodes(cp)
            plan = plan_drain(layout.map, await board_stats(cluster, layout), target.id, nodes)
            click.echo(f"moving the shards of leaderboard {config.name} off {target.id}:")
            click.echo(plan.format(), nl=False)
            await _carried_out(cp, cluster, config.name, plan, runner)
        slots = await _slots_of(cp, target.id)
        kept = f"; its {slots} index slot(s) stay on it (index slots cannot move)" if slots else ""
        click.echo(f"node {target.id} is drained: it holds no shard{kept}")

    _run_jobs(ctx, work)


@click.command()
@click.argument("node")
@click.pass_context
def undrain(ctx: click.Context, node: str) -> None:
    """Mark a DRAINING node (id or address) ACTIVE again: new boards and `rebalance` may place shards on
    it. Moves nothing by itself; run `rankshard rebalance` to give it its share.

    \b
    Examples:
      rankshard nodes undrain n3
      rankshard rebalance -l global
    """

    async def work(cp: ControlPlane) -> tuple[Node, bool]:
        found = await _registered(cp, node)
        if found.state == "ACTIVE":
            return found, False
        return await cp.set_node_state(found.id, "ACTIVE"), True

    found, changed = run(ctx, work)
    if changed:
        click.echo(f"node {found.id} is ACTIVE: new shards may be placed on it; `rankshard rebalance` moves some there")
    else:
        click.echo(f"node {found.id} is already ACTIVE; nothing was changed")


def _run_jobs(ctx: click.Context, work: Callable[[ControlPlane, Cluster, StepRunner], Awaitable[None]]) -> None:
    """Runs `work` with a cluster and a job runner printing as it goes; Ctrl-C becomes one line saying what is
    left and how to finish it."""
    runners: list[StepRunner] = []

    async def main(cp: ControlPlane) -> None:
        cluster = await connect_cluster(cp)
        try:
            runners.append(StepRunner(cp, cluster, click.echo, settings_of(ctx)))
            await work(cp, cluster, runners[0])
        finally:
            await cluster.aclose()

    try:
        run(ctx, main)
    except KeyboardInterrupt:
        said = runners[0].interrupted() if runners else "interrupted before a job began"
        raise click.ClickException(said) from None


async def _layout(cp: ControlPlane, board: str) -> BoardLayout:
    return BoardLayout(await cp.get_board(board), await cp.shard_map(board))


async def _prechecked(
    cp: ControlPlane, cluster: Cluster, board: str | None, weights: dict[str, float]
) -> list[ServingNode]:
    """The serving nodes, once every one answers and no job (of `board`, or of any board) is in flight; raises
    `click.ClickException` saying which is not so."""
    running = await cp.jobs.list(board, running=True)
    if running:
        job = running[0]
        raise click.ClickException(
            f"{job.describe()} is in flight at {job.step}: finish it with `rankshard jobs resume {job.id}` "
            "first; nothing was changed"
        )
    nodes = await serving_nodes(cp, weights)
    await asyncio.gather(*(cluster.node(n.id).command("PING") for n in nodes))
    click.echo(f"prechecks: {len(nodes)} serving node(s) answer; no job in flight")
    return nodes


async def _registered(cp: ControlPlane, name: str) -> Node:
    """The node named `name` (id or address); raises `NotFound` saying nothing was changed."""
    found = next((n for n in await cp.list_nodes() if name in (n.id, n.address)), None)
    if found is None:
        raise NotFound(f"node {name!r} not found; nothing was changed")
    return found


async def _drainable(cp: ControlPlane, name: str) -> Node:
    """The node named `name` (id or address), if another node could take its shards."""
    registered = await cp.list_nodes()
    found = await _registered(cp, name)
    if not any(n.state == "ACTIVE" for n in registered if n.id != found.id):
        raise click.ClickException(
            f"node {found.id} is the last serving node: no other node could take its shards; nothing was changed"
        )
    return found


async def _carried_out(cp: ControlPlane, cluster: Cluster, board: str, plan: Plan, runner: StepRunner) -> None:
    jobs = await carry_out(cp, cluster, board, plan, job_owner(), runner, lease_s=runner.lease_s)
    epoch = (await cp.shard_map(board)).epoch
    click.echo(
        f"leaderboard {board}: {len(jobs)} step(s) done, {sum(j.copied for j in jobs):,} members copied; "
        f"now at epoch {epoch}"
    )


async def _slots_of(cp: ControlPlane, node: str) -> int:
    table = await cp.slot_table()
    return 0 if table is None else sum(owner == node for owner in table.owners)


def _next_shard(shard_map: ShardMap) -> int:
    """A number above every shard's: the planner's names for new shards (the jobs' ids may differ)."""
    numbers = [int(m[1]) for s in shard_map.shards if (m := _SHARD_NUMBER.fullmatch(s.id))]
    return max(numbers, default=0) + 1
