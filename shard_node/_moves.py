"""Rolling a member's pending crossing forward (docs/architecture.md write path step 4), and removals.

A crossing at version v is finished by three idempotent steps, each safe to repeat and safe to run
from two routers at once, under whatever map the finisher holds (the shards are derived from the
scores: `BoardLayout.source_of`, `destination_of`):

1. write (score, v) into the destination shard (skipped for a removal);
2. remove the member from the source shard unless the source holds a newer version (tombstone v),
   skipped when source and destination are one shard: a crossing decided on the cut of a split
   under way, or between two shards merged since, stays in one key;
3. clear the intent (for a removal: leave the index tombstone).

A crash between any two steps leaves the intent in the index, and the next write for that member
(or the sweeper) calls `finish_move` again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar, cast

from rankshard.shard_map import ShardFrozen, ShardState, StaleMap

from . import _replies as replies
from ._client import NodeClient, ScriptCall
from ._keys import IndexEntry, descriptor_state, moves_key
from ._layout import BoardLayout, Cluster
from ._replies import ShardChange, Stale
from ._scripts import (
    INDEX_MOVE,
    SHARD_APPLY,
    SHARD_CROSS,
    SHARD_DROP,
    SHARD_REMOVE,
    SHARD_WRITE,
    Script,
    ShardWriteMode,
)

StepHook = Callable[[str], None]
"""Test-only: called with a step name right after that step is durable; raising simulates a crash."""

MOVE_STEPS = (
    "intent_recorded",
    "destination_written",
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
    writes: Mapping[str, Sequence[object]] | None = None,
) -> None:
    """Carries the pending crossings of `entries` (distinct members) to the end together: each of the
    three steps for all of them at once, one call per node, before the next step. `writes` (user, stored score,
    version)... per shard, of other members, ride in step 1's calls. A crossing whose source and destination
    shards live on one node takes steps 1 and 2 in one call there (SHARD_CROSS), so a batch whose crossings all
    stay on their nodes makes no step 2 round. `removals`, when given, runs the last shard step's calls in place of
    a plain round trip (the writer's chance to count ranks right behind them). Raises `NodeError` subclasses,
    `StaleMap`, `ShardFrozen`; crossings a failed step left are rolled forward like any other."""
    moving = [e for e in entries if e.to]
    staying, leaving = _source_removals(layout, entries)
    ride = removals if moving and not leaving else None
    if moving or writes:
        await _write_step(cluster, layout, _destination_writes(layout, moving, writes), staying, ride)
    if moving:
        _step(on_step, "destination_written")
    if ride is None:
        await drop_shards(cluster, layout, leaving, removals)
    _step(on_step, "source_removed")
    await _index_step(cluster, layout, entries)
    _step(on_step, "intent_cleared")


def _destination_writes(
    layout: BoardLayout, entries: Sequence[IndexEntry], writes: Mapping[str, Sequence[object]] | None
) -> dict[str, list[object]]:
    """Step 1's writes: per destination shard, (user, stored score, version) of each member moving there, after
    `writes`' own for that shard (other members: one user appears once per shard)."""
    by_shard: dict[str, list[object]] = {s: list(w) for s, w in writes.items()} if writes else {}
    for e in entries:
        destination = layout.destination_of(e)
        assert destination is not None  # only crossings with a destination are passed
        by_shard.setdefault(destination, []).extend((e.user_id, layout.stored(e.score), e.version))
    return by_shard


def _source_removals(
    layout: BoardLayout, entries: Sequence[IndexEntry]
) -> tuple[dict[str, list[object]], dict[str, list[object]]]:
    """Step 2's removals: per source shard, (user, version) of the members leaving it (none where the member stays
    in one shard: removing it there would remove what step 1 wrote); first those whose destination shard lives on
    the source's node (made in step 1's call there), then the others (removals, and crossings between nodes)."""
    staying: dict[str, list[object]] = {}
    leaving: dict[str, list[object]] = {}
    shards = layout.shards
    for e in entries:
        source, destination = layout.source_of(e), layout.destination_of(e)
        if source != destination:
            here, there = shards.get(source), shards.get(destination) if destination else None
            local = here is not None and there is not None and here.node == there.node
            (staying if local else leaving).setdefault(source, []).extend((e.user_id, e.version))
    return staying, leaving


async def write_shards(
    cluster: Cluster,
    layout: BoardLayout,
    by_shard: Mapping[str, Sequence[object]],
    *,
    mode: ShardWriteMode = ShardWriteMode.WRITE,
    run_calls: RunCalls | None = None,
) -> None:
    """Each shard's writes (user, stored score, version)... in `by_shard`, one SHARD_WRITE per node for all of its
    shards (see `write_call`), the nodes at once; `run_calls`, when given, runs those calls in place of a plain round
    trip (a writer's chance to count ranks right behind them). A shard whose fence refuses leaves the others' writes
    done; the first such shard (in the order of `by_shard`, node by node) raises `StaleMap` or `ShardFrozen`, as a
    call of its own would. Raises `NodeError` subclasses."""
    await _per_node(cluster, layout, by_shard, functools.partial(write_call, mode=mode), replies.shard_write, run_calls)


async def _write_step(
    cluster: Cluster,
    layout: BoardLayout,
    by_shard: Mapping[str, Sequence[object]],
    staying: Mapping[str, Sequence[object]],
    run_calls: RunCalls | None,
) -> None:
    """Step 1: `write_shards` of `by_shard`, with the removals of the crossings that stay on their node (`staying`,
    per source shard) in the same call there (SHARD_CROSS). Raises as `write_shards`."""
    writes = _by_node(cluster, layout, by_shard)
    drops = _by_node(cluster, layout, staying)
    calls = {
        node_id: [cross_call(layout, shards, drops[node_id]) if node_id in drops else write_call(layout, shards)]
        for node_id, shards in writes.items()
    }
    answers = await (run_calls or functools.partial(run_per_node, cluster))(calls)
    for node_id, shards in writes.items():
        node, raw = cluster.node(node_id), answers[node_id][0]
        dropped = drops.get(node_id)
        if dropped is None:
            _settle(cluster, node, layout, shards, replies.shard_write(node_id, raw, len(shards)))
            continue
        written, removed = replies.shard_cross(node_id, raw, len(shards), len(dropped))
        _settle(cluster, node, layout, shards, written)
        if removed is not None:
            _settle(cluster, node, layout, dropped, removed)


async def drop_shards(
    cluster: Cluster, layout: BoardLayout, by_shard: Mapping[str, Sequence[object]], run_calls: RunCalls | None = None
) -> None:
    """Each shard's removals (user, version)... in `by_shard`, one SHARD_DROP per node for all of its shards (see
    `drop_call`); otherwise as `write_shards`."""
    await _per_node(cluster, layout, by_shard, drop_call, replies.shard_drop, run_calls)


async def _per_node(
    cluster: Cluster,
    layout: BoardLayout,
    by_shard: Mapping[str, Sequence[object]],
    make_call: Callable[[BoardLayout, Mapping[str, Sequence[object]]], ScriptCall],
    decode: Callable[[str, object, int], list[ShardChange | Stale]],
    run_calls: RunCalls | None,
) -> None:
    """`write_shards` and `drop_shards`: `make_call` of each node's shards, run per node, answers `decode`d."""
    groups = _by_node(cluster, layout, by_shard)
    calls = {node_id: [make_call(layout, shards)] for node_id, shards in groups.items()}
    if run_calls is None:
        run_calls = functools.partial(run_per_node, cluster)
    answers = await run_calls(calls)
    for node_id, shards in groups.items():
        _settle(cluster, cluster.node(node_id), layout, shards, decode(node_id, answers[node_id][0], len(shards)))


def _by_node(
    cluster: Cluster, layout: BoardLayout, by_shard: Mapping[str, Sequence[object]]
) -> dict[str, dict[str, Sequence[object]]]:
    """`by_shard` grouped by the node of each shard; raises `StaleMap` for a shard the map does not have."""
    groups: dict[str, dict[str, Sequence[object]]] = {}
    for shard_id, items in by_shard.items():
        groups.setdefault(shard_node(cluster, layout, shard_id).id, {})[shard_id] = items
    return groups


def _settle(
    cluster: Cluster,
    node: NodeClient,
    layout: BoardLayout,
    shards: Mapping[str, object],
    changes: Sequence[ShardChange | Stale],
) -> None:
    """Each of `shards`' decoded answers in `changes` (in order) checked and its size remembered; raises at the
    first refused fence (see `shard_written`)."""
    for shard_id, change in zip(shards, changes, strict=True):
        shard_written(cluster, node, layout, shard_id, change)


async def run_per_node(cluster: Cluster, calls: dict[str, list[ScriptCall]]) -> dict[str, list[object]]:
    """Each node's calls in one pipelined round trip, all nodes at once; answers per node id, in order."""
    node_ids = list(calls)
    answers = await asyncio.gather(*(cluster.node(n).run_many(calls[n]) for n in node_ids))
    return dict(zip(node_ids, answers, strict=True))


async def _index_step(cluster: Cluster, layout: BoardLayout, entries: Sequence[IndexEntry]) -> None:
    """Step 3, clearing the intents: one INDEX_MOVE per index node for all of `entries` there."""
    by_node: dict[str, tuple[NodeClient, list[str], list[object]]] = {}
    for e in entries:
        node, key = cluster.index_of(layout, e.user_id)
        _, keys, args = by_node.setdefault(node.id, (node, [], []))
        keys.append(key)
        args += (e.user_id, e.version, e.from_, e.to)
    moves = moves_key(layout.board)
    nodes = list(by_node.values())
    answers = await asyncio.gather(*(node.run(INDEX_MOVE, [*keys, moves], args) for node, keys, args in nodes))
    for (node, _, _), raw in zip(nodes, answers, strict=True):
        replies.index_move(node.id, raw)  # how many it advanced: fewer when another router got there first


async def shard_call(cluster: Cluster, layout: BoardLayout, shard_id: str, call: ScriptCall) -> ShardChange:
    """Runs a fenced shard script (`apply_call`, `remove_call`) on the shard's node; raises `StaleMap`,
    `ShardFrozen`, `NodeError`."""
    node = shard_node(cluster, layout, shard_id)
    script, keys, args = call
    return shard_changed(cluster, node, layout, shard_id, script, await node.run(script, keys, args))


def shard_changed(
    cluster: Cluster, node: NodeClient, layout: BoardLayout, shard_id: str, script: Script, raw: object
) -> ShardChange:
    """`node`'s reply `raw` to a fenced shard script of `shard_id` (SHARD_APPLY or SHARD_REMOVE), its size
    remembered; raises `StaleMap`, `ShardFrozen` (see `check_fence`), `UnexpectedReply`."""
    return shard_written(cluster, node, layout, shard_id, replies.shard_change(node.id, script, raw))


def shard_written(
    cluster: Cluster, node: NodeClient, layout: BoardLayout, shard_id: str, reply: ShardChange | Stale
) -> ShardChange:
    """`node`'s decoded answer `reply` for `shard_id` (from a fenced shard script), its size remembered; raises
    `StaleMap`, `ShardFrozen` (see `check_fence`)."""
    change = check_fence(node, layout, shard_id, reply)
    record_size(cluster, layout, shard_id, change)
    return change


def apply_call(
    layout: BoardLayout, shard_id: str, writes: Sequence[object], *, mode: ShardWriteMode = ShardWriteMode.WRITE
) -> ScriptCall:
    """SHARD_APPLY of `writes` = (user, stored score, version)... into the shard, in `mode`."""
    args: list[object] = [layout.descriptors[shard_id], mode, *layout.stored_ranges[shard_id]]
    _add_writes(layout, args, writes)
    return SHARD_APPLY, layout.fenced_keys[shard_id], args


def write_call(
    layout: BoardLayout, by_shard: Mapping[str, Sequence[object]], *, mode: ShardWriteMode = ShardWriteMode.WRITE
) -> ScriptCall:
    """SHARD_WRITE of each shard's writes (user, stored score, version)... in `by_shard` (shards of one node), in
    `mode`: one call that writes them all, each shard fenced on its own (`replies.shard_write` answers per shard,
    in the order of `by_shard`)."""
    args: list[object] = [mode, *layout.write_keys]
    _write_blocks(layout, args, by_shard)
    return SHARD_WRITE, (), args


def cross_call(
    layout: BoardLayout, writes: Mapping[str, Sequence[object]], removals: Mapping[str, Sequence[object]]
) -> ScriptCall:
    """SHARD_CROSS of `writes` as `write_call` takes them, then of `removals` as `drop_call` takes them (shards of one
    node): one call making both, the removals only if no write was refused (`replies.shard_cross`)."""
    args: list[object] = [*layout.write_keys, 0]
    _write_blocks(layout, args, writes)
    args[4] = len(args)  # the 1-based position of the writes' last value
    _drop_blocks(layout, args, removals)
    return SHARD_CROSS, (), args


def _write_blocks(layout: BoardLayout, args: list[object], by_shard: Mapping[str, Sequence[object]]) -> None:
    """Appends SHARD_WRITE's per-shard blocks of `by_shard`'s writes to `args`."""
    descriptors, ranges = layout.descriptors, layout.stored_ranges
    for shard_id, writes in by_shard.items():
        args += (shard_id, descriptors[shard_id], *ranges[shard_id], len(writes) // 3)
        _add_writes(layout, args, writes)


def _add_writes(layout: BoardLayout, args: list[object], writes: Sequence[object]) -> None:
    """Appends `writes` = (user, stored score, version)... to `args` as the shard scripts take them: (user, stored
    score, version, the user's versions hash)..."""
    versions_key = layout.versions_key
    for i in range(0, len(writes), 3):
        user = cast("str", writes[i])
        args += (user, writes[i + 1], writes[i + 2], versions_key(user))


def remove_call(layout: BoardLayout, shard_id: str, removals: Sequence[object]) -> ScriptCall:
    """SHARD_REMOVE of `removals` = (user, version)... from the shard."""
    users = cast("Sequence[str]", removals[::2])  # every other item is a user id
    keys = [*layout.fenced_keys[shard_id], *(layout.versions_key(u) for u in users)]
    return SHARD_REMOVE, keys, [layout.descriptors[shard_id], *layout.stored_ranges[shard_id], *removals]


def drop_call(layout: BoardLayout, by_shard: Mapping[str, Sequence[object]]) -> ScriptCall:
    """SHARD_DROP of each shard's removals (user, version)... in `by_shard` (shards of one node): one call that drops
    them all, each shard fenced on its own (`replies.shard_drop` answers per shard, in the order of `by_shard`)."""
    args: list[object] = list(layout.write_keys)
    _drop_blocks(layout, args, by_shard)
    return SHARD_DROP, (), args


def _drop_blocks(layout: BoardLayout, args: list[object], by_shard: Mapping[str, Sequence[object]]) -> None:
    """Appends SHARD_DROP's per-shard blocks of `by_shard`'s removals to `args`."""
    descriptors, ranges, versions_key = layout.descriptors, layout.stored_ranges, layout.versions_key
    for shard_id, removals in by_shard.items():
        args += (shard_id, descriptors[shard_id], *ranges[shard_id], len(removals) // 2)
        for i in range(0, len(removals), 2):
            user = cast("str", removals[i])
            args += (user, removals[i + 1], versions_key(user))


def shard_node(cluster: Cluster, layout: BoardLayout, shard_id: str) -> NodeClient:
    shard = layout.shards.get(shard_id)
    if shard is None:
        raise StaleMap("?", f"shard {shard_id} of {layout.board!r} is not in map epoch {layout.map.epoch}")
    return cluster.node(shard.node)


R = TypeVar("R")


def check_fence(node: NodeClient, layout: BoardLayout, shard_id: str, reply: R | Stale) -> R:
    """`reply`, unless a fenced script answered `Stale`: then raises `fence_error`'s error."""
    if isinstance(reply, Stale):
        raise fence_error(node, layout, shard_id, reply)
    return reply


def fence_error(node: NodeClient, layout: BoardLayout, shard_id: str, stale: Stale) -> ShardFrozen | StaleMap:
    """What a fenced script's `stale` answer for `shard_id` means: `ShardFrozen` if the shard is in the last
    moments of a job (FROZEN or COMMITTING under the caller's own generation, or INCOMING: about to become
    active), else `StaleMap`. Either is passing: a writer retries (`ShardFrozen` without reloading the map)."""
    actual = stale.descriptor
    expected = layout.descriptors[shard_id]
    state = descriptor_state(actual)
    same = actual.rsplit("|", 1)[0] == expected.rsplit("|", 1)[0]
    if same and state in _PASSING:
        return ShardFrozen(node.id, f"shard {shard_id} of {layout.board!r} is {state.lower()} for a migration")
    return StaleMap(
        node.id,
        f"shard {shard_id} of {layout.board!r} is {actual or 'absent'!r} there, "
        f"map epoch {layout.map.epoch} expects {expected!r}",
        passing=bool(actual) and (state in _JOB_STATES or _generation(actual) < _generation(expected)),
    )


def _generation(descriptor: str) -> int:
    parts = descriptor.split("|")
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else 0


_PASSING = frozenset({ShardState.FROZEN, ShardState.COMMITTING, ShardState.INCOMING})
_JOB_STATES = _PASSING | {ShardState.MIGRATING}


def record_size(cluster: Cluster, layout: BoardLayout, shard_id: str, change: ShardChange) -> None:
    """Remembers the size a shard script reported after changing the shard (see `Cluster.last_sizes`)."""
    cluster.last_sizes[(layout.board, layout.descriptors[shard_id], shard_id)] = change.size


def _step(hook: StepHook | None, name: str) -> None:
    if hook is not None:
        hook(name)
