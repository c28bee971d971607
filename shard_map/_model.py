"""Pure model of a board's layout: configs, score-range shards, shard maps with epochs, index slots.

Nothing here waits or touches the network. Scores are the client's integers; shard ranges are
half-open ``[lower, upper)`` with ``None`` for an unbounded end.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ._errors import InvalidArgument
from ._limits import MAX_SCORE

NUM_SLOTS = 1024
"""Index slots per cluster: a user's index entries live on the node that owns ``slot_for(user_id)``."""


class SortOrder(enum.IntEnum):
    """Same numbers as ``rankshard.v1.SortOrder``."""

    DESCENDING = 1
    ASCENDING = 2


class Operator(enum.IntEnum):
    """Same numbers as ``rankshard.v1.Operator``."""

    INCREMENT = 1
    BEST = 2
    SET = 3


class ShardState(enum.StrEnum):
    """A shard's state in its descriptor (docs/architecture.md, rebalancing). The control plane records ACTIVE and
    MIGRATING; the others live on nodes only, for the few seconds of a job's end."""

    ACTIVE = "ACTIVE"
    MIGRATING = "MIGRATING"
    """The source of a job: writes go on, and every member written is noted for the job's catch-up."""
    FROZEN = "FROZEN"
    """A job's source during its final catch-up: writes wait (and thaw it after its deadline), reads go on."""
    COMMITTING = "COMMITTING"
    """A job's source past its point of no return: writes wait for the new map, reads go on."""
    INCOMING = "INCOMING"
    """A job's target: filled by the job, read once the map names it, written once it is ACTIVE."""


ENTRIES_PER_HASH = 64
"""What `Buckets.sized_for` aims at. A hash's own overhead (about 100 B) is small per entry at 64, and a
listpack is scanned on every lookup: importing 4M members into a 5M-member board on this project's 2-core
machine, a script's HSETNX took 3.2 µs at about 64 entries per hash and 8.2 µs at about 300. Past the nodes'
`hash-max-listpack-entries` (1,024) a hash becomes a hash table: about 69 B per index entry instead of 36."""


@dataclass(frozen=True, slots=True)
class Buckets:
    """How many hashes hold a board's per-member data on the nodes (the key formats: shard_node/_keys.py).

    Fixed when the board is created (a user's keys are computed from them): `index` hashes per index
    slot, `versions` hashes per node holding shards of the board. The defaults are the layout of every
    board created before boards were sized, good for boards of 10^5 to a few 10^6 members.
    """

    index: int = 16
    versions: int = 8192

    @classmethod
    def sized_for(cls, members: int, nodes: int) -> Buckets:
        """About ENTRIES_PER_HASH entries per hash at `members` members over `nodes` nodes; the
        defaults when `members` is 0 (not given)."""
        if members <= 0:
            return cls()
        return cls(
            index=max(1, math.ceil(members / (NUM_SLOTS * ENTRIES_PER_HASH))),
            versions=max(1, math.ceil(members / (max(1, nodes) * ENTRIES_PER_HASH))),
        )


@dataclass(frozen=True, slots=True)
class BoardConfig:
    name: str
    sort_order: SortOrder = SortOrder.DESCENDING
    operator: Operator = Operator.INCREMENT
    expected_members: int = 0
    """The size the board was laid out for, as its creator gave it (0: not given)."""
    buckets: Buckets = Buckets()

    @property
    def descending(self) -> bool:
        return self.sort_order is SortOrder.DESCENDING


@dataclass(frozen=True, slots=True)
class Shard:
    """One score range of one board, owned by one node.

    `generation` changes whenever the range, owner or state changes; nodes hold a descriptor with it
    and refuse writes planned with another (the fence of docs/architecture.md, write path step 3).
    """

    id: str
    lower: int | None
    upper: int | None
    node: str
    state: ShardState = ShardState.ACTIVE
    generation: int = 1
    pending_cut: int | None = None
    """While a split of this shard is under way, its cut: crossings are decided on it already, so that none
    decided during the job is wrong once the cut is made (docs/architecture.md, rebalancing, the epoch floor)."""

    def holds(self, score: int) -> bool:
        return (self.lower is None or score >= self.lower) and (self.upper is None or score < self.upper)


@dataclass(frozen=True, slots=True)
class ShardMap:
    """A board's shards in ascending score order, at one epoch."""

    board: str
    epoch: int
    shards: tuple[Shard, ...]
    _uppers: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = tiling_problems(self.shards)
        if problems:
            raise ValueError(f"shard map of {self.board!r} does not tile: {'; '.join(problems)}")
        object.__setattr__(self, "_uppers", tuple(s.upper for s in self.shards[:-1]))

    @property
    def boundaries(self) -> tuple[int, ...]:
        return self._uppers

    @property
    def refined_cuts(self) -> tuple[int, ...]:
        """The cut points with those of splits under way: where the index decides that a member crosses."""
        pending = [s.pending_cut for s in self.shards if s.pending_cut is not None]
        return tuple(sorted({*self._uppers, *pending})) if pending else self._uppers

    def index_for(self, score: int) -> int:
        """Position (ascending) of the shard whose range holds `score`."""
        return bisect.bisect_right(self._uppers, score)

    def shard_for(self, score: int) -> Shard:
        return self.shards[self.index_for(score)]

    def by_id(self, shard_id: str) -> Shard:
        for shard in self.shards:
            if shard.id == shard_id:
                return shard
        raise KeyError(shard_id)

    def best_first(self, order: SortOrder) -> tuple[Shard, ...]:
        """Shards from the best scores to the worst under `order`."""
        return self.shards[::-1] if order is SortOrder.DESCENDING else self.shards


def tiling_problems(shards: Sequence[Shard]) -> list[str]:
    """What keeps `shards` (ascending) from tiling the whole score line once (docs/architecture.md invariant 1)."""
    if not shards:
        return ["no shards"]
    problems = []
    if shards[0].lower is not None:
        problems.append(f"gap below {shards[0].lower} (first shard {shards[0].id})")
    if shards[-1].upper is not None:
        problems.append(f"gap from {shards[-1].upper} up (last shard {shards[-1].id})")
    for left, right in itertools.pairwise(shards):
        if left.upper is None or right.lower is None or left.upper != right.lower:
            problems.append(f"shards {left.id} [..,{left.upper}) and {right.id} [{right.lower},..) do not meet")
        elif right.upper is not None and right.lower >= right.upper:
            problems.append(f"shard {right.id} is empty: [{right.lower}, {right.upper})")
    ids = [s.id for s in shards]
    if len(set(ids)) != len(ids):
        problems.append("duplicate shard ids")
    return problems


def check_boundaries(boundaries: Iterable[int], field: str = "boundaries") -> tuple[int, ...]:
    """Validates client-given cut points: strictly ascending, each a legal score."""
    cuts = tuple(boundaries)
    for i, cut in enumerate(cuts):
        if not -MAX_SCORE <= cut <= MAX_SCORE:
            raise InvalidArgument(f"{field}[{i}]", f"{cut} is outside ±{MAX_SCORE}")
        if i and cut <= cuts[i - 1]:
            raise InvalidArgument(f"{field}[{i}]", f"{cut} is not above {cuts[i - 1]}")
    if len(cuts) > 255:
        raise InvalidArgument(field, f"{len(cuts)} cut points; at most 255")
    return cuts


def ranges_for(boundaries: Sequence[int]) -> list[tuple[int | None, int | None]]:
    """The n + 1 half-open ranges that n ascending cut points make."""
    edges: list[int | None] = [None, *boundaries, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


def default_boundaries(shards: int, typical_score: int = 1000) -> tuple[int, ...]:
    """Cut points for `shards` ranges over a skewed (exponential-like) score distribution.

    Most players sit near zero with a long tail, so equal-width ranges would put nearly everyone in
    the lowest shard. Cutting at the quantiles of an exponential with mean `typical_score` gives each
    shard a similar share of members under that skew.
    """
    if shards < 1:
        raise InvalidArgument("shards", f"{shards} is below 1")
    cuts = [round(-typical_score * math.log(1 - i / shards)) for i in range(1, shards)]
    return check_boundaries(sorted(set(cuts)))


def user_hash(user_id: str) -> int:
    """Stable 32-bit hash of a user id; its low bits pick the index slot."""
    return zlib.crc32(user_id.encode("utf-8", "surrogatepass"))


def slot_for(user_id: str) -> int:
    return user_hash(user_id) % NUM_SLOTS


@dataclass(frozen=True, slots=True)
class SlotTable:
    """Which node owns each of the `NUM_SLOTS` index slots."""

    owners: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.owners) != NUM_SLOTS:
            raise ValueError(f"slot table has {len(self.owners)} slots, not {NUM_SLOTS}")

    def node_for(self, slot: int) -> str:
        return self.owners[slot]

    @classmethod
    def spread(cls, nodes: Sequence[str]) -> SlotTable:
        """Slots dealt round-robin over `nodes`."""
        if not nodes:
            raise ValueError("no nodes to own the index slots")
        return cls(tuple(nodes[i % len(nodes)] for i in range(NUM_SLOTS)))
