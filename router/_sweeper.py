"""The router's sweeper task: finishes moves that crashed writers abandoned (docs/architecture.md failure model), and
collects tombstones nothing needs any more (a step per board and round: `shard_node.collect_tombstones`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from rankshard.shard_map import RankshardError
from rankshard.shard_node import collect_tombstones, finish_abandoned, sweep_board

from ._catalog import Catalog

log = logging.getLogger("rankshard.sweeper")

_BOARD_LIST_EVERY = 15
"""Sweeps between lookups of the full board list, so boards this router never served are swept too."""


async def sweep_forever(catalog: Catalog, interval: float, min_age_ms: int) -> None:
    """Runs until cancelled: a round every `interval` seconds finishes what is `min_age_ms` old. A board that
    fails (a node or the control plane down) is logged and retried on the next round.

    Anything else it raises is a bug: its owner (`BackgroundTasks`) logs it and starts it again after a backoff,
    rather than stopping the router, since every write keeps working without the sweeper (each finishes the
    abandoned move of its member first) and one bad round must not end the serving of every call.
    """
    rounds = 0
    while True:
        await asyncio.sleep(interval)
        layouts = await catalog.every_layout() if rounds % _BOARD_LIST_EVERY == 0 else catalog.cached_layouts()
        rounds += 1
        await _finish_jobs(catalog)
        for layout in layouts:
            try:
                finished = await sweep_board(catalog.cluster, layout, min_age_ms=min_age_ms)
                await collect_tombstones(catalog.cluster, layout)
            except RankshardError as exc:
                log.warning("sweep of %r failed: %s", layout.board, exc)
                continue
            if finished:
                log.warning("sweeper finished %d abandoned write(s) or move(s) on %r", finished, layout.board)


async def _finish_jobs(catalog: Catalog) -> None:
    """Rebalancing jobs whose runner died past their commit are finished here: until then their shards refuse
    writes (docs/architecture.md, rebalancing: ACTIVATE rolls forward)."""
    owner = f"router {socket.gethostname()} pid {os.getpid()}"
    try:
        for job in await finish_abandoned(catalog.control_plane, catalog.cluster, owner):
            log.warning("sweeper finished %s, abandoned after its commit", job.describe())
    except RankshardError as exc:
        log.warning("could not look for abandoned jobs: %s", exc)
