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

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

from rankshard.shard_map import ShardFrozen, StaleMap

from ._client import NodeClient, ScriptCall
from ._keys import IndexEntry, descriptor_state, moves_key
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
    await finish_moves(cluster, layout, [entry], on_step)


RunCalls = Callable[[dict[str, list[ScriptCall]]], Awaitable[dict[str, list[object]]]]
"""Runs calls per node id in one round trip and answers them per node id, in order."""


async def finish_moves(
    cluster: Cluster,
    layout: BoardLayout,
    entries: Sequence[IndexEntry],
    on_step: StepHook | None = None,
    *,
    removals: RunCalls | None = None,
) -> None:
    """Carries the pending moves of `entries` (distinct members) to the end together: each of the
    four steps for all of them at once, one pipelined round trip per node, before the next step.
    `removals`, when given, runs step 3's calls in place of a plain pipelined round trip (the writer's
    chance to count ranks right behind them). Raises `NodeError` subclasses; moves a failed step left
    are rolled forward like any other."""
    moving = [e for e in entries if e.to]
    if moving:
        await _shard_step(cluster, layout, moving, "to")
        _step(on_step, "destination_written")
        await _index_step(cluster, layout, moving, "home")
        _step(on_step, "home_switched")
    await _shard_step(cluster, layout, entries, "from", removals)
    _step(on_step, "source_removed")
    await _index_step(cluster, layout, entries, "done")
    _step(on_step, "intent_cleared")


async def _shard_step(
    cluster: Cluster, layout: BoardLayout, entries: Sequence[IndexEntry], side: str, run_calls: RunCalls | None = None
) -> None:
    """Step 1 (`side` 'to': write the destinations) or step 3 ('from': remove from the sources)."""
    by_shard: dict[str, list[object]] = {}
    for e in entries:
        if side == "to":
            by_shard.setdefault(e.to, []).extend((e.user_id, layout.stored(e.score), e.version))
        else:
            by_shard.setdefault(e.from_, []).extend((e.user_id, e.version))
    by_node: dict[str, list[tuple[str, ScriptCall]]] = {}
    for shard_id, args in by_shard.items():
        call = apply_call(layout, shard_id, args) if side == "to" else remove_call(layout, shard_id, args)
        by_node.setdefault(shard_node(cluster, layout, shard_id).id, []).append((shard_id, call))

    if run_calls is None:
        run_calls = functools.partial(run_per_node, cluster)
    answers = await run_calls({n: [c for _, c in calls] for n, calls in by_node.items()})
    for node_id, calls in by_node.items():
        node = cluster.node(node_id)
        for (shard_id, _), result in zip(calls, answers[node_id], strict=True):
            check_fence(node, layout, shard_id, result)  # type: ignore[arg-type]
            record_size(cluster, layout, shard_id, result)  # type: ignore[arg-type]


async def run_per_node(cluster: Cluster, calls: dict[str, list[ScriptCall]]) -> dict[str, list[object]]:
    """Each node's calls in one pipelined round trip, all nodes at once; answers per node id, in order."""
    node_ids = list(calls)
    answers = await asyncio.gather(*(cluster.node(n).run_many(calls[n]) for n in node_ids))
    return dict(zip(node_ids, answers, strict=True))


async def _index_step(cluster: Cluster, layout: BoardLayout, entries: Sequence[IndexEntry], step: str) -> None:
    """Step 2 ('home': compare-and-set the index's shard) or step 4 ('done': clear the intent): one
    INDEX_MOVE per index node for all of `entries` there."""
    by_node: dict[str, tuple[NodeClient, list[str], list[object]]] = {}
    for e in entries:
        node, key = cluster.index_of(layout, e.user_id)
        _, keys, args = by_node.setdefault(node.id, (node, [], [step]))
        keys.append(key)
        args += (e.user_id, e.version, e.from_, e.to)
    moves = moves_key(layout.board)
    await asyncio.gather(*(node.run(INDEX_MOVE, [*keys, moves], args) for node, keys, args in by_node.values()))


async def shard_call(cluster: Cluster, layout: BoardLayout, shard_id: str, call: ScriptCall) -> list[object]:
    """Runs a fenced shard script (`apply_call`, `remove_call`) on the shard's node; raises `StaleMap`,
    `ShardFrozen`, `NodeError`."""
    node = shard_node(cluster, layout, shard_id)
    result = await node.run(*call)
    check_fence(node, layout, shard_id, result)
    record_size(cluster, layout, shard_id, result)
    return result


def apply_call(layout: BoardLayout, shard_id: str, writes: Sequence[object], *, mode: str = "write") -> ScriptCall:
    """SHARD_APPLY of `writes` = (user, stored score, version)... into the shard. `mode` (see
    shard_apply.lua): 'write'; 'rewrite' (repair only) also rewrites a member at the version its node
    has registered."""
    users = writes[::3]
    keys = [*layout.fenced_keys[shard_id], *(layout.versions_key(u) for u in users)]  # type: ignore[arg-type]
    return SHARD_APPLY, keys, [layout.descriptors[shard_id], mode, *writes]


def remove_call(layout: BoardLayout, shard_id: str, removals: Sequence[object]) -> ScriptCall:
    """SHARD_REMOVE of `removals` = (user, version)... from the shard."""
    users = removals[::2]
    keys = [*layout.fenced_keys[shard_id], *(layout.versions_key(u) for u in users)]  # type: ignore[arg-type]
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
