"""The steps of a rebalance plan and their pure simulation (docs: DESIGN "Rebalancing: one primitive, CARVE").

A plan is simulated over `Piece`s: a shard as the planner sees it part way through a plan (its range, node,
estimated members and quantiles, and where its data came from). The planner builds its plan by applying each
step it chooses with `apply_step`, and `apply_plan`/`expected_stats` replay the same function, so the plan
and the simulation of it cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ._errors import InvalidArgument
from ._model import Shard


@dataclass(frozen=True, slots=True)
class ShardStats:
    """What a node says about one shard: its members and their scores at evenly spaced ranks.

    `quantiles[i]` is the score (the client's, ascending order) of the member at ascending rank
    ``round(i * (members - 1) / (len(quantiles) - 1))`` (a single quantile is the lowest score); empty
    exactly when the shard is empty. Every quantile lies inside the shard's range.
    """

    shard: Shard
    members: int
    quantiles: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Split:
    """`shard` [lower, upper) becomes `shard` [lower, at) and `new_shard` [at, upper), both on its node.

    lower < at < upper, and by the planner's estimate both sides hold members."""

    shard: str
    at: int
    new_shard: str
    left_members: int
    right_members: int


@dataclass(frozen=True, slots=True)
class Move:
    """All of `shard` goes from node `source` to node `target`. The executor gives the moved shard a new id;
    the steps of a plan keep naming it by this one."""

    shard: str
    source: str
    target: str
    members: int


@dataclass(frozen=True, slots=True)
class Merge:
    """Adjacent shards `shard` (the lower range) and `with_` (right above it), on one node, become one:
    `shard`'s id survives with `members` members; `with_` is gone."""

    shard: str
    with_: str
    members: int


Step = Split | Move | Merge


@dataclass(frozen=True, slots=True)
class Piece:
    """A shard part way through a plan. `origins` are the input shards whose data it holds (two pieces
    sharing one were split apart in this plan); `moved` says it changed node in this plan."""

    id: str
    lower: int | None
    upper: int | None
    node: str
    members: int
    quantiles: tuple[int, ...]
    origins: frozenset[str]
    moved: bool = False

    @property
    def cuttable(self) -> bool:
        """Whether some cut leaves members on both sides: a tie at one score cannot be cut."""
        return len(self.quantiles) > 1 and self.quantiles[0] != self.quantiles[-1]

    def stats(self, generation: int = 1) -> ShardStats:
        shard = Shard(self.id, self.lower, self.upper, self.node, generation=generation)
        return ShardStats(shard, self.members, self.quantiles)


def pieces_of(stats: Iterable[ShardStats]) -> list[Piece]:
    """The pieces of the input shards, ascending, checked. Raises `InvalidArgument` on inconsistent stats."""
    pieces = [_checked_piece(s) for s in stats]
    pieces.sort(key=lambda p: (p.lower is not None, p.lower or 0))
    return pieces


def _checked_piece(stats: ShardStats) -> Piece:
    shard, quantiles = stats.shard, stats.quantiles
    field = f"stats[{shard.id}]"
    if stats.members < 0:
        raise InvalidArgument(field, f"{stats.members} members")
    if (stats.members == 0) != (not quantiles):
        raise InvalidArgument(field, f"{stats.members} members but {len(quantiles)} quantiles")
    if any(b < a for a, b in zip(quantiles, quantiles[1:], strict=False)):
        raise InvalidArgument(field, "quantiles are not ascending")
    if quantiles and not (shard.holds(quantiles[0]) and shard.holds(quantiles[-1])):
        raise InvalidArgument(field, f"quantiles outside [{shard.lower}, {shard.upper})")
    return Piece(shard.id, shard.lower, shard.upper, shard.node, stats.members, quantiles, frozenset({shard.id}))


def apply_step(pieces: Sequence[Piece], step: Step) -> list[Piece]:
    """The pieces after `step`. Raises `ValueError` for a step that does not apply (a bug in the plan)."""
    at = _position(pieces, step.shard)
    piece, before, after = pieces[at], list(pieces[:at]), list(pieces[at + 1 :])
    if isinstance(step, Split):
        return [*before, *_split(piece, step), *after]
    if isinstance(step, Move):
        if piece.node != step.source or step.target == step.source:
            raise ValueError(f"{step} does not apply to {piece}")
        return [*before, replace(piece, node=step.target, moved=True), *after]
    if not after or after[0].id != step.with_ or after[0].node != piece.node:
        raise ValueError(f"{step}: {step.with_} is not {piece.id}'s neighbour on {piece.node}")
    right = after.pop(0)
    merged = Piece(
        piece.id,
        piece.lower,
        right.upper,
        piece.node,
        piece.members + right.members,
        # Concatenated, the quantiles stay ascending but are no longer evenly spaced: an estimate.
        piece.quantiles + right.quantiles,
        piece.origins | right.origins,
        piece.moved or right.moved,
    )
    return [*before, merged, *after]


def _split(piece: Piece, step: Split) -> tuple[Piece, Piece]:
    inside = (piece.lower is None or piece.lower < step.at) and (piece.upper is None or step.at < piece.upper)
    if not inside or min(step.left_members, step.right_members) < 1:
        raise ValueError(f"{step} does not apply to {piece}")
    left_q = tuple(q for q in piece.quantiles if q < step.at)
    right_q = piece.quantiles[len(left_q) :]
    left = replace(piece, upper=step.at, members=step.left_members, quantiles=left_q)
    right = replace(piece, id=step.new_shard, lower=step.at, members=step.right_members, quantiles=right_q)
    return left, right


def _position(pieces: Sequence[Piece], shard: str) -> int:
    for i, piece in enumerate(pieces):
        if piece.id == shard:
            return i
    raise ValueError(f"no shard {shard} in the plan's map")


def replay(pieces: Sequence[Piece], steps: Iterable[Step]) -> list[Piece]:
    """The pieces after every step, in order."""
    result = list(pieces)
    for step in steps:
        result = apply_step(result, step)
    return result


def loads(pieces: Iterable[Piece], nodes: Iterable[str]) -> dict[str, int]:
    """Members per node (every node of `nodes`, in their order, then any other node holding pieces)."""
    result = dict.fromkeys(nodes, 0)
    for piece in pieces:
        result[piece.node] = result.get(piece.node, 0) + piece.members
    return result


def cuts(piece: Piece) -> list[tuple[int, int]]:
    """Every cut the quantiles allow, as (at, estimated members below at), ascending.

    A cut is at a quantile above the lowest one, the first of its score; the members below it are
    estimated by that quantile's rank, kept within 1..members-1 since a lower score and this one exist."""
    q, m = piece.quantiles, piece.members
    spans = max(1, len(q) - 1)
    found = []
    for j in range(1, len(q)):
        if q[j] != q[j - 1]:
            rank = (2 * j * (m - 1) + spans) // (2 * spans)  # round(j * (m-1) / spans), halves up
            found.append((q[j], min(max(rank, 1), m - 1)))
    return found
