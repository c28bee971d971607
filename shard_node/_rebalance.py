"""Rebalancing a board (docs/architecture.md, "Rebalancing"): the planner's inputs read from the nodes and the
control plane, and a plan carried out one job at a time.

`board_stats` gives the `ShardStats` the planner needs (clipped counts, quantiles at the ranks its contract
names, in client scores); `serving_nodes` the nodes that may hold shards; `carry_out` runs each step of a
`Plan` as a job (`plan_split`, `plan_move`, `plan_merge`, then the given runner, a `Carver`'s by default),
naming shards as the jobs really name them, and stops at the first step that does not finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

from rankshard.shard_map import (
    ControlPlane,
    InvalidArgument,
    Job,
    JobState,
    Merge,
    Move,
    NodeError,
    Plan,
    RankshardError,
    ServingNode,
    Shard,
    ShardStats,
    Split,
    Step,
)

from ._carve_plan import DRAINING, plan_merge, plan_move, plan_split
from ._client import NodeClient
from ._keys import shard_key
from ._layout import BoardLayout, Cluster

QUANTILES = 64
"""Scores per shard the planner gets: a cut it plans is off by at most about 1/64 of the shard's members."""
SERVING_STATES = ("ACTIVE", DRAINING)
"""Node states whose nodes take part in a plan (a draining node only gives)."""

JobRunner = Callable[[int, Job], Awaitable[Job]]
"""Runs the job of a plan's step (numbered from 1) to its end and returns its last row (a `Carver`'s `run`)."""


class PlanStepFailed(RankshardError):
    """A step of a plan did not finish. The message names the step, its job, what went wrong and what to run
    next; the steps before it are done, the ones after it are not begun."""

    def __init__(self, number: int, step: Step, job: Job | None, problem: str) -> None:
        where = f"{job.describe()}: " if job is not None else ""
        resume = (
            f"; it is left {job.step}: `rankshard jobs resume {job.id}` finishes it"
            if job is not None and job.state is JobState.RUNNING
            else ""
        )
        super().__init__(
            f"step {number} ({describe_step(step)}) failed: {where}{problem}{resume}; steps before it are done. "
            "Run `rankshard rebalance` again to plan from the current state"
        )
        self.number = number
        self.job = job


def describe_step(step: Step) -> str:
    """A step as the plan names it: ``split s3 at 4810``, ``move s9 n1 -> n2``, ``merge s1 + s2``."""
    if isinstance(step, Split):
        return f"split {step.shard} at {step.at}"
    if isinstance(step, Move):
        return f"move {step.shard} {step.source} -> {step.target}"
    return f"merge {step.shard} + {step.with_}"


async def board_stats(cluster: Cluster, layout: BoardLayout) -> list[ShardStats]:
    """Every shard's members (clipped to its range) and `QUANTILES` scores at evenly spaced ranks, as
    `ShardStats` documents, read in two pipelined round trips per node, nodes in parallel. Raises `NodeError`.

    Under live writes the counts and the ranks are read a moment apart: scores that fell outside the shard's
    range by then are left out and the rest put in order, so the stats always meet the planner's contract."""
    nodes = list(layout.by_node)
    found = await asyncio.gather(*(_node_stats(cluster.node(n), layout, layout.by_node[n]) for n in nodes))
    stats = {s.shard.id: s for per_node in found for s in per_node}
    return [stats[s.id] for s in layout.map.shards]


async def _node_stats(node: NodeClient, layout: BoardLayout, shards: Sequence[Shard]) -> list[ShardStats]:
    counts = await node.commands([c for s in shards for c in _count_commands(layout, s)])
    sizes = [(int(counts[2 * i]), int(counts[2 * i + 1])) for i in range(len(shards))]
    reads = [_quantile_commands(layout, s, members, below) for s, (members, below) in zip(shards, sizes, strict=True)]
    replies = await node.commands([c for commands in reads for c in commands])
    stats, at = [], 0
    for shard, (members, _), commands in zip(shards, sizes, reads, strict=True):
        scores = _scores(layout, shard, replies[at : at + len(commands)])
        at += len(commands)
        stats.append(ShardStats(shard, members if scores else 0, tuple(scores)))
    return stats


def _count_commands(layout: BoardLayout, shard: Shard) -> list[tuple[object, ...]]:
    """The shard's clipped count, and how many stored scores of its key lie below its range (its first rank)."""
    key, (lo, hi) = shard_key(layout.board, shard.id), layout.stored_ranges[shard.id]
    return [("ZCOUNT", key, lo, f"({hi}"), ("ZCOUNT", key, "-inf", f"({lo}")]


def quantile_ranks(members: int, count: int = QUANTILES) -> list[int]:
    """The ascending ranks `ShardStats` names for `members` members: ``round(i * (m-1) / (k-1))``, halves up."""
    k = min(count, members)
    if k <= 1:
        return [0] * k
    return [(2 * i * (members - 1) + (k - 1)) // (2 * (k - 1)) for i in range(k)]


def _quantile_commands(layout: BoardLayout, shard: Shard, members: int, below: int) -> list[tuple[object, ...]]:
    key = shard_key(layout.board, shard.id)
    # A descending board stores negated scores: the client's ascending rank r is stored rank members-1-r.
    stored = [members - 1 - r if layout.descending else r for r in quantile_ranks(members)]
    return [("ZRANGE", key, below + r, below + r, "WITHSCORES") for r in stored]


def _scores(layout: BoardLayout, shard: Shard, replies: Sequence[object]) -> list[int]:
    scores = []
    for reply in replies:
        if isinstance(reply, list) and len(reply) == 2:
            score = layout.unstored(int(float(reply[1])))
            if shard.holds(score):
                scores.append(score)
    return sorted(scores)


async def serving_nodes(cp: ControlPlane, weights: Mapping[str, float] | None = None) -> list[ServingNode]:
    """The registered nodes that are ACTIVE or DRAINING, in registration order, weighted by `weights` (by node
    id or address; 1 for a node not named). Raises `InvalidArgument` naming a node of `weights` that is not
    registered, `ControlPlaneError`."""
    weights = dict(weights or {})
    registered = await cp.list_nodes()
    names = {name: n.id for n in registered for name in (n.id, n.address)}
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise InvalidArgument("weight", f"no registered node {unknown[0]!r} (nodes: {', '.join(names)})")
    by_id = {names[name]: weight for name, weight in weights.items()}
    return [
        ServingNode(n.id, by_id.get(n.id, 1.0), n.state == DRAINING) for n in registered if n.state in SERVING_STATES
    ]


async def carry_out(
    cp: ControlPlane,
    cluster: Cluster,
    board: str,
    plan: Plan,
    owner: str,
    run: JobRunner,
    *,
    lease_s: float = 30.0,
) -> list[Job]:
    """Runs the steps of `plan` (made for `board`'s current map) in order, each as one job, and returns the
    jobs' last rows. A split's new shard and a moved shard get their ids from the control plane, so later
    steps are given the real ids of the shards the plan names.

    Raises `PlanStepFailed` at the first step that cannot be planned as a job, raises while it runs, or ends
    ABORTED (it rolled back); nothing after it is begun."""
    real: dict[str, str] = {}
    done: list[Job] = []
    for number, step in enumerate(plan.steps, start=1):
        job: Job | None = None
        try:
            job = await _plan_job(cp, cluster, board, step, real, owner, lease_s)
            job = await run(number, job)
        except RankshardError as exc:
            raise PlanStepFailed(number, step, await _last_row(cp, job), str(exc)) from exc
        if job.state is not JobState.DONE:
            raise PlanStepFailed(number, step, job, f"it ended {job.state} ({job.error or 'rolled back'})")
        if isinstance(step, Split):
            real[step.new_shard] = job.target
        elif isinstance(step, Move):
            real[step.shard] = job.target
        done.append(job)
    return done


async def _last_row(cp: ControlPlane, job: Job | None) -> Job | None:
    """The job's row as recorded (the step it stopped at), else as last seen when the control plane fails too."""
    if job is None:
        return None
    try:
        return await cp.jobs.get(job.id)
    except RankshardError:
        return job


async def _plan_job(
    cp: ControlPlane, cluster: Cluster, board: str, step: Step, real: Mapping[str, str], owner: str, lease_s: float
) -> Job:
    shard = real.get(step.shard, step.shard)
    if isinstance(step, Split):
        return await plan_split(cp, cluster, board, shard, step.at, owner, lease_s)
    if isinstance(step, Move):
        return await plan_move(cp, board, shard, step.target, owner, lease_s)
    assert isinstance(step, Merge)
    other = real.get(step.with_, step.with_)
    return await plan_merge(cp, cluster, board, shard, other, owner, lease_s, survivor=shard)


async def node_members(nodes: Mapping[str, NodeClient], layouts: Sequence[BoardLayout]) -> dict[str, int | None]:
    """Per node of `nodes` (by id), the members of its shards over `layouts` (clipped counts), nodes in
    parallel; None for a node that does not answer."""
    ids = list(nodes)
    counted = await asyncio.gather(*(_members_on(nodes[n], layouts) for n in ids))
    return dict(zip(ids, counted, strict=True))


async def _members_on(node: NodeClient, layouts: Sequence[BoardLayout]) -> int | None:
    commands = [
        ("ZCOUNT", shard_key(layout.board, s.id), lo, f"({hi}")
        for layout in layouts
        for s in layout.by_node.get(node.id, ())
        for lo, hi in (layout.stored_ranges[s.id],)
    ]
    try:
        return sum(int(count) for count in await node.commands(commands))
    except NodeError:
        return None
