"""`rankshard.v1.Leaderboard`: validation, then the data path of shard_node, under the call's deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from rankshard.shard_map import StaleMap
from rankshard.shard_node import (
    BoardLayout,
    Entry,
    StepHook,
    Update,
    UpdateOutcome,
    apply_each,
    apply_updates,
    get_around,
    get_ranks,
    get_top,
    rank_of_scores,
    read_entry,
    remove_member,
)
from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from . import _validate as validate
from ._catalog import Catalog
from ._coalesce import Coalescer
from ._metrics import RouterMetrics
from ._status import handler

T = TypeVar("T")
_READ_ATTEMPTS = 3


class LeaderboardService(pb_grpc.LeaderboardServicer):
    def __init__(
        self,
        catalog: Catalog,
        call_deadline: float,
        on_step: StepHook | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.catalog = catalog
        self.call_deadline = call_deadline
        self.metrics = metrics
        self.cluster = catalog.cluster
        self.on_step = on_step
        """Test-only hook into the boundary-crossing protocol (see shard_node.MOVE_STEPS)."""
        # Keyed by board alone: a batch commits with one script call per index node, in parallel, and
        # bigger batches are what a loaded router core gains most from (measured: 3 calls per batch when
        # keyed by index node too, 20 by board alone, at 1.5x the calls per core).
        sizes = (lambda kind: None) if metrics is None else metrics.batch_observer
        self._updates: Coalescer[str, Update, UpdateOutcome] = Coalescer(self._update_batch, on_batch=sizes("update"))
        self._ranks: Coalescer[str, str, tuple[Entry, int]] = Coalescer(self._rank_batch, on_batch=sizes("rank"))
        self._pages: Coalescer[tuple[str, int, int], None, tuple[list[Entry], int]] = Coalescer(
            self._page_once, on_batch=sizes("page")
        )

    async def aclose(self) -> None:
        """Waits for the coalesced batches under way."""
        for coalescer in (self._updates, self._ranks, self._pages):
            await coalescer.aclose()

    @handler
    async def UpdateScore(
        self, request: pb.UpdateScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateScoreResponse:
        board, update = validate.update(request)
        outcome = await self._updates.submit(board, update)
        return pb.UpdateScoreResponse(score=outcome.score, rank=outcome.rank, applied=outcome.applied)

    @handler
    async def BatchUpdateScores(
        self, request: pb.BatchUpdateScoresRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchUpdateScoresResponse:
        board, updates = validate.batch(request)
        outcomes = await self._write(board, lambda lay: apply_updates(self.cluster, lay, updates, self.on_step))
        return pb.BatchUpdateScoresResponse(
            results=[pb.UpdateResult(score=o.score, rank=o.rank, applied=o.applied) for o in outcomes]
        )

    @handler
    async def GetRank(self, request: pb.GetRankRequest, context: grpc.aio.ServicerContext) -> pb.GetRankResponse:
        board, user = validate.member(request)
        entry, total = await self._ranks.submit(board, user)
        percentile = 100.0 * (total - entry.rank) / total if total else 0.0
        return pb.GetRankResponse(entry=_entry(entry), total=total, percentile=percentile)

    @handler
    async def GetRanks(self, request: pb.GetRanksRequest, context: grpc.aio.ServicerContext) -> pb.GetRanksResponse:
        board, users = validate.members(request)
        entries = await self._read(board, lambda lay: get_ranks(self.cluster, lay, users))
        return pb.GetRanksResponse(entries=[_entry(e) for e in entries])

    @handler
    async def GetTop(self, request: pb.GetTopRequest, context: grpc.aio.ServicerContext) -> pb.GetTopResponse:
        board, offset, limit = validate.page(request)
        entries, total = await self._pages.submit((board, offset, limit), None)
        return pb.GetTopResponse(entries=[_entry(e) for e in entries], total=total)

    @handler
    async def GetAround(self, request: pb.GetAroundRequest, context: grpc.aio.ServicerContext) -> pb.GetAroundResponse:
        board, user = validate.member(request)
        radius = validate.radius(request)
        entries, total = await self._read(board, lambda lay: get_around(self.cluster, lay, user, radius))
        return pb.GetAroundResponse(entries=[_entry(e) for e in entries], total=total)

    @handler
    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveMemberResponse:
        board, user = validate.member(request)
        removed = await self._write(board, lambda lay: remove_member(self.cluster, lay, user, self.on_step))
        return pb.RemoveMemberResponse(removed=removed)

    async def _update_batch(self, board: str, updates: list[Update]) -> Sequence[UpdateOutcome | BaseException]:
        """Concurrent UpdateScore calls of one board, applied together; each call still stands alone:
        one refused (its request id reused with another score) fails only itself."""
        return await self._write(board, lambda lay: apply_each(self.cluster, lay, updates, self.on_step))

    async def _rank_batch(self, board: str, users: list[str]) -> list[tuple[Entry, int] | BaseException]:
        """Concurrent GetRank calls of one board: index entries read together, ranks in one count round."""
        found = await self._read(
            board,
            lambda lay: asyncio.gather(*(read_entry(self.cluster, lay, u) for u in users), return_exceptions=True),
        )
        known = [e for e in found if not isinstance(e, BaseException)]
        ranks, total = await self._read(board, lambda lay: rank_of_scores(self.cluster, lay, [e.score for e in known]))
        rank_of = iter(ranks)
        return [e if isinstance(e, BaseException) else (Entry(e.user_id, e.score, next(rank_of)), total) for e in found]

    async def _page_once(self, key: tuple[str, int, int], waiting: list[None]) -> list[tuple[list[Entry], int]]:
        """Identical GetTop calls in flight together share one read (it starts after all of them did)."""
        board, offset, limit = key
        page = await self._read(board, lambda lay: get_top(self.cluster, lay, offset, limit))
        return [page] * len(waiting)

    async def _read(self, board: str, read: Callable[[BoardLayout], Awaitable[T]]) -> T:
        """Runs an idempotent read, reloading the map and retrying when a node says it is stale."""
        layout = await self.catalog.layout(board)
        for attempt in range(_READ_ATTEMPTS):
            try:
                return await read(layout)
            except StaleMap:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
                layout = await self.catalog.reload_stale(board)
        raise AssertionError("unreachable")

    async def _write(self, board: str, write: Callable[[BoardLayout], Awaitable[T]]) -> T:
        """Runs a write. A stale map after the index commit is not retried here (that could apply
        an update twice): the map is reloaded and the client retries with its request id."""
        layout = await self.catalog.layout(board)
        try:
            return await write(layout)
        except StaleMap:
            await self.catalog.reload_stale(board)
            raise


def _entry(e: Entry) -> pb.Entry:
    return pb.Entry(user_id=e.user_id, score=e.score, rank=e.rank)
