"""The read path of docs/architecture.md: ranks from shard sizes, pages and windows across shard boundaries.

Every read of a shard is fenced by its descriptor, so a router with an old map gets `StaleMap`
instead of a wrong answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from rankshard.shard_map import NodeUnavailable, NotFound, Shard

from . import _replies as replies
from ._client import NodeClient, ScriptCall
from ._keys import IndexEntry
from ._layout import BoardLayout, Cluster, CountCall, SeenSizes
from ._moves import apply_call, check_fence, fence_error, shard_call
from ._replies import ShardCounts, ShardPage, SizeChanges, Stale
from ._scripts import SHARD_COUNT, SHARD_PAGE, SHARD_TALLY, CountQuery

SIZE_WAIT = 0.5
"""Seconds a node is waited for when only its shard sizes are wanted and last-known sizes exist."""

SMALL_BATCH = 4
"""Calls per coalesced batch up to which a read or write spends a little node work to save a round trip (sizes read
in the index round, a top page read with the count). A round trip wakes a node; on a router under moderate load most
batches hold one call, and these save it a third of its wake-ups. Under heavy load batches grow and a round trip
fewer makes each batch shorter, so it carries fewer calls: measured at 64 calls in flight (batches of about 8), the
same paths cost 1.2-1.4x the node CPU per call, so bigger batches take the plain way."""


@dataclass(frozen=True, slots=True)
class Entry:
    user_id: str
    score: int
    rank: int


_QUERY_ARG = {kind: kind.value for kind in CountQuery}
"""Each query kind as the plain string it is sent as: hiredis packs an enum member (a str subclass) ~100 ns
slower, and a batch's ranks are one query per update."""


@dataclass(frozen=True, slots=True)
class _Query:
    kind: CountQuery
    shard_id: str
    arg: object


async def _count(
    cluster: Cluster, layout: BoardLayout, queries: Sequence[_Query] = ()
) -> tuple[dict[str, int], list[int]]:
    """Every shard's size, and the answers to `queries`, in one round trip per node."""
    sizes, results, _ = await count_after(cluster, layout, queries)
    return sizes, results


def sizes_call(cluster: Cluster, layout: BoardLayout, node_id: str) -> ScriptCall | None:
    """A SHARD_TALLY call asking node `node_id` only for its shards' sizes, to ride in a round trip the caller makes
    to that node anyway (the index round of a write or of a rank), so that the count round after it need not ask
    that node again (`count_after`'s `known`, see `sizes_answer`); None while this router has not seen the node's
    sizes under the layout (then only a full count can tell), and while the count may take them from the router's
    size cache (`Cluster.size_cache`)."""
    call = layout.count_calls.get(node_id)
    seen = cluster.seen_sizes.get((layout.board, node_id))
    if call is None or seen is None or seen.call is not call or cluster.cached_sizes(layout, node_id) is not None:
        return None  # (cached: the count takes the node's sizes from the cache, asking it nothing)
    return (SHARD_TALLY, (), [call.sizes_key, seen.token, seen.version, call.changes_key, call.stem])


def sizes_answer(cluster: Cluster, layout: BoardLayout, node_id: str, raw: object) -> ShardCounts | None:
    """The sizes of node `node_id`'s shards from the raw reply to its `sizes_call`, kept as seen; None when they
    cannot be told from it (the node's token moved on, or the seen sizes changed since the call was made)."""
    call = layout.count_calls[node_id]
    seen = cluster.seen_sizes.get((layout.board, node_id))
    tally = replies.shard_tally(node_id, raw, 0)
    if tally is None or seen is None or seen.call is not call:
        return None
    return _tallied(cluster, layout, node_id, seen, tally)


def _tallied(
    cluster: Cluster, layout: BoardLayout, node_id: str, seen: SeenSizes, tally: SizeChanges
) -> ShardCounts | None:
    """The node's counts from a SHARD_TALLY answer to a call made from `seen`, kept as seen; None when a shard of
    the call has no kept size."""
    sizes = _updated(seen.call, seen, tally)
    if sizes is None:
        return None
    _keep_seen(cluster, layout.board, node_id, SeenSizes(seen.call, seen.token, tally.version, sizes))
    return ShardCounts(sizes, tally.answers)


async def count_after(
    cluster: Cluster,
    layout: BoardLayout,
    queries: Sequence[_Query] = (),
    before: Mapping[str, Sequence[ScriptCall]] | None = None,
    known: Mapping[str, ShardCounts] | None = None,
) -> tuple[dict[str, int], list[int], dict[str, list[object]]]:
    """Like `_count`, with `before[node]` pipelined ahead of that node's count in the same round trip.

    A node's count is one SHARD_TALLY call (its kept sizes, one lookup per shard) while the node's sizes token is
    the one this router's last SHARD_COUNT there answered for the same layout, else one SHARD_COUNT (every
    descriptor checked, every shard counted; it answers the token): the first count of a layout on a node, and
    each after a descriptor change there, costs one more call. A node in `known` (its sizes read by the caller
    after the call began, in a round trip made anyway: `sizes_call`) is not asked again unless it has queries or
    calls in `before`; nor is a node whose sizes the router's size cache holds (`Cluster.cached_sizes`: off unless
    the router's `size_cache_ms` is set).

    Returns the sizes, the query answers and, per node of `before`, the answers of its calls (their
    fences are not checked here). A node that has calls in `before` or queries must answer.
    """
    before = before or {}
    have = dict(known or {})
    per_node: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        per_node.setdefault(layout.shards[q.shard_id].node, []).append(i)
    prefixes: dict[str, list[object]] = {}

    async def run(node: NodeClient, prefix: Sequence[ScriptCall] | None, count: ScriptCall) -> object:
        if not prefix:
            return await node.run(*count)
        answers = await node.run_many([*prefix, count])
        prefixes[node.id] = answers[:-1]
        return answers[-1]

    async def ask(node_id: str) -> ShardCounts:
        started = cluster.clock()
        counts = await count_on(node_id)
        key = (layout.board, node_id)
        cluster.sizes_asked[key] = max(started, cluster.sizes_asked.get(key, started))
        return counts

    async def count_on(node_id: str) -> ShardCounts:
        node = cluster.node(node_id)
        call = layout.count_calls[node_id]
        mine = per_node.get(node_id, ())
        prefix = before.get(node_id)
        seen = cluster.seen_sizes.get((layout.board, node_id))
        if seen is not None and seen.call is call:
            # The short way: only the sizes changed since those we saw, trusted while the node's token is the one
            # they were seen under (every descriptor change renews it), so the cost does not grow with the node's
            # shards.
            args = [call.sizes_key, seen.token, seen.version, call.changes_key, call.stem]
            for i in mine:
                q = queries[i]
                args += (_QUERY_ARG[q.kind], *call.tally_query[q.shard_id], q.arg)
            tally = replies.shard_tally(node.id, await run(node, prefix, (SHARD_TALLY, (), args)), len(mine))
            if tally is not None and (counts := _tallied(cluster, layout, node_id, seen, tally)) is not None:
                return counts
            prefix = None  # it ran: the full count below goes alone
        args = list(call.args)
        for i in mine:
            q = queries[i]
            args += (_QUERY_ARG[q.kind], call.position[q.shard_id], q.arg)
        reply = replies.shard_count(
            node.id, await run(node, prefix, (SHARD_COUNT, call.keys, args)), len(call.shards), len(mine)
        )
        if isinstance(reply, Stale):
            raise fence_error(node, layout, call.shards[reply.position - 1].id, reply)
        if reply.token is not None:
            _keep_seen(cluster, layout.board, node_id, SeenSizes(call, reply.token, reply.version, reply.sizes))
        return reply

    async def ask_sizes_only(node_id: str) -> ShardCounts:
        # Sizes alone may come from `last_sizes`, so a slow node is not waited for past SIZE_WAIT:
        # a frozen node must not hold up calls that need nothing else from it.
        return await asyncio.wait_for(ask(node_id), SIZE_WAIT)

    async def given(node_id: str) -> ShardCounts:
        return have[node_id]

    nodes = list(layout.by_node.items())
    needed = per_node.keys() | before.keys()
    if cluster.size_cache:
        have.update(_from_cache(cluster, layout, needed | have.keys()))
    answers = await asyncio.gather(
        *((ask if n in needed else given if n in have else ask_sizes_only)(n) for n, _ in nodes),
        return_exceptions=True,
    )
    sizes: dict[str, int] = {}
    results = [0] * len(queries)
    for (node_id, shards), answer in zip(nodes, answers, strict=True):
        if isinstance(answer, (NodeUnavailable, TimeoutError)) and node_id not in needed:
            # Only sizes were wanted from this node: while it is down nothing can change its shards,
            # so the sizes last seen are still right (as far as this router's own writes go; see
            # `Cluster.last_sizes`) and the rest of the cluster keeps serving.
            sizes.update(_last_sizes(cluster, layout, node_id, shards, answer))
            continue
        if isinstance(answer, BaseException):
            raise answer
        for s, card in zip(shards, answer.sizes, strict=True):
            sizes[s.id] = card
            cluster.last_sizes[(layout.board, layout.descriptors[s.id], s.id)] = card
        for i, value in zip(per_node.get(node_id, ()), answer.answers, strict=True):
            results[i] = value
    return sizes, results, prefixes


def _from_cache(cluster: Cluster, layout: BoardLayout, asked: Collection[str]) -> dict[str, ShardCounts]:
    """The counts of the board's nodes other than `asked` whose sizes the router's size cache holds."""
    cached = {}
    for node_id, shards in layout.by_node.items():
        if node_id not in asked and (sizes := cluster.cached_sizes(layout, node_id)) is not None:
            cached[node_id] = ShardCounts(tuple(sizes[s.id] for s in shards), ())
    return cached


def _updated(call: CountCall, seen: SeenSizes, tally: SizeChanges) -> tuple[int, ...] | None:
    """The sizes of `seen` with the changes of `tally` applied: the node's sizes at `tally.version`; None when a
    shard of the call has no kept size (then only a full count can tell)."""
    if not tally.changes:
        return seen.sizes
    sizes = list(seen.sizes)
    for shard_id, size in tally.changes:
        p = call.position.get(shard_id)
        if p is not None:
            if size < 0:
                return None
            sizes[p - 1] = size
    return tuple(sizes)


def _keep_seen(cluster: Cluster, board: str, node_id: str, seen: SeenSizes) -> None:
    """`seen` kept as what the router knows of the node's sizes, unless it knows newer ones for the same call:
    counts answered out of order must not take the sizes back."""
    old = cluster.seen_sizes.get((board, node_id))
    if old is None or old.call is not seen.call or old.token != seen.token or old.version < seen.version:
        cluster.seen_sizes[(board, node_id)] = seen


def _last_sizes(
    cluster: Cluster, layout: BoardLayout, node_id: str, shards: Sequence[Shard], error: NodeUnavailable | TimeoutError
) -> dict[str, int]:
    """The sizes last seen of `shards` (on `node_id`, which could not answer with `error`); raises
    `NodeUnavailable` when one was never seen."""
    known: dict[str, int] = {}
    for s in shards:
        size = cluster.last_sizes.get((layout.board, layout.descriptors[s.id], s.id))
        if size is None:
            if isinstance(error, TimeoutError):
                raise NodeUnavailable(node_id, f"did not report shard sizes within {SIZE_WAIT}s") from error
            raise error
        known[s.id] = size
    return known


def _better_sums(layout: BoardLayout, sizes: dict[str, int]) -> dict[str, int]:
    """For each shard, how many members all better shards hold together."""
    sums, running = {}, 0
    for s in layout.best_first:
        sums[s.id] = running
        running += sizes[s.id]
    return sums


async def shard_sizes(cluster: Cluster, layout: BoardLayout) -> dict[str, int]:
    sizes, _ = await _count(cluster, layout)
    return sizes


async def rank_of_scores(cluster: Cluster, layout: BoardLayout, scores: Sequence[int]) -> tuple[list[int], int]:
    """Competition ranks that `scores` have (or would have) on the board, and the board's size.

    Rank = 1 + members of every better shard + members of the score's shard with a strictly
    better score (docs/architecture.md read path).
    """
    ranks, total, _ = await rank_after(cluster, layout, scores)
    return ranks, total


async def rank_after(
    cluster: Cluster,
    layout: BoardLayout,
    scores: Sequence[int],
    before: Mapping[str, Sequence[ScriptCall]] | None = None,
    known: Mapping[str, ShardCounts] | None = None,
) -> tuple[list[int], int, dict[str, list[object]]]:
    """`rank_of_scores` counted right after `before` (see `count_after`, also for `known`), in the same round
    trip."""
    shards = [layout.map.shard_for(s).id for s in scores]
    kind = CountQuery.BETTER
    queries = [_Query(kind, sid, layout.stored(s)) for sid, s in zip(shards, scores, strict=True)]
    sizes, better, prefixes = await count_after(cluster, layout, queries, before, known)
    sums = _better_sums(layout, sizes)
    return [1 + sums[sid] + b for sid, b in zip(shards, better, strict=True)], sum(sizes.values()), prefixes


async def read_entry(cluster: Cluster, layout: BoardLayout, user_id: str) -> IndexEntry:
    """The member's index entry; raises `NotFound`."""
    node, key = cluster.index_of(layout, user_id)
    entry = IndexEntry.parse(user_id, await node.command("HGET", key, user_id))
    if entry is None:
        raise _not_found(layout, user_id)
    return entry


async def read_entries(
    cluster: Cluster, layout: BoardLayout, user_ids: Sequence[str]
) -> list[IndexEntry | NotFound | NodeUnavailable]:
    """Each member's index entry, in the order of `user_ids`, in one pipelined round trip per index node: `NotFound`
    for a member not on the board, the node's `NodeUnavailable` for each member whose index node could not answer
    (the others are answered)."""
    return (await _read_entries(cluster, layout, user_ids, with_sizes=False))[0]


async def rank_members(
    cluster: Cluster, layout: BoardLayout, user_ids: Sequence[str]
) -> list[tuple[Entry, int] | NotFound | NodeUnavailable]:
    """GetRank for each of `user_ids` (calls answered together): the member's entry and the board's size, or that
    member's error alone (`read_entries`). Two rounds: the index entries, with the sizes of the index nodes' shards
    riding along (`sizes_call`), then the count, which asks again only the nodes holding a member's shard and
    those not asked yet. Raises `StaleMap`, `ShardFrozen` and the `NodeUnavailable` of a node the count needed."""
    found, known = await _read_entries(cluster, layout, user_ids, with_sizes=len(user_ids) <= SMALL_BATCH)
    entries = [e for e in found if isinstance(e, IndexEntry)]
    try:
        ranks, total, _ = await rank_after(cluster, layout, [e.score for e in entries], known=known)
    except NodeUnavailable:
        if len(entries) <= 1:
            raise
        return await _one_by_one(user_ids, lambda u: rank_members(cluster, layout, [u]))
    rank_of = iter(ranks)
    return [(Entry(e.user_id, e.score, next(rank_of)), total) if isinstance(e, IndexEntry) else e for e in found]


async def windows_around(
    cluster: Cluster, layout: BoardLayout, user_ids: Sequence[str], radius: int
) -> list[tuple[list[Entry], int] | NotFound | NodeUnavailable]:
    """GetAround for each of `user_ids` (calls answered together): up to `radius` members either side of the
    member, best first, and the board's size, or that member's error alone. One round for the index entries (with
    the index nodes' sizes), one count with every member's position, one read of every window's pages. Raises
    `StaleMap` and `ShardFrozen`."""
    found, known = await _read_entries(cluster, layout, user_ids, with_sizes=len(user_ids) <= SMALL_BATCH)
    members = [(i, e) for i, e in enumerate(found) if isinstance(e, IndexEntry)]
    queries = [_Query(CountQuery.POSITION, layout.home_of(e), e.user_id) for _, e in members]
    try:
        sizes, positions, _ = await count_after(cluster, layout, queries, known=known)
        out: list[tuple[list[Entry], int] | NotFound | NodeUnavailable | None] = [
            None if isinstance(e, IndexEntry) else e for e in found
        ]
        sums, total = _better_sums(layout, sizes), sum(sizes.values())
        pages: list[_Page] = []
        spans: list[tuple[int, int, int]] = []  # member, its first page in `pages`, its number of pages
        for (i, _), q, position in zip(members, queries, positions, strict=True):
            if position < 0:
                continue  # not in its shard (a crashed writer's): healed the single-call way below
            at = sums[q.shard_id] + position
            start = max(0, at - radius)
            window = _pages(layout, sizes, start, min(total, at + radius + 1) - start)
            spans.append((i, len(pages), len(window)))
            pages += window
        read = await _read_pages(cluster, layout, pages) if pages else []
    except NodeUnavailable:
        if len(members) <= 1:
            raise
        return await _one_by_one(user_ids, lambda u: windows_around(cluster, layout, [u], radius))
    for i, first, n in spans:
        out[i] = (_entries(layout, sizes, pages[first : first + n], read[first : first + n]), total)
    for i, answer in enumerate(out):
        if answer is None:
            try:
                out[i] = await get_around(cluster, layout, user_ids[i], radius)
            except (NotFound, NodeUnavailable) as exc:
                out[i] = exc
    return cast("list[tuple[list[Entry], int] | NotFound | NodeUnavailable]", out)


A = TypeVar("A")


async def _one_by_one(
    user_ids: Sequence[str], read: Callable[[str], Awaitable[list[A | NotFound | NodeUnavailable]]]
) -> list[A | NotFound | NodeUnavailable]:
    """`read` for each member alone, together: when a node a batch needed could not answer, only the members that
    need it fail (a failure of one node degrades only what lives on it)."""

    async def one(user: str) -> A | NotFound | NodeUnavailable:
        try:
            return (await read(user))[0]
        except NodeUnavailable as exc:
            return exc

    return list(await asyncio.gather(*(one(u) for u in user_ids)))


async def _read_entries(
    cluster: Cluster, layout: BoardLayout, user_ids: Sequence[str], *, with_sizes: bool
) -> tuple[list[IndexEntry | NotFound | NodeUnavailable], dict[str, ShardCounts]]:
    """`read_entries`, and `with_sizes` the sizes of each index node's shards read in the same round trip (where
    this router can ask for them: `sizes_call`)."""
    groups: dict[str, tuple[NodeClient, list[int], list[tuple[str, str, str]]]] = {}
    for i, user in enumerate(user_ids):
        node, key = cluster.index_of(layout, user)
        group = groups.get(node.id)
        if group is None:
            group = groups[node.id] = (node, [], [])
        group[1].append(i)
        group[2].append(("HGET", key, user))
    known: dict[str, ShardCounts] = {}

    async def read(node: NodeClient, reads: list[tuple[str, str, str]]) -> list[Any]:
        call = sizes_call(cluster, layout, node.id) if with_sizes else None
        if call is None:
            return await node.commands(reads)
        raws, (sized,) = await node.commands_then_run(reads, [call])
        if (counts := sizes_answer(cluster, layout, node.id, sized)) is not None:
            known[node.id] = counts
        return raws

    found = list(groups.values())
    answers = await asyncio.gather(*(read(node, reads) for node, _, reads in found), return_exceptions=True)
    out: dict[int, IndexEntry | NotFound | NodeUnavailable] = {}
    for (_, positions, _), raws in zip(found, answers, strict=True):
        if isinstance(raws, NodeUnavailable):
            out.update(dict.fromkeys(positions, raws))
        elif isinstance(raws, BaseException):
            raise raws
        else:
            for i, raw in zip(positions, raws, strict=True):
                entry = IndexEntry.parse(user_ids[i], raw)
                out[i] = entry if entry is not None else _not_found(layout, user_ids[i])
    return [out[i] for i in range(len(user_ids))], known


def _not_found(layout: BoardLayout, user_id: str) -> NotFound:
    return NotFound(f"user {user_id!r} is not on leaderboard {layout.board!r}")


async def get_rank(cluster: Cluster, layout: BoardLayout, user_id: str) -> tuple[Entry, int]:
    """The member's entry and the board's size; raises `NotFound`."""
    entry = await read_entry(cluster, layout, user_id)
    ranks, total = await rank_of_scores(cluster, layout, [entry.score])
    return Entry(user_id, entry.score, ranks[0]), total


async def get_ranks(cluster: Cluster, layout: BoardLayout, user_ids: Sequence[str]) -> list[Entry]:
    """Entries of the known members among `user_ids`, best first."""
    by_node: dict[str, tuple[NodeClient, list[str], list[str]]] = {}
    for user in dict.fromkeys(user_ids):
        node, key = cluster.index_of(layout, user)
        _, users, keys = by_node.setdefault(node.id, (node, [], []))
        users.append(user)
        keys.append(key)
    answers = await asyncio.gather(
        *(
            node.commands([("HGET", k, u) for k, u in zip(keys, users, strict=True)])
            for node, users, keys in by_node.values()
        )
    )
    found = []
    for (_, users, _), raws in zip(by_node.values(), answers, strict=True):
        found += [e for e in (IndexEntry.parse(u, r) for u, r in zip(users, raws, strict=True)) if e]
    ranks, _ = await rank_of_scores(cluster, layout, [e.score for e in found])
    entries = [Entry(e.user_id, e.score, r) for e, r in zip(found, ranks, strict=True)]
    return sorted(entries, key=lambda e: (e.rank, e.user_id.encode()))


async def get_top(
    cluster: Cluster, layout: BoardLayout, offset: int, limit: int, *, calls: int = 1
) -> tuple[list[Entry], int]:
    """Positions offset..offset+limit-1 across all shards, best first, and the board's size.

    For a read answering at most SMALL_BATCH `calls`, one round trip per node when the sizes this router saw last
    put the page where the fresh count puts it (the usual case: a leaderboard's top lies deep inside its best
    shard): the page is read in the count's round trip, and kept only if the count agrees. Otherwise, or when a
    node the guess needed could not answer, the page is read after the count, as the fresh sizes place it.
    """
    guess = _known_pages(cluster, layout, offset, limit) if calls <= SMALL_BATCH else None
    if guess:
        try:
            sizes, _, answers = await count_after(cluster, layout, before=_page_calls(layout, guess))
        except NodeUnavailable:
            pass  # the guess may have asked a node the page does not need: the plain way below needs fewer
        else:
            if _pages(layout, sizes, offset, limit) == guess:
                results = _page_replies(cluster, layout, guess, answers)
                return _entries(layout, sizes, guess, results), sum(sizes.values())
            return await _read_range(cluster, layout, sizes, offset, limit), sum(sizes.values())
    sizes, _ = await _count(cluster, layout)
    return await _read_range(cluster, layout, sizes, offset, limit), sum(sizes.values())


def _known_pages(cluster: Cluster, layout: BoardLayout, offset: int, limit: int) -> list[_Page] | None:
    """Where the last sizes this router saw of every shard put positions offset..offset+limit-1; None when one
    was never seen under its current descriptor."""
    known: dict[str, int] = {}
    for s in layout.best_first:
        size = cluster.last_sizes.get((layout.board, layout.descriptors[s.id], s.id))
        if size is None:
            return None
        known[s.id] = size
    return _pages(layout, known, offset, limit)


async def get_around(cluster: Cluster, layout: BoardLayout, user_id: str, radius: int) -> tuple[list[Entry], int]:
    """Up to `radius` members either side of the member, best first; raises `NotFound`. The index node's sizes
    ride in the index round (see `rank_members`)."""
    (entry,), known = await _read_entries(cluster, layout, [user_id], with_sizes=True)
    if not isinstance(entry, IndexEntry):
        raise entry
    home = layout.home_of(entry)
    for _ in range(2):
        query = _Query(CountQuery.POSITION, home, user_id)
        sizes, (position,), _ = await count_after(cluster, layout, [query], known=known)
        if position >= 0:
            break
        # The index committed but the shard write never happened (a crashed writer): heal it.
        args = [user_id, layout.stored(entry.score), entry.version]
        await shard_call(cluster, layout, home, apply_call(layout, home, args))
    else:
        raise NotFound(f"user {user_id!r} is not in its shard {home} of {layout.board!r}")
    at = _better_sums(layout, sizes)[home] + position
    start = max(0, at - radius)
    total = sum(sizes.values())
    entries = await _read_range(cluster, layout, sizes, start, min(total, at + radius + 1) - start)
    return entries, total


_Page = tuple[str, int, int, int]
"""A page of one shard: its id, the first and last local positions, and the global position of the first."""


def _pages(layout: BoardLayout, sizes: Mapping[str, int], start: int, count: int) -> list[_Page]:
    """The shard pages holding global positions start..start+count-1 under `sizes`, best first."""
    pages: list[_Page] = []
    seen = 0
    for s in layout.best_first:
        size = sizes[s.id]
        if count > 0 and start < seen + size and seen < start + count:
            first = max(0, start - seen)
            last = min(size, start + count - seen) - 1
            pages.append((s.id, first, last, seen + first))
        seen += size
    return pages


async def _read_range(
    cluster: Cluster, layout: BoardLayout, sizes: dict[str, int], start: int, count: int
) -> list[Entry]:
    """Entries at global positions start..start+count-1, walking the shards best-first."""
    pages = _pages(layout, sizes, start, count)
    if not pages:
        return []
    return _entries(layout, sizes, pages, await _read_pages(cluster, layout, pages))


def _entries(
    layout: BoardLayout, sizes: Mapping[str, int], pages: Sequence[_Page], results: Sequence[ShardPage]
) -> list[Entry]:
    """The entries of `pages` (read as `results`), ranked under `sizes`."""
    sums = _better_sums(layout, dict(sizes))
    entries: list[Entry] = []
    seen_users: set[str] = set()
    for (shard_id, _, _, position), page in zip(pages, results, strict=True):
        for j, (user, stored) in enumerate(page.rows):
            if user in seen_users:
                continue  # caught mid-move in two shards: list it once
            seen_users.add(user)
            score = layout.unstored(stored)
            if not entries:
                rank = 1 + sums[shard_id] + page.better
            elif score == entries[-1].score:
                rank = entries[-1].rank
            else:
                rank = position + j + 1
            entries.append(Entry(user, score, rank))
    return entries


def _page_call(layout: BoardLayout, page: _Page) -> ScriptCall:
    shard_id, first, last, _ = page
    return (
        SHARD_PAGE,
        layout.fenced_keys[shard_id],
        [layout.read_fences[shard_id], first, last, *layout.stored_ranges[shard_id]],
    )


def _page_calls(layout: BoardLayout, pages: Sequence[_Page]) -> dict[str, list[ScriptCall]]:
    """The SHARD_PAGE calls of `pages`, per node, in the order of `pages`."""
    calls: dict[str, list[ScriptCall]] = {}
    for page in pages:
        calls.setdefault(layout.shards[page[0]].node, []).append(_page_call(layout, page))
    return calls


def _page_replies(
    cluster: Cluster, layout: BoardLayout, pages: Sequence[_Page], answers: Mapping[str, Sequence[object]]
) -> list[ShardPage]:
    """The pages of `pages` from their nodes' raw `answers` (as `_page_calls` sent them), fences checked."""
    taken: dict[str, int] = {}
    out: list[ShardPage] = []
    for page in pages:
        node_id = layout.shards[page[0]].node
        i = taken.get(node_id, 0)
        taken[node_id] = i + 1
        node = cluster.node(node_id)
        out.append(check_fence(node, layout, page[0], replies.shard_page(node.id, answers[node_id][i])))
    return out


async def _read_pages(cluster: Cluster, layout: BoardLayout, pages: list[_Page]) -> list[ShardPage]:
    """The pages of `pages`, in order: one pipelined round trip per node."""
    calls = _page_calls(layout, pages)
    node_ids = list(calls)
    answers = await asyncio.gather(*(cluster.node(n).run_many(calls[n]) for n in node_ids))
    return _page_replies(cluster, layout, pages, dict(zip(node_ids, answers, strict=True)))
