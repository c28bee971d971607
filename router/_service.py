"""`rankshard.v1.Leaderboard`: validation, then the data path of shard_node, under the call's deadline."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, cast

import grpc

from rankshard.shard_map import ShardFrozen, StaleMap
from rankshard.shard_node import (
    BoardLayout,
    Entry,
    RemoveCall,
    StepHook,
    Update,
    UpdateCall,
    UpdateOutcome,
    get_ranks,
    get_top,
    rank_members,
    windows_around,
)
from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from . import _validate as validate
from ._catalog import Catalog
from ._coalesce import Coalescer
from ._metrics import RouterMetrics
from ._status import handler

T = TypeVar("T")

_RETRY_DELAYS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05)
"""Seconds between attempts of a call that met a map change (then 0.05 s until its deadline): a job's freeze
lasts under 2 s and the moment between its commit and its new shards' activation a few ms."""


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
        self._windows: Coalescer[tuple[str, int], str, tuple[list[Entry], int]] = Coalescer(
            self._window_batch, on_batch=sizes("window")
        )

    async def aclose(self) -> None:
        """Waits for the coalesced batches under way."""
        for coalescer in (self._updates, self._ranks, self._pages, self._windows):
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
        layout = await self.catalog.layout(board)
        call = UpdateCall(self.cluster, layout, updates, on_step=self.on_step)
        # Without `each` a refusal raises: every outcome is an UpdateOutcome.
        outcomes = cast("list[UpdateOutcome]", await self._write(board, layout, call.run))
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
        entries, total = await self._windows.submit((board, radius), user)
        return pb.GetAroundResponse(entries=[_entry(e) for e in entries], total=total)

    @handler
    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveMemberResponse:
        board, user = validate.member(request)
        layout = await self.catalog.layout(board)
        removed = await self._write(board, layout, RemoveCall(self.cluster, user, self.on_step).run)
        return pb.RemoveMemberResponse(removed=removed)

    async def _update_batch(self, board: str, updates: list[Update]) -> Sequence[UpdateOutcome | BaseException]:
        """Concurrent UpdateScore calls of one board, applied together; each call still stands alone:
        one refused (its request id reused with another score) fails only itself."""
        layout = await self.catalog.layout(board)
        call = UpdateCall(self.cluster, layout, updates, each=True, on_step=self.on_step)
        return await self._write(board, layout, call.run)

    async def _rank_batch(self, board: str, users: list[str]) -> Sequence[tuple[Entry, int] | BaseException]:
        """Concurrent GetRank calls of one board: index entries read together, ranks in one count round."""
        return await self._read(board, lambda lay: rank_members(self.cluster, lay, users))

    async def _window_batch(
        self, key: tuple[str, int], users: list[str]
    ) -> Sequence[tuple[list[Entry], int] | BaseException]:
        """Concurrent GetAround calls of one board and radius: entries, positions and windows read together."""
        board, radius = key
        return await self._read(board, lambda lay: windows_around(self.cluster, lay, users, radius))

    async def _page_once(self, key: tuple[str, int, int], waiting: list[None]) -> list[tuple[list[Entry], int]]:
        """Identical GetTop calls in flight together share one read (it starts after all of them did)."""
        board, offset, limit = key
        page = await self._read(board, lambda lay: get_top(self.cluster, lay, offset, limit, calls=len(waiting)))
        return [page] * len(waiting)

    async def _read(self, board: str, read: Callable[[BoardLayout], Awaitable[T]]) -> T:
        """Runs an idempotent read, again under a reloaded map while a node says the map changed (see `_retried`)."""
        return await self._retried(board, await self.catalog.layout(board), read)

    async def _write(self, board: str, layout: BoardLayout, run: Callable[[BoardLayout], Awaitable[T]]) -> T:
        """Runs a write call (`UpdateCall.run`, `RemoveCall.run`), again under a reloaded map while a node says the
        map changed: the call goes on from where it stood, so nothing is applied twice (docs/architecture.md write
        path step 5). The client sees an error only when its deadline passes."""
        return await self._retried(board, layout, run)

    async def _retried(self, board: str, layout: BoardLayout, attempt: Callable[[BoardLayout], Awaitable[T]]) -> T:
        """`attempt(layout)`, retried while the map is changing under it: after `ShardFrozen` (a job's last
        moments) with the cached layout, after `StaleMap` with a reloaded one. A stale answer that a reload does not
        explain (the same epoch, and the node not in a job's passage) is raised: retrying would not help."""
        for tries in itertools.count():
            try:
                return await attempt(layout)
            except ShardFrozen:
                layout = self.catalog.cached(board) or layout
            except StaleMap as exc:
                reloaded = await self.catalog.reload_stale(board)
                if reloaded.map.epoch == layout.map.epoch and not exc.passing:
                    raise
                layout = reloaded
            await asyncio.sleep(_RETRY_DELAYS[min(tries, len(_RETRY_DELAYS) - 1)])
        raise AssertionError("unreachable")


def _entry(e: Entry) -> pb.Entry:
    return pb.Entry(user_id=e.user_id, score=e.score, rank=e.rank)
