"""Index entries rebuilt from the shards: `rankshard repair` after an index node lost its data.

A shard holds each member's score, and its node's version register the version of the member's last
write there, so a member whose index entry was lost is rebuilt from its shard copy:

- a member in a shard with neither an entry nor a tombstone in the index gets an entry at its copy's
  score and registered version, home the shard its score falls in. Of copies in two shards (a move
  under way when the index was lost), the one registered at the newer version wins, then the one whose
  shard's range holds its score (a split's leftover does not), then the better score: two copies at one
  version share a node and its register, so which is newer cannot be told, and most boards' scores only
  improve (repair reports how many it guessed). The other copies are then removed like any copy
  outside its member's home.
- a member whose entry is older than what a register holds (the entry was created after the loss, by an
  update that found no entry and started from its submitted value, and the shard ignored it) gets a
  new entry at a version above every register's, so the shard writes that follow go through; its score
  is the entry's merged with the newest copy that predates the entry, if one survived, under the
  board's operator: increment adds what was added since to the surviving score, best keeps the better,
  set the later. (A register on the home's node alone can be newer: the member left that node before
  the loss, and what it had then is gone.) Equal versions cannot tell a regressed entry from a stray
  copy: the index wins, as everywhere else.

A copy no register knows was never written by rankshard: it is left to be removed as an orphan. Entries
are written compare-and-set (`INDEX_REBUILD`): an update committed since the scan wins, and the next
repair looks at that member again. The request-id records of a rebuilt member were on the lost node:
they are gone (the caller reports how many members that concerns).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from rankshard.shard_map import MAX_SCORE, Operator

from . import _replies as replies
from ._audit import BoardScan
from ._keys import IndexEntry, records_generation, registered_version
from ._layout import BoardLayout, Cluster
from ._scripts import INDEX_REBUILD

_CHUNK = 1000
"""Members per pipelined read or per INDEX_REBUILD call."""


@dataclass(frozen=True, slots=True)
class Copy:
    """One shard's copy of a member, with the version its node registers for the member."""

    shard: str
    score: int
    version: int


@dataclass(slots=True)
class Reindex:
    rebuilt: int = 0
    """Members that had no index entry, given one from their shard copy."""
    merged: int = 0
    """Members whose entry was older than a shard copy, merged with it."""
    tied: int = 0
    """Rebuilt members found in two shards at one version, each in its range: the better score was kept."""
    nodes: set[str] = field(default_factory=set)
    """Index nodes that lost entries: those the rebuilt and merged entries were written to."""


async def reindex_board(cluster: Cluster, layout: BoardLayout, scan: BoardScan) -> Reindex:
    """Rebuilds and merges index entries from the shard copies in `scan` (see the module docstring);
    moves must be finished first. Raises `NodeError`."""
    orphans = [u for u in scan.placed if u not in scan.entries and u not in scan.removed]
    suspects = [
        u for u, e in scan.entries.items() if not e.moving and scan.placed.get(u, []) != [(layout.home_of(e), e.score)]
    ]
    probes = [(u, layout.shards[s].node) for u in orphans + suspects for s, _ in scan.placed.get(u, [])]
    probes += [(u, layout.shards[layout.home_of(scan.entries[u])].node) for u in suspects]
    registers = await _registers(cluster, layout, probes)
    copies = {
        u: [Copy(s, score, registers[u, layout.shards[s].node]) for s, score in scan.placed.get(u, [])]
        for u in orphans + suspects
    }
    writes = [w for u in orphans if (w := _rebuilt(layout, u, copies[u])) is not None]
    tied = {u for u in orphans if _tied(layout, copies[u])}
    newest = {u: max(v for (w, _), v in registers.items() if w == u) for u in suspects}
    behind = [u for u in suspects if newest[u] > scan.entries[u].version]
    for user, raw in zip(behind, await _index_values(cluster, layout, behind), strict=True):
        if raw is not None and IndexEntry.parse(user, raw) == scan.entries[user]:  # else: changed since
            writes.append(_merged(layout, user, raw, scan.entries[user], copies[user], newest[user]))
    written = await _write(cluster, layout, writes)
    result = Reindex(nodes={cluster.index_of(layout, u)[0].id for u in written})
    result.merged = sum(1 for u in written if u in scan.entries)
    result.rebuilt = len(written) - result.merged
    result.tied = sum(1 for u in written if u in tied)
    return result


def _tied(layout: BoardLayout, copies: Sequence[Copy]) -> bool:
    """Whether two copies, each in its range, share the newest version: the better score was a guess."""
    newest = _newest(layout, copies).version
    return sum(1 for c in copies if c.version == newest and layout.shards[c.shard].holds(c.score)) > 1


def _rebuilt(layout: BoardLayout, user: str, copies: Sequence[Copy]) -> tuple[str, str, str] | None:
    """(user, '', entry) for a member in the shards only; None when no register knows it."""
    best = _newest(layout, copies)
    if not best.version:
        return None
    return user, "", IndexEntry(user, best.score, best.version).stored()


def _merged(
    layout: BoardLayout, user: str, raw: str, entry: IndexEntry, copies: Sequence[Copy], newest: int
) -> tuple[str, str, str]:
    """(user, raw, entry): `entry`, created after the loss, merged with the newest copy that predates it
    (if one survived), at a version above `newest`, the newest any register holds."""
    older = [c for c in copies if c.version > entry.version]
    score = entry.score if not older else _combined(layout, _newest(layout, older).score, entry.score)
    merged = IndexEntry(user, score, newest + 1)
    # The records stay: they are the updates made since the loss, and the entry names where they are.
    return user, raw, merged.stored(records_generation(raw))


def _combined(layout: BoardLayout, surviving: int, since: int) -> int:
    """The score of a member that had `surviving` before the loss, and `since` from its updates after
    it (which started from their submitted values), under the board's operator."""
    operator = layout.config.operator
    if operator == Operator.SET:
        return since
    if operator == Operator.BEST:
        return surviving if layout.stored(surviving) <= layout.stored(since) else since
    return max(-MAX_SCORE, min(MAX_SCORE, surviving + since))


def _newest(layout: BoardLayout, copies: Sequence[Copy]) -> Copy:
    return max(copies, key=lambda c: (c.version, layout.shards[c.shard].holds(c.score), -layout.stored(c.score)))


async def _registers(
    cluster: Cluster, layout: BoardLayout, probes: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The version each (user, node) of `probes` registers (0 for none)."""
    by_node: dict[str, list[str]] = {}
    for user, node_id in dict.fromkeys(probes):
        by_node.setdefault(node_id, []).append(user)
    found: dict[tuple[str, str], int] = {}

    async def read(node_id: str, users: list[str]) -> None:
        node = cluster.node(node_id)
        for start in range(0, len(users), _CHUNK):
            chunk = users[start : start + _CHUNK]
            values = await node.commands([("HGET", layout.versions_key(u), u) for u in chunk])
            found.update(((u, node_id), registered_version(raw)) for u, raw in zip(chunk, values, strict=True))

    await asyncio.gather(*(read(n, users) for n, users in by_node.items()))
    return found


async def _index_values(cluster: Cluster, layout: BoardLayout, users: Sequence[str]) -> list[str | None]:
    """The stored index values of `users`, as they are now."""
    values = []
    for user in users:  # few: only members written to after their index was lost
        node, key = cluster.index_of(layout, user)
        values.append(await node.command("HGET", key, user))
    return values


async def _write(cluster: Cluster, layout: BoardLayout, writes: Sequence[tuple[str, str, str]]) -> list[str]:
    """Writes (user, value read, entry) compare-and-set on each user's index node; returns the users written."""
    by_node: dict[str, list[tuple[str, tuple[str, str, str]]]] = {}
    for write in writes:
        node, key = cluster.index_of(layout, write[0])
        by_node.setdefault(node.id, []).append((key, write))
    written: list[str] = []

    async def run(node_id: str, todo: list[tuple[str, tuple[str, str, str]]]) -> None:
        node = cluster.node(node_id)
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start : start + _CHUNK]
            raw = await node.run(INDEX_REBUILD, [k for k, _ in chunk], [x for _, w in chunk for x in w])
            written.extend(replies.index_rebuild(node.id, raw))

    await asyncio.gather(*(run(n, todo) for n, todo in by_node.items()))
    return written
