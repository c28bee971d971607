"""`rankshard check`: docs/architecture.md invariants 1, 2 and 4 verified against what the nodes really hold.

Reads stream: index hashes by SCAN + pipelined HGETALL, shards by ranked ZRANGE chunks, so a
million-member board is checked in seconds without blocking a node.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from rankshard.shard_map import Shard, tiling_problems

from . import _replies as replies
from ._client import NodeClient
from ._keys import (
    IndexEntry,
    descriptor_key,
    index_pattern,
    registered_version,
    shard_data_pattern,
    shard_key,
    sizes_key,
)
from ._layout import BoardLayout, Cluster
from ._reads import rank_of_scores

_SCAN_COUNT = 1000
_CHUNK = 5000
_RANK_SAMPLES = 50


class FindingKind(StrEnum):
    """What a `Finding` found (its value is how reports name it)."""

    TILING = "tiling"  # invariant 1: the map's shards do not tile the score line
    DESCRIPTOR = "descriptor"  # a node holds another descriptor than the map's
    PENDING_MOVE = "pending-move"  # a move or removal not rolled forward yet
    MISSING = "missing"  # an indexed member that no shard holds
    DUPLICATE = "duplicate"  # a member in more than one shard
    WRONG_SHARD = "wrong-shard"  # a member in another shard than its index entry's
    SCORE_MISMATCH = "score-mismatch"  # a shard's score differs from the index's
    ORPHAN = "orphan"  # a shard member without an index entry
    STRAY_KEY = "stray-key"  # shard data on a node that does not own the shard
    RANK = "rank"  # invariant 4: a served rank differs from the single sorted list's
    KEPT_SIZE = "kept-size"  # a node's kept size of a shard differs from what the shard holds in its range


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation of docs/api.md's invariants, of `kind`."""

    kind: FindingKind
    detail: str
    shard: str | None = None
    user: str | None = None

    def __str__(self) -> str:
        where = " ".join(
            x for x in (f"shard {self.shard}" if self.shard else "", f"user {self.user!r}" if self.user else "") if x
        )
        return f"{self.kind}: {where + ': ' if where else ''}{self.detail}"


@dataclass(slots=True)
class BoardScan:
    """What one pass over a board found: the index, where each member sits, and the findings."""

    entries: dict[str, IndexEntry] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    """Members the index holds a tombstone for (removed), with the removal's version."""
    index_fields: dict[str, int] = field(default_factory=dict)
    """Per index node, how many of the board's members (live or removed) its index holds."""
    placed: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # user -> [(shard, score)]
    sizes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


async def scan_index(cluster: Cluster, board: str, scan: BoardScan) -> None:
    """Reads every index entry of `board`, from every index node, into `scan`."""
    for node_id in dict.fromkeys(cluster.slots.owners):
        count = 0
        async for key_batch in _scan_keys(cluster.node(node_id), index_pattern(board)):
            hashes = await cluster.node(node_id).commands([("HGETALL", k) for k in key_batch])
            for fields in hashes:
                count += len(fields)
                for user, raw in fields.items():
                    entry = IndexEntry.parse(user, raw)
                    if entry is not None:
                        scan.entries[user] = entry
                    else:
                        scan.removed[user] = registered_version(raw)
        scan.index_fields[node_id] = count


async def shard_members(cluster: Cluster, layout: BoardLayout, shard: Shard) -> AsyncIterator[list[tuple[str, int]]]:
    """The shard's members with their scores, best first, in chunks: those inside its range (what a finished job
    left in the key beyond it is no member of the shard)."""
    node, key, start = cluster.node(shard.node), shard_key(layout.board, shard.id), 0
    lo, hi = layout.stored_ranges[shard.id]
    while True:
        raw = await node.command("ZRANGE", key, lo, f"({hi}", "BYSCORE", "LIMIT", start, _CHUNK, "WITHSCORES")
        rows = replies.scored_members(node.id, "ZRANGE", raw)
        if not rows:
            return
        yield [(user, layout.unstored(score)) for user, score in rows]
        start += _CHUNK
        if len(rows) < _CHUNK:
            return


async def scan_board(cluster: Cluster, layout: BoardLayout) -> BoardScan:
    scan = BoardScan()
    await scan_index(cluster, layout.board, scan)
    scan.findings += [Finding(FindingKind.TILING, p) for p in tiling_problems(layout.map.shards)]
    for shard in layout.map.shards:
        actual = await cluster.node(shard.node).command("GET", descriptor_key(layout.board, shard.id))
        if actual != layout.descriptors[shard.id]:
            scan.findings.append(
                Finding(
                    FindingKind.DESCRIPTOR,
                    f"node {shard.node} holds {actual!r}, map epoch {layout.map.epoch} says "
                    f"{layout.descriptors[shard.id]!r}",
                    shard=shard.id,
                )
            )
        size = 0
        async for rows in shard_members(cluster, layout, shard):
            size += len(rows)
            for user, score in rows:
                scan.placed.setdefault(user, []).append((shard.id, score))
        scan.sizes[shard.id] = size
    scan.findings += _membership(layout, scan)
    scan.findings += await _kept_sizes(cluster, layout)
    scan.findings += await _stray_keys(cluster, layout)
    return scan


async def _kept_sizes(cluster: Cluster, layout: BoardLayout) -> list[Finding]:
    """Every size a node keeps for a shard of the map (what rank counts read) against what the shard holds in its
    range at the same moment (both read in one MULTI/EXEC, so writes going on meanwhile find nothing); a size not
    kept yet is no finding (the next count sets it). One round trip per node."""

    async def on_node(node_id: str, shards: Sequence[Shard]) -> list[Finding]:
        commands: list[tuple[object, ...]] = []
        for shard in shards:
            lo, hi = layout.stored_ranges[shard.id]
            commands += [
                ("MULTI",),
                ("ZCOUNT", shard_key(layout.board, shard.id), lo, f"({hi}"),
                ("HMGET", sizes_key(layout.board), shard.id, f">{shard.id}"),
                ("EXEC",),
            ]
        answers = (await cluster.node(node_id).commands(commands))[3::4]
        return [f for shard, raw in zip(shards, answers, strict=True) if (f := _kept_size(layout, shard, raw))]

    per_node = await asyncio.gather(*(on_node(n, shards) for n, shards in layout.by_node.items()))
    return [f for found in per_node for f in found]


def _kept_size(layout: BoardLayout, shard: Shard, raw: object) -> Finding | None:
    """The finding, if any, of one shard's EXEC answer (its count in range, then its kept size and range)."""
    if type(raw) is not list or len(raw) != 2 or type(raw[0]) is not int:
        raise replies.unexpected(shard.node, "EXEC", raw)
    holds = raw[0]
    size, kept_range = replies.texts_or_none(shard.node, "HMGET", raw[1], 2)
    lo, hi = layout.stored_ranges[shard.id]
    if size is None or (size == str(holds) and kept_range == f"{lo} {hi}"):
        return None
    return Finding(
        FindingKind.KEPT_SIZE,
        f"node {shard.node} keeps size {size} for range {kept_range!r}; the shard holds {holds} in {lo} {hi}",
        shard=shard.id,
    )


def _membership(layout: BoardLayout, scan: BoardScan) -> list[Finding]:
    """Invariant 2: every member in exactly one shard, the one whose range holds its score, as the index says."""
    found = []
    for user, entry in scan.entries.items():
        places = scan.placed.get(user, [])
        home = layout.home_of(entry)
        if entry.moving:
            found.append(
                Finding(
                    FindingKind.PENDING_MOVE,
                    f"{entry.from_} -> {entry.to or '(removal)'} at version {entry.version}",
                    user=user,
                )
            )
            continue
        if not places:
            found.append(
                Finding(
                    FindingKind.MISSING,
                    f"index says score {entry.score}, in {home}; no shard holds it",
                    shard=home,
                    user=user,
                )
            )
            continue
        if len(places) > 1:
            found.append(Finding(FindingKind.DUPLICATE, f"in shards {', '.join(s for s, _ in places)}", user=user))
        for shard_id, score in places:
            if shard_id != home:
                found.append(Finding(FindingKind.WRONG_SHARD, f"its score is {home}'s", shard=shard_id, user=user))
            elif score != entry.score:
                found.append(
                    Finding(
                        FindingKind.SCORE_MISMATCH,
                        f"shard has {score}, index has {entry.score}",
                        shard=shard_id,
                        user=user,
                    )
                )
    for user, places in scan.placed.items():
        if user not in scan.entries:
            why = (
                f"of a member removed at version {scan.removed[user]}"
                if user in scan.removed
                else "with no index entry"
            )
            for shard_id, score in places:
                found.append(Finding(FindingKind.ORPHAN, f"score {score} {why}", shard=shard_id, user=user))
    return found


async def _stray_keys(cluster: Cluster, layout: BoardLayout) -> list[Finding]:
    """Shard data of this board on a node that does not own that shard (leftovers of moves)."""
    found = []
    for node_id, node in cluster.nodes.items():
        async for keys in _scan_keys(node, shard_data_pattern(layout.board)):
            for key in keys:
                shard_id = key.rsplit("/", 1)[1]
                owner = layout.shards.get(shard_id)
                if owner is None or owner.node != node_id:
                    found.append(Finding(FindingKind.STRAY_KEY, f"{key} on node {node_id}", shard=shard_id))
    return found


async def audit_board(cluster: Cluster, layout: BoardLayout) -> list[Finding]:
    """Every violation of invariants 1, 2 and 4 on the board; empty when it is sound."""
    scan = await scan_board(cluster, layout)
    if scan.findings:
        return scan.findings
    return await _ranks(cluster, layout, scan)


async def _ranks(cluster: Cluster, layout: BoardLayout, scan: BoardScan) -> list[Finding]:
    """Invariant 4 on a sample: served ranks equal the single sorted list's competition ranks."""
    scores = sorted(layout.stored(e.score) for e in scan.entries.values())
    first_at: dict[int, int] = {}
    for position, stored in enumerate(scores):
        first_at.setdefault(stored, position + 1)
    rng = random.Random(len(scores))
    users = sorted(scan.entries)
    sample = rng.sample(users, min(_RANK_SAMPLES, len(users)))
    served, total = await rank_of_scores(cluster, layout, [scan.entries[u].score for u in sample])
    found = []
    if total != len(scan.entries):
        found.append(Finding(FindingKind.RANK, f"shards hold {total} members, the index {len(scan.entries)}"))
    for user, rank in zip(sample, served, strict=True):
        expected = first_at[layout.stored(scan.entries[user].score)]
        if rank != expected:
            found.append(Finding(FindingKind.RANK, f"served rank {rank}, the sorted list says {expected}", user=user))
    return found


async def _scan_keys(node: NodeClient, pattern: str) -> AsyncIterator[list[str]]:
    cursor = "0"
    while True:
        cursor, keys = await node.command("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
        if keys:
            yield [str(k) for k in keys]
        if str(cursor) == "0":
            return
