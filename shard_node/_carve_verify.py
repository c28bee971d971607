"""The freeze's check (docs/architecture.md, "Rebalancing", FREEZE): once the source S is frozen and its dirty set
drained, whether the target T holds what S holds in the carved range R. The same count is the rule; when the counts
differ, the difference must be explained member by member by writes still under way, and the check reads only
those members (the index nodes' pending marks), never the whole range: it runs inside a freeze of two seconds, and
R may hold millions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from rankshard.shard_map import Job

from . import _replies as replies
from ._carve_parts import Parts, parse_read, settle_users, zrange
from ._client import NodeClient
from ._keys import moves_key, registered_version, shard_key
from ._layout import Cluster
from ._scripts import CARVE_READ

PENDING_LIMIT = 10_000
"""At most this many pending marks per index node are read; a board with more writes under way than that (a mass
of abandoned ones, say) fails the check, and the freeze is tried again."""


async def counts_agree(cluster: Cluster, parts: Parts, job: Job) -> bool:
    """Whether T holds what S holds in R, once S is frozen and drained: the same count, or else (see
    `_reconciled`) once the members only S holds are settled again."""
    source, target = await _counts(parts, job)
    return source == target or await _reconciled(cluster, parts, job)


async def _counts(parts: Parts, job: Job) -> tuple[int, int]:
    source, target = await asyncio.gather(
        parts.source_node.command("ZCOUNT", *zrange(job.board, job.source, parts.carved)),
        parts.target_node.command("ZCOUNT", *zrange(job.board, job.target, parts.carved)),
    )
    return int(source), int(target)


async def _reconciled(cluster: Cluster, parts: Parts, job: Job) -> bool:
    """Settles again the members S holds in R and T lacks, then whether T lacks only members of S that T's node
    registers a newer version of. Two crossings leave such members, and the dirty set does not note either: one
    from T into S (a merge's live target) whose removal from T came after the drain had settled the member there;
    and one out of S into another shard on T's node, whose new copy is written there first while its removal from
    S waits for the freeze to end (T rightly lacks it: the crossing finishes under the new map). Both are writes
    under way, marked pending on their index node; a difference they do not explain fails the check."""
    found = await _differing(cluster, parts, job)
    if found is None:
        return False
    only_s, extra = found
    if extra or not only_s:
        return False
    await settle_users(parts, job, only_s)
    found = await _differing(cluster, parts, job)
    if found is None:
        return False
    only_s, extra = found
    if extra or not only_s:
        return not extra
    if parts.same_node:
        return False  # one register for both: the settle copied every member S holds
    versions = [parts.layout.versions_key(u) for u in only_s]
    raw = await parts.source_node.run(CARVE_READ, [shard_key(job.board, job.source), *versions], only_s)
    at_source = parse_read(parts.source_node.id, raw, len(only_s))
    target = parts.target_node
    at_target = await asyncio.gather(*(target.command("HGET", k, u) for k, u in zip(versions, only_s, strict=True)))
    return all(
        registered_version(t if isinstance(t, str) else None) > v
        for (_, v), t in zip(at_source, at_target, strict=True)
    )


async def _differing(cluster: Cluster, parts: Parts, job: Job) -> tuple[list[str], bool] | None:
    """Among the members with a write under way, those S holds in R and T does not, and whether T holds any in R
    that S does not; None when those do not account for the whole difference of the two counts (or there are too
    many marks to read)."""
    pending = await _pending(cluster, job.board)
    if pending is None:
        return None
    (count_s, count_t), in_s, in_t = await asyncio.gather(
        _counts(parts, job),
        _held(parts.source_node, shard_key(job.board, job.source), parts.carved, pending),
        _held(parts.target_node, shard_key(job.board, job.target), parts.carved, pending),
    )
    only_s, extra = sorted(in_s - in_t), in_t - in_s
    if count_s - count_t != len(only_s) - len(extra):
        return None
    return only_s, bool(extra)


async def _pending(cluster: Cluster, board: str) -> list[str] | None:
    """Every member marked pending on any index node (a write committed there and not finished), or None when a
    node holds more than `PENDING_LIMIT` marks."""
    key = moves_key(board)
    nodes = [cluster.node(n) for n in dict.fromkeys(cluster.slots.owners)]
    pages = await asyncio.gather(*(n.command("ZRANGE", key, 0, PENDING_LIMIT) for n in nodes))
    members: dict[str, None] = {}
    for node, page in zip(nodes, pages, strict=True):
        names = replies.texts(node.id, "ZRANGE", page)
        if len(names) > PENDING_LIMIT:
            return None
        members.update(dict.fromkeys(names))
    return list(members)


async def _held(node: NodeClient, key: str, carved: tuple[str, str], users: Sequence[str]) -> set[str]:
    """Which of `users` the zset `key` on `node` holds with a stored score in `carved` (``[lo, hi)``)."""
    if not users:
        return set()
    raw = await node.command("ZMSCORE", key, *users)
    if type(raw) is not list or len(raw) != len(users):
        raise replies.unexpected(node.id, "ZMSCORE", raw)
    lo, hi = int(carved[0]), int(carved[1])
    return {u for u, s in zip(users, raw, strict=True) if s is not None and lo <= float(s) < hi}
