"""`rankshard repair`: brings a board back to its invariants from what survived on its nodes.

The index is authoritative while it holds a member; a member whose index entry was lost is rebuilt
from its shard copy, which holds its score and (in its node's version register) its version.
Steps, each idempotent (a second run finds nothing to do):
1. install the descriptor of any shard whose node lost it (a node flushed or replaced): that shard's
   data was lost;
2. roll every pending move or removal forward;
3. rebuild the index entries of members found in shards only, and merge entries created after their
   index was lost with the older copies the shards kept (`_reindex`);
4. write every member into its home shard where that lacks it or holds another score (a lost shard is
   rebuilt this way), then remove its copies from other shards, and remove the copies of members the
   index says were removed or no register knows (tombstoned, so an old in-flight write cannot bring
   them back). A copy whose register is newer than the member's index entry is never removed.

What cannot come back is reported: the request-id records of every member whose entry was rebuilt,
and the members whose index entry and shard copy were both lost, which nothing that survived names
(how many is estimated from the members indexed elsewhere that lived in the same lost shards).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ._audit import BoardScan, Finding, FindingKind, scan_board
from ._carve_parts import clear_shard
from ._keys import IndexEntry, registered_version
from ._layout import BoardLayout, Cluster
from ._moves import apply_call, finish_move, remove_call, shard_call
from ._reindex import Reindex, reindex_board
from ._scripts import ClearMode, ShardWriteMode

_HANDLED = {
    FindingKind.KEPT_SIZE,
    FindingKind.MISSING,
    FindingKind.SCORE_MISMATCH,
    FindingKind.WRONG_SHARD,
    FindingKind.ORPHAN,
    FindingKind.DUPLICATE,
    FindingKind.PENDING_MOVE,
}
_CHUNK = 1000
"""Members per shard script call."""


@dataclass(frozen=True, slots=True)
class LostMembers:
    """Members indexed on `index_node` that lived in `shards`: their entries and copies were both lost."""

    index_node: str
    shards: tuple[str, ...]
    basis: int
    """Members indexed on the nodes whose index survived that lived in `shards` (rebuilt from it)."""
    estimate: int | None
    """About how many were lost: `basis` scaled by the index slots `index_node` held against the
    surviving index nodes' (members spread over slots by hash); None when no index node survived."""


@dataclass(slots=True)
class RepairReport:
    descriptors_installed: list[str] = field(default_factory=list)
    """Shards whose node had lost their descriptor, and with it their data."""
    moves_finished: int = 0
    sizes_dropped: list[str] = field(default_factory=list)
    """Shards whose node kept a size that disagreed with them (the next count counts them again)."""
    members_rewritten: int = 0
    copies_removed: int = 0
    entries_rebuilt: int = 0
    """Index entries rebuilt from shard copies (their request-id records are lost)."""
    entries_merged: int = 0
    """Index entries written after their index was lost, merged with the copies the shards kept (the
    request-id records from before the loss are lost)."""
    entries_tied: int = 0
    """Of `entries_rebuilt`, members found in two shards at one version (a move under way when their
    index was lost): which copy was newer is unknown, the better score was kept."""
    lost: list[LostMembers] = field(default_factory=list)
    left: list[Finding] = field(default_factory=list)
    """Findings repair does not fix (stray keys, descriptors that differ rather than are lost)."""

    @property
    def records_lost(self) -> int:
        """Members whose request-id records went with their index entry: a retry of a request they
        sent before the loss may be applied again."""
        return self.entries_rebuilt + self.entries_merged

    @property
    def changed(self) -> bool:
        return bool(
            self.descriptors_installed
            or self.sizes_dropped
            or self.moves_finished
            or self.members_rewritten
            or self.copies_removed
            or self.entries_rebuilt
            or self.entries_merged
        )


async def repair_board(cluster: Cluster, layout: BoardLayout) -> RepairReport:
    """Repairs `board` and reports what it did; raises `NodeError` when a node it needs is down."""
    report = RepairReport()
    for shard in layout.map.shards:
        node = cluster.node(shard.node)
        # SET NX: only a lost descriptor is restored; a different one may be a migration's fence.
        if await clear_shard(node, layout.board, shard.id, ClearMode.INSTALL, layout.descriptors[shard.id]):
            report.descriptors_installed.append(shard.id)
    scan = await scan_board(cluster, layout)
    index_fields = scan.index_fields  # before anything is rebuilt: a node whose index is empty lost it
    for entry in scan.entries.values():
        if entry.moving:
            await finish_move(cluster, layout, entry)
            report.moves_finished += 1
    if report.moves_finished:
        scan = await scan_board(cluster, layout)
    reindex = await reindex_board(cluster, layout, scan)
    report.entries_rebuilt, report.entries_merged, report.entries_tied = reindex.rebuilt, reindex.merged, reindex.tied
    if reindex.rebuilt or reindex.merged:
        scan = await scan_board(cluster, layout)
    await _place_members(cluster, layout, scan, report)
    for finding in scan.findings:
        if finding.kind is FindingKind.KEPT_SIZE and finding.shard is not None:
            # Dropped, not rewritten: the next count checks the descriptor and counts the shard, and keeps that.
            shard = layout.shards[finding.shard]
            await clear_shard(cluster.node(shard.node), layout.board, shard.id, ClearMode.FORGET)
            report.sizes_dropped.append(shard.id)
    report.left = [f for f in scan.findings if f.kind not in _HANDLED]
    report.lost = _lost_members(cluster, layout, scan, report, _lost_index_nodes(index_fields, reindex))
    return report


async def _place_members(cluster: Cluster, layout: BoardLayout, scan: BoardScan, report: RepairReport) -> None:
    """Step 4: each indexed member into its home shard, then every other copy out."""
    rewrites: dict[str, list[object]] = {}
    removals: dict[str, list[object]] = {}
    for user, entry in scan.entries.items():
        places = scan.placed.get(user, [])
        home = layout.home_of(entry)
        if entry.moving or places == [(home, entry.score)]:
            continue
        if (home, entry.score) not in places:
            rewrites.setdefault(home, []).extend((user, layout.stored(entry.score), entry.version))
        for shard_id, _ in places:
            if shard_id != home:
                # At the entry's version: a copy its node registers as newer stays (and is reported).
                removals.setdefault(shard_id, []).extend((user, entry.version))
    for shard_id, writes in rewrites.items():
        for start in range(0, len(writes), 3 * _CHUNK):
            chunk = writes[start : start + 3 * _CHUNK]
            call = apply_call(layout, shard_id, chunk, mode=ShardWriteMode.REWRITE)
            await shard_call(cluster, layout, shard_id, call)
            report.members_rewritten += len(chunk) // 3
    for shard_id, pairs in removals.items():
        for start in range(0, len(pairs), 2 * _CHUNK):
            chunk = pairs[start : start + 2 * _CHUNK]
            change = await shard_call(cluster, layout, shard_id, remove_call(layout, shard_id, chunk))
            report.copies_removed += change.removed
    for user, places in scan.placed.items():
        if user not in scan.entries:
            for shard_id, _ in places:
                report.copies_removed += await _remove_orphan(cluster, layout, scan.removed.get(user), user, shard_id)


async def _remove_orphan(
    cluster: Cluster, layout: BoardLayout, removed_at: int | None, user: str, shard_id: str
) -> int:
    """Removes the copy of a member the index removed (`removed_at`), or that no register knows;
    returns 1 if it was removed. Any other copy stays: its member gets an index entry (a write
    committed since the scan, or the next repair's rebuild)."""
    node = cluster.node(layout.shards[shard_id].node)
    registered = registered_version(await node.command("HGET", layout.versions_key(user), user))
    if removed_at is None and registered:
        return 0
    version = max(registered, removed_at or 0)
    change = await shard_call(cluster, layout, shard_id, remove_call(layout, shard_id, [user, version]))
    return change.removed


def _lost_index_nodes(index_fields: dict[str, int], reindex: Reindex) -> set[str]:
    """Index nodes that lost their entries of the board: entries were rebuilt there, or it has none."""
    return reindex.nodes | {n for n, count in index_fields.items() if count == 0}


def _lost_members(
    cluster: Cluster, layout: BoardLayout, scan: BoardScan, report: RepairReport, lost_index: set[str]
) -> list[LostMembers]:
    """What nothing that survived names: members indexed on a node whose index was lost that lived in a
    shard whose data was lost."""
    lost_shards = tuple(s.id for s in layout.map.shards if s.id in report.descriptors_installed)
    if not lost_shards or not lost_index:
        return []
    slots = Counter(cluster.slots.owners)
    surviving = sum(n for node, n in slots.items() if node not in lost_index)
    basis = sum(
        1
        for e in scan.entries.values()
        if layout.home_of(e) in lost_shards and _index_node(cluster, layout, e) not in lost_index
    )
    return [
        LostMembers(node, lost_shards, basis, round(basis * slots[node] / surviving) if surviving else None)
        for node in sorted(lost_index)
    ]


def _index_node(cluster: Cluster, layout: BoardLayout, entry: IndexEntry) -> str:
    return cluster.index_of(layout, entry.user_id)[0].id
