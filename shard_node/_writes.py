"""The write path of docs/architecture.md: index commit, shard writes, boundary crossings, removals."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from rankshard.shard_map import Operator, OutOfRange, RequestIdConflict, StaleMap, user_hash

from . import _replies as replies
from ._client import NodeClient, ScriptCall
from ._keys import IndexEntry, dedup_key, moves_key
from ._layout import BoardLayout, Cluster
from ._moves import StepHook, _step, finish_move, finish_moves, write_shards
from ._reads import SMALL_BATCH, rank_after, sizes_answer, sizes_call
from ._replies import Aborted, Answered, Checked, Committed, PendingMove, Refusal, RefusalKind, Refused, ShardCounts
from ._scripts import INDEX_APPLY, INDEX_REMOVE, IndexMode, ShardWriteMode

_MAX_ROUNDS = 8
"""Index attempts per call: each lost round means another writer's move had to be finished first."""


@dataclass(frozen=True, slots=True)
class Update:
    user_id: str
    value: int
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    score: int
    rank: int
    applied: bool


Answer = Committed | RequestIdConflict | OutOfRange
"""One update's outcome at the index: committed, or refused on its own (`apply_each`)."""


@dataclass(frozen=True, slots=True)
class _Batch:
    """A call's updates, with where each one's index entry lives."""

    updates: Sequence[Update]
    nodes: list[NodeClient]
    """Per update: its index node."""
    keys: list[tuple[str, str]]
    """Per update: the index script's keys for it, its index hash and the stem of its request-id hashes."""
    by_node: dict[str, tuple[NodeClient, list[int]]]
    """Per index node: the positions of its updates."""

    @classmethod
    def of(cls, cluster: Cluster, layout: BoardLayout, updates: Sequence[Update]) -> _Batch:
        nodes: list[NodeClient] = []
        keys: list[tuple[str, str]] = []
        by_node: dict[str, tuple[NodeClient, list[int]]] = {}
        board = layout.board
        for i, update in enumerate(updates):
            h = user_hash(update.user_id)
            node, key = cluster.index_of_hash(layout, h)
            nodes.append(node)
            keys.append((key, dedup_key(board, h)))
            by_node.setdefault(node.id, (node, []))[1].append(i)
        return cls(updates, nodes, keys, by_node)


class UpdateCall:
    """One call's updates on their way through the write path (docs/architecture.md, steps 2 to 6).

    `run` answers them. When it raises `StaleMap` or `ShardFrozen` it may be called again, with a newer
    layout: it goes on from where it stood. What the index committed stays committed and is finished under
    the new map (step 5: the client never sees a map change as an error); updates not committed yet are sent
    again. Finishing again what was finished is harmless: shard writes are absolute and versioned.
    """

    def __init__(
        self,
        cluster: Cluster,
        layout: BoardLayout,
        updates: Sequence[Update],
        *,
        each: bool = False,
        on_step: StepHook | None = None,
    ) -> None:
        self.cluster = cluster
        self.updates = updates
        self.each = each
        self.on_step = on_step
        self._batch = _Batch.of(cluster, layout, updates)  # index nodes and keys: the same under every map
        self._todo = {node_id: positions for node_id, (_, positions) in self._batch.by_node.items()}
        self._results: list[Answer | None] = [None] * len(updates)
        self._checked = each or len(self._todo) == 1 or not _refusable(layout, updates)
        self._refused: RequestIdConflict | OutOfRange | None = None
        self._known: dict[str, ShardCounts] | None = None
        """Nodes' sizes read in this run's index rounds (see `_run_index`), for a call of at most SMALL_BATCH
        updates."""

    async def run(self, layout: BoardLayout) -> list[UpdateOutcome | RequestIdConflict | OutOfRange]:
        """The outcome of each update, in order (`each`: a refused one is its error alone). Without `each`, a
        refusal raises `RequestIdConflict` or `OutOfRange` naming ``updates[i]`` (nothing applied when all the
        updates' index slots live on one node; see `_commit`). Raises `StaleMap`, `ShardFrozen` (run again:
        see the class), `NodeError`."""
        self._known = {} if self._todo and len(self.updates) <= SMALL_BATCH else None
        if self._todo:
            await self._commit(layout)
        answers = [a for a in self._results if a is not None]
        if self._refused is not None:
            # Some updates committed before another was refused: their members' shards must follow.
            await _write_shards(self.cluster, layout, [a for a in answers if isinstance(a, Committed)], self.on_step)
            raise self._refused
        outcomes = iter(await _finish(self.cluster, layout, self._batch, answers, self.on_step, self._known))
        return [next(outcomes) if isinstance(a, Committed) else a for a in answers]

    async def _commit(self, layout: BoardLayout) -> None:
        """Runs the index script for every update not committed yet (docs/architecture.md write path step 2).

        A member caught mid-move (another writer's move) holds back only its own updates: that move is
        finished and they are sent again, while the rest of the batch is applied. A refused update (a
        reused request id with another value, an overflow) fails the whole batch before anything is
        applied (with several index nodes a read-only check round runs first, unless no update can be
        refused: none has a request id and the operator cannot overflow), unless `each`: then it is that
        update's answer alone (unary calls the router coalesced).
        """
        updates, by_node, todo = self.updates, self._batch.by_node, self._todo
        for _ in range(_MAX_ROUNDS):
            mode = IndexMode.EACH if self.each else IndexMode.APPLY if self._checked else IndexMode.CHECK
            nodes = sorted(todo)
            answers = await asyncio.gather(
                *(
                    _run_index(self.cluster, by_node[n][0], layout, self._batch, todo[n], mode, self._known)
                    for n in nodes
                ),
                return_exceptions=True,
            )
            intents: list[IndexEntry] = []
            refused: tuple[Refusal, list[int]] | None = None
            failed: BaseException | None = None
            for node_id, answer in zip(nodes, answers, strict=True):
                if isinstance(answer, BaseException):
                    failed = failed or answer  # after the others' answers are filed: they may have committed
                elif isinstance(answer, Aborted):
                    refused = refused or (answer.refusals[0], todo[node_id])
                elif isinstance(answer, Checked):
                    intents.extend(move.entry for move in answer.moves)
                elif held := _take(answer, todo[node_id], updates, self._results, intents):
                    todo[node_id] = held
                else:
                    del todo[node_id]
            if failed is not None:
                raise failed
            if refused is not None:
                # Judged once every node's answer is in: another node may have committed its share this round.
                committed = any(isinstance(r, Committed) for r in self._results)
                refusal, positions = refused
                error = _refusal(refusal.kind, updates, positions[refusal.position - 1], committed)
                if not committed:
                    raise error
                self._refused, self._todo = error, {}
                return
            self._checked = True
            if not todo:
                return
            if intents:
                await finish_moves(self.cluster, layout, _distinct(intents), self.on_step)
        raise _contended(updates[min(p[0] for p in todo.values())].user_id)


async def apply_updates(
    cluster: Cluster,
    layout: BoardLayout,
    updates: Sequence[Update],
    on_step: StepHook | None = None,
) -> list[UpdateOutcome]:
    """Applies `updates` under the board's operator and answers each with its score and rank (`UpdateCall`
    run once). Raises `RequestIdConflict` or `OutOfRange` naming ``updates[i]``, `StaleMap`, `ShardFrozen`,
    `NodeError`."""
    outcomes = await UpdateCall(cluster, layout, updates, on_step=on_step).run(layout)
    return cast("list[UpdateOutcome]", outcomes)  # without `each` a refusal raises


async def apply_each(
    cluster: Cluster,
    layout: BoardLayout,
    updates: Sequence[Update],
    on_step: StepHook | None = None,
) -> list[UpdateOutcome | RequestIdConflict | OutOfRange]:
    """Like `apply_updates`, but each update stands on its own (unary calls answered together): a
    refused one is answered with its error, naming the field alone, and the others are applied.

    Raises `StaleMap`, `ShardFrozen`, `NodeError` for the whole batch.
    """
    return await UpdateCall(cluster, layout, updates, each=True, on_step=on_step).run(layout)


async def _finish(
    cluster: Cluster,
    layout: BoardLayout,
    batch: _Batch,
    answers: list[Answer],
    on_step: StepHook | None,
    known: Mapping[str, ShardCounts] | None = None,
) -> list[UpdateOutcome]:
    """Steps 3 to 5 of the write path for the committed `answers` (one per update of `batch`), answered in
    their order (`known`: nodes' sizes read since the call began, see `_reads.count_after`); their pending-write
    marks are then cleared in the background."""
    committed = [a for a in answers if isinstance(a, Committed)]
    ranks = await _write_shards(cluster, layout, committed, on_step, rank=True, known=known) if committed else []
    _forget_written(cluster, layout, batch, answers)
    return [UpdateOutcome(c.score, r, c.applied) for c, r in zip(committed, ranks, strict=True)]


class RemoveCall:
    """RemoveMember through the write path; like `UpdateCall`, `run` may be called again with a newer layout
    after `StaleMap` or `ShardFrozen`, and finishes a removal the index committed."""

    def __init__(self, cluster: Cluster, user_id: str, on_step: StepHook | None = None) -> None:
        self.cluster = cluster
        self.user_id = user_id
        self.on_step = on_step
        self._committed: IndexEntry | None = None

    async def run(self, layout: BoardLayout) -> bool:
        """False if the member was not on the board. Raises `StaleMap`, `ShardFrozen`, `NodeError`."""
        if self._committed is None:
            entry = await self._commit(layout)
            if entry is None:
                return False
            self._committed = entry
            _step(self.on_step, "intent_recorded")
        await finish_move(self.cluster, layout, self._committed, self.on_step)
        return True

    async def _commit(self, layout: BoardLayout) -> IndexEntry | None:
        node, key = self.cluster.index_of(layout, self.user_id)
        for _ in range(_MAX_ROUNDS):
            raw = await node.run(INDEX_REMOVE, [key, moves_key(layout.board)], [self.user_id, layout.map.epoch])
            answer = replies.index_remove(node.id, raw, self.user_id)
            if answer is None:
                return None
            if not isinstance(answer, PendingMove):
                return answer.entry
            await finish_move(self.cluster, layout, answer.entry, self.on_step)
        raise _contended(self.user_id)


async def remove_member(cluster: Cluster, layout: BoardLayout, user_id: str, on_step: StepHook | None = None) -> bool:
    """Removes a member; False if it was not on the board. Raises `StaleMap`, `ShardFrozen`, `NodeError`."""
    return await RemoveCall(cluster, user_id, on_step).run(layout)


def _take(
    answer: Answered,
    positions: list[int],
    updates: Sequence[Update],
    results: list[Answer | None],
    intents: list[IndexEntry],
) -> list[int]:
    """Files one node's answers to the updates at `positions` into `results`, the pending moves it met into
    `intents`; returns the positions held back by those moves, to be sent again."""
    held = []
    for i, a in zip(positions, answer.answers, strict=True):
        if isinstance(a, Committed):
            results[i] = a
        elif isinstance(a, PendingMove):
            intents.append(a.entry)
            held.append(i)
        else:
            results[i] = _refused(a, updates[i])
    return held


def _refused(answer: Refused, update: Update) -> RequestIdConflict | OutOfRange:
    return _refusal(answer.kind, [update], 0, False)


async def _run_index(
    cluster: Cluster,
    node: NodeClient,
    layout: BoardLayout,
    batch: _Batch,
    positions: list[int],
    mode: IndexMode,
    known: dict[str, ShardCounts] | None,
) -> Aborted | Checked | Answered:
    """One index node's round of `UpdateCall._commit`; with `known`, the node's sizes are read in the same round trip
    into it (see `_reads.sizes_call`)."""
    config = layout.config
    args: list[object] = [mode, int(config.operator), int(layout.descending), *layout.index_args]
    first = len(args)
    call_keys: list[str] = []
    updates, keys = batch.updates, batch.keys
    for i in positions:
        u = updates[i]
        args += (u.user_id, u.value, u.request_id)
        call_keys += keys[i]
    index_call: ScriptCall = (INDEX_APPLY, [*call_keys, moves_key(layout.board)], args)
    if known is None or mode is IndexMode.CHECK or (sizes := sizes_call(cluster, layout, node.id)) is None:
        raw = await node.run(*index_call)
    else:
        # The node's sizes ride in the index round, so the shard round asks it again only if it writes there.
        raw, sized = await node.run_many([index_call, sizes])
        if (counts := sizes_answer(cluster, layout, node.id, sized)) is not None:
            known[node.id] = counts
    return replies.index_apply(node.id, raw, mode, cast("list[str]", args[first::3]))  # the updates' user ids


def _refusable(layout: BoardLayout, updates: Sequence[Update]) -> bool:
    """Whether the index could refuse one of `updates`: a request id may have been used with another
    value, an increment may overflow; best and set only ever keep a validated value."""
    return layout.config.operator is Operator.INCREMENT or any(u.request_id for u in updates)


def _refusal(kind: RefusalKind, updates: Sequence[Update], pos: int, applied: bool) -> RequestIdConflict | OutOfRange:
    """The client error of the index script's refusal of ``updates[pos]``."""
    field = "request_id" if kind is RefusalKind.CONFLICT else "score"
    name = f"updates[{pos}].{field}" if len(updates) > 1 else field
    note = "; other updates of this call were applied" if applied else "; nothing was applied"
    if kind is RefusalKind.CONFLICT:
        return RequestIdConflict(
            f"{name}: {updates[pos].request_id!r} was used for user {updates[pos].user_id!r} "
            f"with a different score{note}"
        )
    return OutOfRange(name, f"the result would leave ±(2^53 - 1){note}")


async def _write_shards(
    cluster: Cluster,
    layout: BoardLayout,
    committed: list[Committed],
    on_step: StepHook | None,
    rank: bool = False,
    known: Mapping[str, ShardCounts] | None = None,
) -> list[int]:
    """docs/architecture.md write path steps 3 and 4 for each member's final state in this call; with `rank`,
    then step 5: the ranks of the committed scores (else an empty list). Without a crossing, the nodes of `known`
    (their sizes read since the call began) are counted again only where the call writes.

    Every member the call touched is written, applied or not: an earlier call may have died between
    its index commit and its shard write (leaving no intent when the member did not cross a
    boundary), and re-writing the same absolute (score, version) is a no-op when nothing was lost.
    Without a boundary crossing the counts ride in the shard writes' round trip, right behind each
    node's writes; a crossing takes several steps, so its ranks are counted once it is done, and the
    other members' writes ride in its first step's calls (one write call per node, not two).
    """
    final: dict[str, IndexEntry] = {}
    for c in committed:
        if c.entry is not None:
            final[c.entry.user_id] = c.entry
    moves = [e for e in final.values() if e.moving]
    if moves:
        _step(on_step, "intent_recorded")
    by_shard: dict[str, list[object]] = {}
    for e in final.values():
        if not e.moving:
            by_shard.setdefault(layout.home_of(e), []).extend((e.user_id, layout.stored(e.score), e.version))
    scores = [c.score for c in committed]
    if not moves:
        return await _write_groups(cluster, layout, by_shard, scores if rank else (), known=known)
    ranks: list[int] = []

    async def remove_then_count(calls: dict[str, list[ScriptCall]]) -> dict[str, list[object]]:
        # The moves' removals are the call's last shard change (the writes without a crossing went in the
        # moves' first step): counted behind them, every shard holds this call's final state, one round
        # trip sooner.
        nonlocal ranks
        ranks, _, answers = await rank_after(cluster, layout, scores, calls)
        return answers

    await finish_moves(cluster, layout, moves, on_step, removals=remove_then_count if rank else None, writes=by_shard)
    return ranks


def _forget_written(cluster: Cluster, layout: BoardLayout, batch: _Batch, answers: list[Answer]) -> None:
    """Hands the pending-write marks of members whose shard write is done (moves clear their own) to
    the background clearing (see `_forget`): the caller's answer does not wait for them."""
    done: dict[str, tuple[IndexEntry, int]] = {}
    for i, answer in enumerate(answers):
        if isinstance(answer, Committed) and answer.applied:
            entry = answer.entry
            if entry is not None and not entry.moving:
                done[entry.user_id] = (entry, i)
    for entry, i in done.values():
        cluster.forgets.add(batch.nodes[i], layout.board, batch.keys[i][0], entry.user_id, entry.version)


async def _write_groups(
    cluster: Cluster,
    layout: BoardLayout,
    by_shard: dict[str, list[object]],
    scores: Sequence[int] = (),
    mode: ShardWriteMode = ShardWriteMode.WRITE,
    known: Mapping[str, ShardCounts] | None = None,
) -> list[int]:
    """`write_shards` of `by_shard` (one SHARD_WRITE per node however many of its shards the batch touches, in
    `mode`); then the ranks of `scores`, counted behind each node's writes in the same round trip
    (docs/architecture.md read path; the nodes of `known` are asked again only where the call writes). Raises as
    `write_shards`."""
    ranks: list[int] = []

    async def then_count(calls: dict[str, list[ScriptCall]]) -> dict[str, list[object]]:
        nonlocal ranks
        ranks, _, answers = await rank_after(cluster, layout, scores, calls, known)
        return answers

    await write_shards(cluster, layout, by_shard, mode=mode, run_calls=then_count if scores else None)
    return ranks


def _distinct(entries: list[IndexEntry]) -> list[IndexEntry]:
    """One entry per member (a batch may meet the same member's intent more than once)."""
    return list({e.user_id: e for e in entries}.values())


def _contended(user_id: str) -> StaleMap:
    return StaleMap("?", f"user {user_id!r} kept meeting other writers' moves; retry")
