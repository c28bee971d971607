"""Rolling a member's pending move forward (DESIGN.md write path step 4), and removals.

A move ``from -> to`` at version v is finished by four idempotent steps, each safe to repeat and
safe to run from two routers at once:

1. write (score, v) into the destination shard (skipped for a removal, to == "");
2. compare-and-set the index entry's home to the destination;
3. remove the member from the source shard unless the source holds a newer version (tombstone v);
4. clear the intent (for a removal: leave the index tombstone).

A crash between any two steps leaves the intent in the index, and the next write for that member
(or the sweeper) calls `finish_move` again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shard_map import ShardFrozen, StaleMap, user_hash

from ._client import NodeClient, ScriptCall
from ._keys import IndexEntry, descriptor_state, moves_key, versions_key
from ._layout import BoardLayout, Cluster
from ._scripts import INDEX_MOVE, SHARD_APPLY, SHARD_REMOVE

StepHook = Callable[[str], None]
"""Test-only: called with a step name right after that step is durable; raising simulates a crash."""

MOVE_STEPS = (
    "intent_recorded",
    "destination_written",
    "home_switched",
    "source_removed",
    "intent_cleared",
)


async def finish_move(
    cluster: Cluster, layout: BoardLayout, entry: IndexEntry, on_step: StepHook | None = None
) -> None:
    """Carries `entry`'s pending move to the end; raises `NodeError` subclasses."""
    index_node, index_key = cluster.index_of(layout.board, entry.user_id)
    index_keys = [index_key, moves_key(layout.board)]
    intent = (entry.user_id, entry.version, entry.from_, entry.to)
    if entry.to:
        stored = layout.stored(entry.score)
        await shard_call(cluster, layout, entry.to, apply_call(layout, entry.to, [entry.user_id, stored, entry.version]))
        _step(on_step, "destination_written")
        await index_node.run(INDEX_MOVE, index_keys, ["home", *intent])
        _step(on_step, "home_switched")
    await shard_call(cluster, layout, entry.from_, remove_call(layout, entry.from_, [entry.user_id, entry.version]))
    _step(on_step, "source_removed")
    await index_node.run(INDEX_MOVE, index_keys, ["done", *intent])
    _step(on_step, "intent_cleared")


async def shard_call(cluster: Cluster, layout: BoardLayout, shard_id: str, call: ScriptCall) -> list[object]:
    """Runs a fenced shard script (`apply_call`, `remove_call`) on the shard's node; raises `StaleMap`,
    `ShardFrozen`, `NodeError`."""
    node = shard_node(cluster, layout, shard_id)
    result = await node.run(*call)
    check_fence(node, layout, shard_id, result)
    record_size(cluster, layout, shard_id, result)
    return result


def apply_call(layout: BoardLayout, shard_id: str, writes: Sequence[object], *, rewrite: bool = False) -> ScriptCall:
    """SHARD_APPLY of `writes` = (user, stored score, version)... into the shard; `rewrite` (repair
    only) also rewrites a member at the version its node has registered."""
    keys = [*layout.fenced_keys[shard_id], *(versions_key(layout.board, user_hash(u)) for u in writes[::3])]  # type: ignore[arg-type]
    return SHARD_APPLY, keys, [layout.descriptors[shard_id], "rewrite" if rewrite else "write", *writes]


def remove_call(layout: BoardLayout, shard_id: str, removals: Sequence[object]) -> ScriptCall:
    """SHARD_REMOVE of `removals` = (user, version)... from the shard."""
    keys = [*layout.fenced_keys[shard_id], *(versions_key(layout.board, user_hash(u)) for u in removals[::2])]  # type: ignore[arg-type]
    return SHARD_REMOVE, keys, [layout.descriptors[shard_id], *removals]


def shard_node(cluster: Cluster, layout: BoardLayout, shard_id: str) -> NodeClient:
    shard = layout.shards.get(shard_id)
    if shard is None:
        raise StaleMap("?", f"shard {shard_id} of {layout.board!r} is not in map epoch {layout.map.epoch}")
    return cluster.node(shard.node)


def check_fence(node: NodeClient, layout: BoardLayout, shard_id: str, result: list[object]) -> None:
    """Raises when a fenced script answered 'stale': `ShardFrozen` if only the state differs."""
    if result[0] != "stale":
        return
    actual = str(result[-1])
    expected = layout.descriptors[shard_id]
    if descriptor_state(actual) == "FROZEN" and actual.rsplit("|", 1)[0] == expected.rsplit("|", 1)[0]:
        raise ShardFrozen(node.id, f"shard {shard_id} of {layout.board!r} is frozen for a migration")
    raise StaleMap(
        node.id,
        f"shard {shard_id} of {layout.board!r} is {actual or 'absent'!r} there, "
        f"map epoch {layout.map.epoch} expects {expected!r}",
    )


def record_size(cluster: Cluster, layout: BoardLayout, shard_id: str, result: list[object]) -> None:
    """Remembers the size a shard script reported after changing the shard (see `Cluster.last_sizes`)."""
    cluster.last_sizes[(layout.board, layout.descriptors[shard_id], shard_id)] = int(result[1])  # type: ignore[call-overload]


def _step(hook: StepHook | None, name: str) -> None:
    if hook is not None:
        hook(name)
