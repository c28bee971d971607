"""The rebalance planner (DESIGN "Planner"): from a board's map and per-shard stats, the splits, moves and merges
that bring every node within PCT of its target. Pure: nothing here waits or touches a node.

The load of a node is its members. Targets follow weights: ``target_i = total * w_i / sum(w)``; a node of
weight 0, or draining, has target 0 and receives nothing, and its shards go first. The planner acts only when
some node is out of ``|load_i - target_i| <= PCT * target_i`` (or a drained node still holds a shard).

Greedy, simulated step by step (`_plan_steps.apply_step`): drained nodes first, each shard to the node furthest
below its target; then pair the node with the largest surplus with the one with the largest deficit (one of the
two out of bounds) and move the shard that best fits min(surplus, deficit) without pushing either node out of
bounds. When no whole shard fits well (within half the receiver's tolerance and not past its target), carve one
of the source's shards at a quantile (a split, then a move of the carved side) if that fits better. A shard that
moved is never moved, carved or moved back again, so no step undoes another. Last, adjacent shards on one node
that are both under `SMALL_SHARD_FRACTION` of the mean target merge, unless they were split apart in this plan.
Ties go to the node listed first and to the lower shard, so the same inputs give the same plan.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ._errors import InvalidArgument
from ._model import Shard, ShardMap, ShardState
from ._plan_steps import Merge, Move, Piece, ShardStats, Split, Step, apply_step, cuts, loads, pieces_of, replay
from ._plan_text import format_plan, percent

DEFAULT_THRESHOLD_PCT = 10.0
SMALL_SHARD_FRACTION = 0.25
"""Adjacent shards on one node that are both under this share of the mean target per node merge (Mongo's
defragmentation keeps chunks above a quarter of the target size too)."""


@dataclass(frozen=True, slots=True)
class ServingNode:
    """A node that may hold shards: `weight` scales its target; `draining` (or weight 0) drains it."""

    id: str
    weight: float = 1.0
    draining: bool = False

    @property
    def share(self) -> float:
        return 0.0 if self.draining else self.weight


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """A node's target and its members before and after the plan (the planner's estimate)."""

    node: str
    target: float
    before: int
    after: int
    draining: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps, in order, to apply one at a time; `reason` says why nothing is done or why the threshold is
    not reached (a tie at one score, the step limit), else None. `stats` are the inputs, ascending."""

    steps: tuple[Step, ...]
    loads: tuple[NodeLoad, ...]
    threshold_pct: float
    reason: str | None
    stats: tuple[ShardStats, ...]

    @property
    def members_moved(self) -> int:
        return sum(step.members for step in self.steps if isinstance(step, Move))

    def format(self) -> str:
        """The `--dry-run` text: same plan, same text."""
        return format_plan(self)


def step_limit(nodes: int, shards: int) -> int:
    """The most steps a plan holds."""
    return 4 * nodes + shards


def plan_rebalance(
    shard_map: ShardMap,
    stats: Sequence[ShardStats],
    nodes: Sequence[ServingNode],
    *,
    next_shard: int,
    threshold_pct: float = DEFAULT_THRESHOLD_PCT,
) -> Plan:
    """The plan that brings every node of `nodes` within `threshold_pct` of its target, as far as the shards'
    quantiles allow. New shards are named ``s{next_shard}``, ``s{next_shard + 1}``...

    Raises `InvalidArgument` when the stats do not describe `shard_map`, a shard is not ACTIVE (a job is in
    flight), a shard sits on a node not in `nodes`, no node can receive (every weight 0 or draining), or a
    new name would clash."""
    planning = _Planning(shard_map, stats, nodes, threshold_pct, next_shard)
    if not planning.unsettled():
        return planning.plan(f"nothing to do: every node is within {threshold_pct:g}% of its target")
    reason = _balance(planning)
    if planning.steps:
        _merge_small(planning)
    return planning.plan(reason)


def plan_drain(
    shard_map: ShardMap,
    stats: Sequence[ShardStats],
    node: str,
    nodes: Sequence[ServingNode],
    *,
    threshold_pct: float = DEFAULT_THRESHOLD_PCT,
) -> Plan:
    """Whole-shard moves that empty `node`: its largest shard first, each to the node then furthest below
    its target (the least loaded, with equal weights). Other nodes are not balanced.

    Raises `InvalidArgument` when `node` is not in `nodes` or is the last node that could take shards, and
    as `plan_rebalance` does for inconsistent inputs."""
    if node not in {n.id for n in nodes}:
        raise InvalidArgument("node", f"{node} is not among the nodes")
    if not any(n.share > 0 for n in nodes if n.id != node):
        raise InvalidArgument("node", f"{node} is the last serving node: no other node could take its shards")
    drained = [replace(n, draining=True) if n.id == node else n for n in nodes]
    planning = _Planning(shard_map, stats, drained, threshold_pct, next_shard=None)
    leaving = sorted(
        (p for p in planning.pieces if p.node == node), key=lambda p: (-p.members, planning.pieces.index(p))
    )
    if not leaving:
        return planning.plan(f"nothing to do: {node} holds no shards")
    for piece in leaving:
        target = min(planning.receivers(), key=planning.deviation)
        planning.apply(Move(piece.id, node, target, piece.members))
    return planning.plan(None)


def apply_plan(shard_map: ShardMap, plan: Plan) -> ShardMap:
    """The map after every step of `plan`, shards named as the plan names them. Shards the plan does not
    touch are kept as they are; changed ones take their generation + 1, new ones generation 1; the epoch is
    the input's (the store assigns the real ones). Raises `InvalidArgument` if `plan` was made for another map."""
    if _layout(shard_map.shards) != _layout(s.shard for s in plan.stats):
        raise InvalidArgument("shard_map", f"not the map of {shard_map.board!r} the plan was made for")
    return ShardMap(shard_map.board, shard_map.epoch, tuple(s.shard for s in expected_stats(plan)))


def expected_stats(plan: Plan) -> tuple[ShardStats, ...]:
    """The planner's estimate of every shard's stats after `plan`, ascending."""
    before = {s.shard.id: s.shard for s in plan.stats}
    after = []
    for piece in replay(pieces_of(plan.stats), plan.steps):
        old = before.get(piece.id)
        if old is not None and (old.lower, old.upper, old.node) == (piece.lower, piece.upper, piece.node):
            after.append(ShardStats(old, piece.members, piece.quantiles))
        else:
            after.append(piece.stats(1 if old is None else old.generation + 1))
    return tuple(after)


def _layout(shards: Iterable[Shard]) -> list[tuple[str, int | None, int | None, str]]:
    return sorted((s.id, s.lower, s.upper, s.node) for s in shards)


class _Planning:
    """A plan being built: the simulated pieces, the steps so far, and the nodes' targets."""

    def __init__(
        self,
        shard_map: ShardMap,
        stats: Sequence[ShardStats],
        nodes: Sequence[ServingNode],
        threshold_pct: float,
        next_shard: int | None,
    ) -> None:
        """`next_shard` None: the plan splits nothing."""
        _check_inputs(shard_map, stats, nodes, threshold_pct, next_shard)
        self.stats = tuple(sorted(stats, key=lambda s: (s.shard.lower is not None, s.shard.lower or 0)))
        self.pieces: list[Piece] = pieces_of(self.stats)
        self.steps: list[Step] = []
        self.order = [n.id for n in nodes]
        self.share = {n.id: n.share for n in nodes}
        self.pct = threshold_pct
        self.next_shard = next_shard or 0
        self.limit = step_limit(len(nodes), len(self.pieces))
        total, weight = sum(p.members for p in self.pieces), sum(self.share.values())
        self.target = {n: total * share / weight for n, share in self.share.items()}
        self.tol = {n: t * threshold_pct / 100 for n, t in self.target.items()}
        self.before = loads(self.pieces, self.order)
        self.load = dict(self.before)

    def apply(self, step: Step) -> None:
        self.pieces = apply_step(self.pieces, step)
        self.steps.append(step)
        self.load = loads(self.pieces, self.order)

    def new_id(self) -> str:
        self.next_shard += 1
        return f"s{self.next_shard - 1}"

    def deviation(self, node: str) -> float:
        return self.load[node] - self.target[node]

    def out(self, node: str) -> bool:
        return abs(self.deviation(node)) > self.tol[node]

    def draining(self, node: str) -> bool:
        return self.share[node] == 0

    def holds(self, node: str) -> bool:
        return any(p.node == node for p in self.pieces)

    def draining_pieces(self) -> int:
        return sum(self.draining(p.node) for p in self.pieces)

    def receivers(self) -> list[str]:
        return [n for n in self.order if not self.draining(n)]

    def unsettled(self) -> bool:
        return any(self.out(n) or (self.draining(n) and self.holds(n)) for n in self.order)

    def plan(self, reason: str | None) -> Plan:
        node_loads = tuple(
            NodeLoad(n, self.target[n], self.before[n], self.load[n], self.draining(n)) for n in self.order
        )
        return Plan(tuple(self.steps), node_loads, self.pct, reason, self.stats)


def _check_inputs(
    shard_map: ShardMap, stats: Sequence[ShardStats], nodes: Sequence[ServingNode], pct: float, next_shard: int | None
) -> None:
    if not (math.isfinite(pct) and 0 < pct <= 100):
        raise InvalidArgument("threshold_pct", f"{pct} is not in (0, 100]")
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("nodes", "a node is listed twice")
    if any(not (math.isfinite(n.weight) and n.weight >= 0) for n in nodes):
        raise InvalidArgument("nodes", "weights must be finite and >= 0")
    if not any(n.share > 0 for n in nodes):
        raise InvalidArgument("nodes", "no node can take shards: every node is draining or has weight 0")
    if _layout(shard_map.shards) != _layout(s.shard for s in stats):
        raise InvalidArgument("stats", f"the stats are not of the shards of {shard_map.board!r}")
    strays = sorted({s.node for s in shard_map.shards} - set(ids))
    if strays:
        raise InvalidArgument("nodes", f"shards sit on {', '.join(strays)}, which is not among the nodes")
    busy = [f"{s.id} is {s.state}" for s in shard_map.shards if s.state is not ShardState.ACTIVE]
    if busy:
        raise InvalidArgument("shard_map", f"{', '.join(busy)}: finish or abort its job before planning")
    taken = [int(m[1]) for s in shard_map.shards if (m := re.fullmatch(r"s(\d+)", s.id))]
    if next_shard is not None and (next_shard < 1 or any(n >= next_shard for n in taken)):
        raise InvalidArgument("next_shard", f"new shards need names unused from s{next_shard} up")


def _balance(planning: _Planning) -> str | None:
    """Steps until every node is within bounds; the reason when that cannot be reached.

    A drain always finishes within the step limit: steps so far plus shards left on drained nodes never
    exceed it (they start at most the shard count; a whole move keeps the sum, and a carve, which adds
    one, is only planned while there is room for it)."""
    while planning.unsettled():
        if not planning.draining_pieces() and len(planning.steps) + 2 > planning.limit:
            return f"stopped at the limit of {planning.limit} steps; plan again after these"
        if not (_act(planning) or _force_drain(planning)):
            return _stuck_reason(planning)
    return None


def _act(planning: _Planning) -> bool:
    for source, receiver in _pairs(planning):
        steps = _best_steps(planning, source, receiver)
        if steps:
            for step in steps:
                planning.apply(step)
            return True
    return False


def _pairs(planning: _Planning) -> list[tuple[str, str]]:
    """(source, receiver) to try, best first: only drained nodes while they hold shards, then by surplus and
    by deficit."""
    rank = {n: i for i, n in enumerate(planning.order)}
    draining = [n for n in planning.order if planning.draining(n) and planning.holds(n)]
    over = sorted(
        (n for n in planning.receivers() if planning.deviation(n) > 0),
        key=lambda n: (-planning.deviation(n), rank[n]),
    )
    receivers = sorted(planning.receivers(), key=lambda n: (planning.deviation(n), rank[n]))
    if draining:
        return [(s, r) for s in draining for r in receivers]
    return [
        (s, r) for s in over for r in receivers if planning.deviation(r) < 0 and (planning.out(s) or planning.out(r))
    ]


def _best_steps(planning: _Planning, source: str, receiver: str) -> list[Step] | None:
    """The move, or carve (split + move), from `source` to `receiver` that best fits min(surplus, deficit).

    Every candidate keeps both nodes within bounds. A good fit (within half the receiver's tolerance, not
    past its target) wins outright, a whole shard before a carve; else the closest fit. Landing short of
    the target matters: what a node receives cannot leave it again in this plan, so an overshoot there
    would be stuck."""
    drain = planning.draining(source)
    deficit = -planning.deviation(receiver)
    amount = max(0.0, min(planning.load[source] if drain else planning.deviation(source), deficit))
    may_carve = not drain or len(planning.steps) + 2 + planning.draining_pieces() <= planning.limit

    def fits(members: int) -> bool:
        if members < (0 if drain else 1) or members - deficit > planning.tol[receiver]:
            return False
        return drain or planning.deviation(source) - members >= -planning.tol[source]

    def rank(members: int, carve: bool) -> tuple[bool, bool, float]:
        good = abs(members - amount) <= planning.tol[receiver] / 2 and members <= deficit
        return (not good, good and carve, abs(members - amount))

    # Ranked by fit, then position, whole shard before cuts, lower cut first, smaller side first.
    best: tuple[tuple[bool, bool, float], int, bool, int, int] | None = None
    chosen: tuple[Piece, int | None, int, int] | None = None
    for i, piece in enumerate(planning.pieces):
        if piece.node != source or piece.moved:
            continue
        whole: list[tuple[int, int | None, int]] = [(piece.members, None, 0)]
        carved = [(m, at, left) for at, left in cuts(piece) for m in sorted({piece.members - left, left}) if may_carve]
        for members, at, left in whole + carved:
            key = (rank(members, at is not None), i, at is not None, at or 0, members)
            if fits(members) and (best is None or key < best):
                best, chosen = key, (piece, at, members, left)
    if chosen is None:
        return None
    piece, at, members, left = chosen
    if at is None:
        return [Move(piece.id, source, receiver, members)]
    new = planning.new_id()
    moving = new if members == piece.members - left else piece.id
    return [Split(piece.id, at, new, left, piece.members - left), Move(moving, source, receiver, members)]


def _force_drain(planning: _Planning) -> bool:
    """A drained node's shard that fits nowhere within bounds still leaves: to the node furthest below target."""
    for piece in planning.pieces:
        if planning.draining(piece.node):
            receiver = min(planning.receivers(), key=planning.deviation)
            planning.apply(Move(piece.id, piece.node, receiver, piece.members))
            return True
    return False


def _stuck_reason(planning: _Planning) -> str:
    worst = max(planning.order, key=lambda n: abs(planning.deviation(n)) - planning.tol[n])
    text = (
        f"cannot reach ±{planning.pct:g}%: {worst} stays at {planning.load[worst]:,} "
        f"({percent(planning.load[worst], planning.target[worst])}) of its target {planning.target[worst]:,.0f}"
    )
    ties = sorted(
        (p for p in planning.pieces if planning.deviation(p.node) > 0 and not p.moved and not p.cuttable),
        key=lambda p: -p.members,
    )
    if ties and ties[0].members > 1:
        tie = ties[0]
        where = f"shard {tie.id} holds {tie.members:,} members at one score ({tie.quantiles[0]})"
        return f"{text}; {where}, a tie no cut can split"
    return f"{text}; no shard or cut of one fits without pushing another node past its bounds"


def _merge_small(planning: _Planning) -> None:
    """Merges adjacent small shards on each node, left to right (the left one's id survives), until no two
    adjacent shards on one node are both small; never two pieces split apart in this plan."""
    receivers = planning.receivers()
    small = SMALL_SHARD_FRACTION * sum(planning.load.values()) / len(receivers)
    i = 0
    while i + 1 < len(planning.pieces) and len(planning.steps) < planning.limit:
        left, right = planning.pieces[i], planning.pieces[i + 1]
        if (
            left.node == right.node
            and left.node in receivers
            and max(left.members, right.members) < small
            and not left.origins & right.origins
        ):
            planning.apply(Merge(left.id, right.id, left.members + right.members))
        else:
            i += 1
