"""Planning one job: a split, merge or move of a shard checked against the map and the nodes, recorded as a job row
at PLAN (docs/architecture.md, "Rebalancing"). Nothing is changed when a check fails: each failure is one error
naming what is wrong."""

from __future__ import annotations

from collections.abc import Callable

from rankshard.shard_map import (
    CarvePlan,
    ControlPlane,
    InvalidArgument,
    Job,
    JobConflict,
    JobKind,
    Node,
    NotFound,
    Shard,
    ShardState,
)

from ._keys import shard_key, stored_range
from ._layout import BoardLayout, Cluster

DRAINING = "DRAINING"
"""A node's state once it is being drained: it gets no new shard."""


async def plan_split(
    cp: ControlPlane, cluster: Cluster, board: str, shard_id: str, at: int | None, owner: str, lease_s: float
) -> Job:
    """A split of `shard_id` at `at` (by default the median member's score): ``[lower, at)`` stays, ``[at,
    upper)`` becomes a new shard on the same node. Raises `NotFound`, `InvalidArgument` (a cut outside the shard,
    or one that would leave a side without members), `JobConflict`."""
    layout, shard = await _shard(cp, board, shard_id)
    if (
        job := await _same_job(cp, board, shard_id, JobKind.SPLIT, lambda j: at is None or j.plan.cut == at)
    ) is not None:
        return job
    cut = await _cut(cluster, layout, shard) if at is None else _checked_cut(shard, at)
    await _check_sides(cluster, layout, shard, cut)
    (target,) = await cp.reserve_shard_ids(board)
    plan = CarvePlan(cut, shard.upper, shard.node, shard.generation, shard.lower, shard.upper, cut, shard.upper, 1, cut)
    return await cp.jobs.create(board, JobKind.SPLIT, shard.id, target, shard.node, plan, owner, lease_s)


async def plan_merge(
    cp: ControlPlane,
    cluster: Cluster,
    board: str,
    shard_id: str,
    with_id: str,
    owner: str,
    lease_s: float,
    *,
    survivor: str | None = None,
) -> Job:
    """A merge of two adjacent shards: one is carved into the other, which keeps its id and node. The survivor is
    `survivor` when given (one of the two: a planned merge says which), else the one with more members. Raises
    `NotFound`, `InvalidArgument` (the same shard twice, shards not adjacent, a survivor that is neither),
    `JobConflict`."""
    # The command's own running job first: once it has committed, the shard carved away is no longer in the map.
    for named in dict.fromkeys((shard_id, with_id)):
        existing = await _same_job(
            cp, board, named, JobKind.MERGE, lambda j: {j.source, j.target} == {shard_id, with_id}
        )
        if existing is not None:
            return existing
    layout, first = await _shard(cp, board, shard_id)
    second = _named(layout, with_id, "with")
    if first.id == second.id:
        raise InvalidArgument("with", f"{with_id} is the shard itself; merge it with a neighbour")
    if not _adjacent(first, second):
        raise InvalidArgument(
            "with", f"{with_id} {_range(second)} is not adjacent to {shard_id} {_range(first)}: only neighbours merge"
        )
    _check_active(second)
    if survivor is None:
        sizes = [await _count(cluster, layout, s, s.lower, s.upper) for s in (first, second)]
        source, target = (first, second) if sizes[0] <= sizes[1] else (second, first)
    elif survivor in (first.id, second.id):
        source, target = (second, first) if survivor == first.id else (first, second)
    else:
        raise InvalidArgument("survivor", f"{survivor} is neither {shard_id} nor {with_id}")
    plan = CarvePlan(
        source.lower, source.upper, source.node, source.generation, source.lower, source.upper,
        target.lower, target.upper, target.generation,
    )  # fmt: skip
    return await cp.jobs.create(board, JobKind.MERGE, source.id, target.id, target.node, plan, owner, lease_s)


async def plan_move(cp: ControlPlane, board: str, shard_id: str, node_id: str, owner: str, lease_s: float) -> Job:
    """A move of `shard_id` to node `node_id`, as a new shard there. Raises `NotFound`, `InvalidArgument` (the
    node it is on, a draining node), `JobConflict`."""
    node = await _node(cp, node_id)
    # The command's own running job first: once it has committed, the shard it moved is no longer in the map.
    if (job := await _same_job(cp, board, shard_id, JobKind.MOVE, lambda j: j.target_node == node.id)) is not None:
        return job
    layout, shard = await _shard(cp, board, shard_id)
    if node.id == shard.node:
        raise InvalidArgument("to", f"shard {shard_id} is on {node.id} already")
    if node.state == DRAINING:
        raise InvalidArgument("to", f"node {node.id} is being drained: it gets no new shard")
    (target,) = await cp.reserve_shard_ids(board)
    plan = CarvePlan(
        shard.lower, shard.upper, shard.node, shard.generation, shard.lower, shard.upper, shard.lower, shard.upper, 1
    )
    return await cp.jobs.create(board, JobKind.MOVE, shard.id, target, node.id, plan, owner, lease_s)


async def _shard(cp: ControlPlane, board: str, shard_id: str) -> tuple[BoardLayout, Shard]:
    layout = BoardLayout(await cp.get_board(board), await cp.shard_map(board))
    return layout, _named(layout, shard_id, "shard")


def _named(layout: BoardLayout, shard_id: str, field: str) -> Shard:
    shard = layout.shards.get(shard_id)
    if shard is None:
        known = ", ".join(s.id for s in layout.map.shards)
        raise InvalidArgument(field, f"leaderboard {layout.board!r} has no shard {shard_id!r} (its shards: {known})")
    return shard


async def _same_job(
    cp: ControlPlane, board: str, shard_id: str, kind: JobKind, same: Callable[[Job], bool]
) -> Job | None:
    """The running job on `shard_id`, when it is this command's own (run again to finish it: returned); raises
    `JobConflict` when another job holds the shard, or the shard is in a job's passage."""
    for job in await cp.jobs.list(board, running=True):
        if shard_id in job.shards:
            if job.kind is kind and same(job):
                return job
            raise JobConflict(shard_id, job)
    return None


def _adjacent(first: Shard, second: Shard) -> bool:
    """One ends where the other begins (two unbounded ends, both None, do not meet)."""
    return (first.upper is not None and first.upper == second.lower) or (
        second.upper is not None and second.upper == first.lower
    )


def _check_active(shard: Shard) -> None:
    if shard.state is not ShardState.ACTIVE:
        raise InvalidArgument("shard", f"shard {shard.id} is {shard.state}: another job works on it")


async def _node(cp: ControlPlane, node_id: str) -> Node:
    for node in await cp.list_nodes():
        if node_id in (node.id, node.address):
            return node
    raise NotFound(f"node {node_id!r} not found")


def _checked_cut(shard: Shard, at: int) -> int:
    if not shard.holds(at) or at == shard.lower:
        raise InvalidArgument(
            "at", f"{at} is not inside shard {shard.id} {_range(shard)} (the cut must be above its lower end)"
        )
    return at


async def _cut(cluster: Cluster, layout: BoardLayout, shard: Shard) -> int:
    """The median member's score; when no member scores below it (a tie at the bottom), the next score above."""
    node, key = cluster.node(shard.node), shard_key(layout.board, shard.id)
    lo, hi = layout.stored_ranges[shard.id]
    size = int(await node.command("ZCOUNT", key, lo, f"({hi}"))
    if size == 0:
        raise InvalidArgument("at", f"shard {shard.id} has no members to cut between: give --at")
    below = int(await node.command("ZCOUNT", key, "-inf", f"({lo}"))
    stored = await node.command("ZRANGE", key, below + size // 2, below + size // 2, "WITHSCORES")
    median = layout.unstored(int(float(stored[1])))
    if await _count(cluster, layout, shard, shard.lower, median):
        return median
    above = await _lowest_above(cluster, layout, shard, median)
    if above is None:
        raise InvalidArgument(
            "shard",
            f"all {size} members of shard {shard.id} have score {median}: a shard cannot be cut inside one score",
        )
    return above


async def _count(cluster: Cluster, layout: BoardLayout, shard: Shard, lower: int | None, upper: int | None) -> int:
    """Members of `shard` scoring in ``[lower, upper)``."""
    lo, hi = stored_range(lower, upper, layout.descending)
    return int(await cluster.node(shard.node).command("ZCOUNT", shard_key(layout.board, shard.id), lo, f"({hi}"))


async def _lowest_above(cluster: Cluster, layout: BoardLayout, shard: Shard, score: int) -> int | None:
    """The lowest member score of `shard` above `score`, if any."""
    lo, hi = stored_range(score + 1, shard.upper, layout.descending)
    key = shard_key(layout.board, shard.id)
    # Stored scores of a descending board are negated: its lowest client score is its highest stored one.
    order = ("REV",) if layout.descending else ()
    first, last = (f"({hi}", lo) if layout.descending else (lo, f"({hi}")
    raw = await cluster.node(shard.node).command(
        "ZRANGE", key, first, last, "BYSCORE", *order, "LIMIT", 0, 1, "WITHSCORES"
    )
    return layout.unstored(int(float(raw[1]))) if raw else None


async def _check_sides(cluster: Cluster, layout: BoardLayout, shard: Shard, cut: int) -> None:
    """Members on both sides of `cut`; raises `InvalidArgument` saying which side would be empty."""
    left = await _count(cluster, layout, shard, shard.lower, cut)
    right = await _count(cluster, layout, shard, cut, shard.upper)
    if left and right:
        return
    if not left and not right:
        raise InvalidArgument("at", f"shard {shard.id} has no members to cut between")
    empty = "below" if not left else "at or above"
    raise InvalidArgument("at", f"a cut at {cut} would leave no member of shard {shard.id} {empty} it")


def _range(shard: Shard) -> str:
    lower = "-∞" if shard.lower is None else str(shard.lower)
    upper = "∞" if shard.upper is None else str(shard.upper)
    return f"[{lower}, {upper})"
