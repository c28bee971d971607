"""What a rebalancing job (`_carve.Carver`) works on, and its two moves of members: reading them as the source
holds them and settling them in the target. Shared by the copy, the catch-up and the freeze's check
(`_carve_verify`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rankshard.shard_map import Job, JobKind, RankshardError, Shard, ShardState

from . import _replies as replies
from ._client import NodeClient
from ._keys import descriptor, descriptor_key, shard_key
from ._layout import BoardLayout
from ._scripts import CARVE_READ, CARVE_SETTLE, SHARD_CLEAR, ClearMode


class JobFailed(RankshardError):
    """A job cannot go on as planned (its shards changed, a freeze kept lapsing); its row says where it stands."""


@dataclass(frozen=True, slots=True)
class Parts:
    """What a job works on, under the map it was planned and prepared with."""

    layout: BoardLayout
    source: Shard
    carved: tuple[str, str]
    """R in stored scores, ``[lo, hi)``."""
    source_node: NodeClient
    target_node: NodeClient

    @property
    def same_node(self) -> bool:
        return self.source_node.id == self.target_node.id


async def settle_users(parts: Parts, job: Job, users: Sequence[str]) -> int:
    """`users` as S holds them now, written into (or removed from) T; returns how many T now holds of them."""
    versions = [parts.layout.versions_key(u) for u in users]
    state = await read_source(parts, job, users, versions)
    return await write_target(parts, job, users, versions, state)


async def read_source(parts: Parts, job: Job, users: Sequence[str], versions: Sequence[str]) -> list[tuple[str, int]]:
    """Each of `users` (`versions`: their register keys) as S holds it now: its stored score ('' when absent)
    and registered version."""
    raw = await parts.source_node.run(CARVE_READ, [shard_key(job.board, job.source), *versions], list(users))
    return parse_read(parts.source_node.id, raw, len(users))


async def write_target(
    parts: Parts, job: Job, users: Sequence[str], versions: Sequence[str], state: Sequence[tuple[str, int]]
) -> int:
    """`users` in T made as `state` says S holds them; returns how many T now holds of them."""
    args: list[object] = [target_descriptor(job), *parts.carved, int(parts.same_node)]
    for user, (stored, version) in zip(users, state, strict=True):
        args += (user, stored, version)
    keys = [shard_key(job.board, job.target), descriptor_key(job.board, job.target), *versions]
    return _settled(parts.target_node.id, await parts.target_node.run(CARVE_SETTLE, keys, args), job)


def target_descriptor(job: Job) -> str:
    """The target's descriptor while the job fills it: a new one INCOMING, a merge target as it was."""
    plan = job.plan
    state = ShardState.ACTIVE if job.kind is JobKind.MERGE else ShardState.INCOMING
    shard = Shard(job.target, plan.target_lower, plan.target_upper, job.target_node, state, plan.target_generation)
    return descriptor(shard)


async def clear_shard(node: NodeClient, board: str, shard_id: str, mode: ClearMode, *args: str) -> int:
    """`shard_clear` of the shard on `node` in `mode` (its data and the node's kept size of it changed together)."""
    keys = [shard_key(board, shard_id), descriptor_key(board, shard_id)]
    return replies.shard_clear(node.id, await node.run(SHARD_CLEAR, keys, [mode.value, *args]))


def zrange(board: str, shard_id: str, carved: tuple[str, str]) -> tuple[str, str, str]:
    """A shard's key and `carved` as ZCOUNT / ZRANGE BYSCORE bounds (``[lo, hi)``)."""
    return shard_key(board, shard_id), carved[0], f"({carved[1]}"


def parse_read(node: str, raw: object, members: int) -> list[tuple[str, int]]:
    if type(raw) is list and len(raw) == 2 * members:
        scores, versions = raw[::2], raw[1::2]
        if all(type(s) is str for s in scores) and all(type(v) is int for v in versions):
            return [(str(int(float(s))) if s else "", v) for s, v in zip(scores, versions, strict=True)]
    raise replies.unexpected(node, "carve_read", raw)


def _settled(node: str, raw: object, job: Job) -> int:
    if type(raw) is list and raw and raw[0] == "ok" and len(raw) == 3 and type(raw[1]) is int:
        return raw[1]
    if type(raw) is list and len(raw) == 2 and raw[0] == "stale":
        raise JobFailed(f"{job.describe()}: node {node} holds {raw[1]!r} for {job.target}, not what the job expects")
    raise replies.unexpected(node, "carve_settle", raw)
