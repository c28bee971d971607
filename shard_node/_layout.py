"""What the data path needs to know about one board, derived once per shard-map epoch."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rankshard.shard_map import NUM_SLOTS, BoardConfig, NodeUnavailable, Shard, ShardMap, SlotTable, user_hash

from ._client import NodeClient
from ._forget import Forgets
from ._keys import (
    DERIVED,
    IndexEntry,
    descriptor,
    descriptor_key,
    descriptor_stem,
    index_key,
    read_fence,
    shard_key,
    shard_stem,
    size_changes_key,
    sizes_key,
    stored_range,
    versions_key,
)


@dataclass(frozen=True, slots=True)
class BoardLayout:
    """A board's config and shard map, with the lookups every request would otherwise redo."""

    config: BoardConfig
    map: ShardMap
    descending: bool = field(init=False)
    index_args: tuple[object, ...] = field(init=False)
    """Arguments of the index scripts that describe the map: its epoch (checked against the board's floor) and
    its refined cut points (where crossings are decided)."""
    shards: Mapping[str, Shard] = field(init=False)
    descriptors: Mapping[str, str] = field(init=False)
    best_first: tuple[Shard, ...] = field(init=False)
    by_node: Mapping[str, tuple[Shard, ...]] = field(init=False)
    count_calls: Mapping[str, CountCall] = field(init=False)
    """Per node, the fixed part of its SHARD_COUNT call (see `_reads._count`)."""
    fenced_keys: Mapping[str, tuple[str, str]] = field(init=False)
    """Per shard, the keys every fenced shard script starts with: the zset and the descriptor."""
    read_fences: Mapping[str, str] = field(init=False)
    """Per shard, what reads check its descriptor against: all of it but the state (reads go on in every state)."""
    stored_ranges: Mapping[str, tuple[str, str]] = field(init=False)
    """Per shard, its range in stored scores as ``[lo, hi)`` (see `stored_range`): every count is clipped to it."""
    write_keys: tuple[str, str, str, str] = field(init=False)
    """The board's keys a SHARD_WRITE call sends after its mode, and a SHARD_DROP call first: its sizes hash, its size
    changes zset, the stems of its shard and descriptor keys."""

    def __post_init__(self) -> None:
        m = self.map
        best = m.best_first(self.config.sort_order)
        by_node: dict[str, list[Shard]] = {}
        for shard in best:
            by_node.setdefault(shard.node, []).append(shard)
        derived = {
            "descending": self.config.descending,
            "index_args": (m.epoch, " ".join(map(str, m.refined_cuts))),
            "shards": {s.id: s for s in m.shards},
            "descriptors": {s.id: descriptor(s) for s in m.shards},
            "best_first": best,
            "by_node": {node: tuple(shards) for node, shards in by_node.items()},
            "count_calls": {
                node: CountCall.of(self.board, shards, self.config.descending) for node, shards in by_node.items()
            },
            "fenced_keys": {s.id: (shard_key(self.board, s.id), descriptor_key(self.board, s.id)) for s in m.shards},
            "read_fences": {s.id: read_fence(s) for s in m.shards},
            "stored_ranges": {s.id: stored_range(s.lower, s.upper, self.config.descending) for s in m.shards},
            "write_keys": (
                sizes_key(self.board),
                size_changes_key(self.board),
                shard_stem(self.board),
                descriptor_stem(self.board),
            ),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def board(self) -> str:
        return self.config.name

    def stored(self, score: int) -> int:
        """The sorted-set score of `score`: negated on descending boards so ascending is best-first."""
        return -score if self.descending else score

    def unstored(self, stored: int) -> int:
        return -stored if self.descending else stored

    def home_of(self, entry: IndexEntry) -> str:
        """The shard `entry`'s member lives in once its crossing (if any) is done: the one its score falls in."""
        return self.map.shard_for(entry.score).id

    def source_of(self, entry: IndexEntry) -> str:
        """The shard a pending crossing leaves: the one its previous score falls in (an entry of an older release
        names it; see `IndexEntry`)."""
        previous = entry.source_score
        return entry.from_ if previous is None else self.map.shard_for(previous).id

    def destination_of(self, entry: IndexEntry) -> str | None:
        """The shard a pending crossing goes to; None for a removal."""
        if not entry.to:
            return None
        return self.home_of(entry) if entry.to == DERIVED else entry.to

    def versions_key(self, user_id: str) -> str:
        """The version-register hash holding `user_id` on any node with shards of the board."""
        return versions_key(self.board, self.config.buckets, user_hash(user_id))


@dataclass(frozen=True, slots=True)
class CountCall:
    """The parts of a node's SHARD_COUNT and SHARD_TALLY calls that only the map decides: keys, descriptors,
    positions, ranges."""

    shards: tuple[Shard, ...]
    keys: tuple[str, ...]
    """Empty: SHARD_COUNT takes the key names packed in its first argument (SHARD_TALLY, none at all)."""
    args: tuple[object, ...]
    position: Mapping[str, int]
    sizes_key: str
    changes_key: str
    stem: str
    """SHARD_TALLY's keys (see `_keys.sizes_key`) and the stem of the board's shard keys."""
    tally_query: Mapping[str, tuple[str, str, str]]
    """Per shard, what a SHARD_TALLY query names it by: its id and its range in stored scores."""

    @classmethod
    def of(cls, board: str, shards: list[Shard], descending: bool) -> CountCall:
        keys: list[str] = []
        bounds: list[str] = []
        tally_query: dict[str, tuple[str, str, str]] = {}
        for s in shards:
            keys += (shard_key(board, s.id), descriptor_key(board, s.id))
            lo, hi = stored_range(s.lower, s.upper, descending)
            bounds += (lo, hi)
            tally_query[s.id] = (s.id, lo, hi)
        args = (" ".join(keys), "\n".join(read_fence(s) for s in shards), " ".join(bounds))
        return cls(
            tuple(shards),
            (),
            args,
            {s.id: p for p, s in enumerate(shards, 1)},
            sizes_key(board),
            size_changes_key(board),
            shard_stem(board),
            tally_query,
        )


@dataclass(frozen=True, slots=True)
class SeenSizes:
    """A node's sizes of a `CountCall`'s shards as one router last saw them: at the node's change number
    `version` under its sizes token `token` (see `_reads.count_after`)."""

    call: CountCall
    token: str
    version: int
    sizes: tuple[int, ...]


class Cluster:
    """The data nodes and the index slot table, as one router sees them."""

    def __init__(self, nodes: Mapping[str, NodeClient], slots: SlotTable) -> None:
        self.nodes = dict(nodes)
        self.slots = slots
        self.last_sizes: dict[tuple[str, str, str], int] = {}
        """Shard sizes as last seen by this router (every read, and every change it makes), by
        (board, descriptor, shard id): what reads use for the shards of a node that is down or frozen
        (see `_reads._count`). Exact for this router's own writes; writes other routers made to that
        node just before it went down are missing until it is back."""
        self.seen_sizes: dict[tuple[str, str], SeenSizes] = {}
        """By (board, node id): the newest sizes this router has seen there, from a SHARD_COUNT that checked every
        descriptor of its shards and the SHARD_TALLY answers since; while the node's token is the same, a count
        there asks only for the sizes changed since (see `_reads.count_after`)."""
        self.forgets = Forgets()
        """Pending-write marks being cleared in the background (see `_forget`)."""
        self.size_cache = 0.0
        """Seconds for which a count may take a node's shard sizes from `last_sizes` instead of asking it, when this
        router's last count there began at most that long ago (the router's `size_cache_ms`). 0: every count asks
        every node of the board, so every read reflects every call returned before it began."""
        self.clock: Callable[[], float] = time.monotonic
        """What `size_cache` is measured with."""
        self.sizes_asked: dict[tuple[str, str], float] = {}
        """By (board, node id): when (`clock`) the last count there that answered began."""

    def cached_sizes(self, layout: BoardLayout, node_id: str) -> dict[str, int] | None:
        """The sizes of `node_id`'s shards of `layout` that a count may use without asking the node (see
        `size_cache`), or None: caching is off, the node's last count began too long ago, or a shard's size is not
        known under its current descriptor. This router's own writes are in them (`last_sizes`)."""
        if not self.size_cache:
            return None
        asked = self.sizes_asked.get((layout.board, node_id))
        if asked is None or self.clock() - asked > self.size_cache:
            return None
        sizes = {}
        for shard in layout.by_node.get(node_id, ()):
            size = self.last_sizes.get((layout.board, layout.descriptors[shard.id], shard.id))
            if size is None:
                return None
            sizes[shard.id] = size
        return sizes

    def node(self, node_id: str) -> NodeClient:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise NodeUnavailable(node_id, "is not a registered node") from None

    def index_of(self, layout: BoardLayout, user_id: str) -> tuple[NodeClient, str]:
        """The node owning `user_id`'s index slot, and the key of the hash holding its entry."""
        return self.index_of_hash(layout, user_hash(user_id))

    def index_of_hash(self, layout: BoardLayout, h: int) -> tuple[NodeClient, str]:
        """`index_of` for a user whose `user_hash` is `h`."""
        return self.node(self.slots.node_for(h % NUM_SLOTS)), index_key(layout.board, layout.config.buckets, h)

    async def aclose(self) -> None:
        await self.forgets.drain()
        for client in self.nodes.values():
            await client.aclose()
