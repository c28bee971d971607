"""`rankshard repair`: brings a board back to its invariants from the index, which is authoritative.

Steps, each idempotent (a second run finds nothing to do):
1. install the descriptor of any shard whose node lost it (a node flushed or replaced);
2. roll every pending move or removal forward;
3. rewrite every member its home shard lacks or holds with another score (a lost shard is rebuilt
   this way), and remove copies from shards that are not the member's home, and members that have no
   index entry at all (tombstoned, so an old in-flight write cannot bring them back).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._audit import Finding, scan_board
from ._keys import IndexEntry, descriptor_key, registered_version
from ._layout import BoardLayout, Cluster
from ._moves import apply_call, finish_move, remove_call, shard_call

_FIXED_BY_REWRITE = {"missing", "score-mismatch"}
_FIXED_BY_REMOVAL = {"wrong-shard", "orphan"}


@dataclass(slots=True)
class RepairReport:
    descriptors_installed: list[str] = field(default_factory=list)
    moves_finished: int = 0
    members_rewritten: int = 0
    copies_removed: int = 0
    left: list[Finding] = field(default_factory=list)
    """Findings repair does not fix (stray keys, descriptors that differ rather than are lost)."""

    @property
    def changed(self) -> bool:
        return bool(self.descriptors_installed or self.moves_finished or self.members_rewritten or self.copies_removed)


async def repair_board(cluster: Cluster, layout: BoardLayout) -> RepairReport:
    """Repairs `board` and reports what it did; raises `NodeError` when a node it needs is down."""
    report = RepairReport()
    for shard in layout.map.shards:
        node = cluster.node(shard.node)
        # SET NX: only a lost descriptor is restored; a different one may be a migration's fence.
        if await node.command("SET", descriptor_key(layout.board, shard.id), layout.descriptors[shard.id], "NX"):
            report.descriptors_installed.append(shard.id)
    scan = await scan_board(cluster, layout)
    for entry in scan.entries.values():
        if entry.moving:
            await finish_move(cluster, layout, entry)
            report.moves_finished += 1
    if report.moves_finished:
        scan = await scan_board(cluster, layout)
    for finding in scan.findings:
        if finding.kind in _FIXED_BY_REWRITE:
            entry = scan.entries[finding.user]  # type: ignore[index]
            args = [entry.user_id, layout.stored(entry.score), entry.version]
            await shard_call(cluster, layout, entry.home, apply_call(layout, entry.home, args, mode="rewrite"))
            report.members_rewritten += 1
        elif finding.kind in _FIXED_BY_REMOVAL:
            await _remove_copy(cluster, layout, scan.entries.get(finding.user or ""), finding)
            report.copies_removed += 1
        elif finding.kind not in {"duplicate", "pending-move"}:  # fixed by the removals above
            report.left.append(finding)
    return report


async def _remove_copy(cluster: Cluster, layout: BoardLayout, entry: IndexEntry | None, finding: Finding) -> None:
    shard_id, user = finding.shard, finding.user
    assert shard_id is not None and user is not None
    node = cluster.node(layout.shards[shard_id].node)
    stored = await node.command("HGET", layout.versions_key(user), user)
    version = registered_version(stored)
    if entry is not None:
        version = max(version, entry.version)
    await shard_call(cluster, layout, shard_id, remove_call(layout, shard_id, [user, version]))
