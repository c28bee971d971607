"""The router's sweeper task: finishes moves that crashed writers abandoned (docs/architecture.md failure model), and
collects tombstones nothing needs any more (a step per board and round: `shard_node.collect_tombstones`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from rankshard.shard_map import RankshardError
from rankshard.shard_node import BoardLayout, collect_tombstones, count_pending_marks, finish_abandoned, sweep_board

from ._catalog import Catalog
from ._metrics import RouterMetrics

log = logging.getLogger("rankshard.sweeper")

_BOARD_LIST_EVERY = 15
"""Sweeps between lookups of the full board list, so boards this router never served are swept too."""


async def sweep_forever(
    catalog: Catalog, interval: float, min_age_ms: int, metrics: RouterMetrics | None = None
) -> None:
    """Runs until cancelled: a round every `interval` seconds finishes what is `min_age_ms` old. A board that
    fails (a node or the control plane down) is logged and retried on the next round. With `metrics`, it counts
    what it finished and, each round, the pending-write marks of each board it swept.

    Anything else it raises is a bug: its owner (`BackgroundTasks`) logs it and starts it again after a backoff,
    rather than stopping the router, since every write keeps working without the sweeper (each finishes the
    abandoned move of its member first) and one bad round must not end the serving of every call.
    """
    rounds = 0
    while True:
        await asyncio.sleep(interval)
        every_board = rounds % _BOARD_LIST_EVERY == 0
        layouts = await catalog.every_layout() if every_board else catalog.cached_layouts()
        rounds += 1
        await _finish_jobs(catalog)
        marks: dict[str, int] = {}
        for layout in layouts:
            try:
                await _sweep(catalog, layout, min_age_ms, metrics)
                if metrics is not None:
                    marks[layout.board] = await count_pending_marks(catalog.cluster, layout)
            except RankshardError as exc:
                log.warning("sweep of %r failed: %s", layout.board, exc)
        if metrics is not None:
            metrics.pending_marks(marks, [layout.board for layout in layouts] if every_board else None)


async def _sweep(catalog: Catalog, layout: BoardLayout, min_age_ms: int, metrics: RouterMetrics | None) -> None:
    """One board's round: abandoned writes and moves finished, then a step of tombstone collection."""
    finished = await sweep_board(catalog.cluster, layout, min_age_ms=min_age_ms)
    if finished:
        log.warning("sweeper finished %d abandoned write(s) or move(s) on %r", finished, layout.board)
        if metrics is not None:
            metrics.sweeper_finished(finished)
    await collect_tombstones(catalog.cluster, layout)


async def _finish_jobs(catalog: Catalog) -> None:
    """Rebalancing jobs whose runner died past their commit are finished here: until then their shards refuse
    writes (docs/architecture.md, rebalancing: ACTIVATE rolls forward)."""
    owner = f"router {socket.gethostname()} pid {os.getpid()}"
    try:
        for job in await finish_abandoned(catalog.control_plane, catalog.cluster, owner):
            log.warning("sweeper finished %s, abandoned after its commit", job.describe())
    except RankshardError as exc:
        log.warning("could not look for abandoned jobs: %s", exc)
