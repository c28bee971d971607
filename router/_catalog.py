"""The router's cached view of the control plane: board layouts by name, refreshed by epoch.

PostgreSQL is never on the request path once a board is cached: layouts change only when a
NOTIFY announces a newer epoch or a node answers STALE (docs/architecture.md, control plane).
"""

from __future__ import annotations

import asyncio
import logging
import time

from rankshard.shard_map import ControlPlane, NotFound, RankshardError
from rankshard.shard_node import BoardLayout, Cluster, NodeClient

from ._metrics import RouterMetrics

log = logging.getLogger("rankshard.router")

_UNKNOWN_TTL = 2.0
"""Seconds an unknown board name is remembered, so a flood of bad names does not reach PostgreSQL."""


class Catalog:
    def __init__(
        self, control_plane: ControlPlane, cluster: Cluster, node_timeout: float, metrics: RouterMetrics | None = None
    ) -> None:
        """`metrics`, when given, counts STALE reloads and observes every node client, the cluster's and those
        added later."""
        self.control_plane = control_plane
        self.cluster = cluster
        self.metrics = metrics
        self._node_timeout = node_timeout
        if metrics is not None:
            for client in cluster.nodes.values():
                client.observer = metrics
        self._layouts: dict[str, BoardLayout] = {}
        self._loading: dict[str, asyncio.Future[BoardLayout]] = {}
        self._unknown: dict[str, float] = {}

    async def layout(self, board: str) -> BoardLayout:
        """The cached layout of `board`; raises `NotFound`, `ControlPlaneError` (first load only)."""
        layout = self._layouts.get(board)
        if layout is not None:
            return layout
        if self._unknown.get(board, 0.0) > time.monotonic():
            raise NotFound(f"leaderboard {board!r} not found")
        return await self.refresh(board)

    def cached(self, board: str) -> BoardLayout | None:
        """The layout of `board` as cached now (kept current by `follow_epochs`), without loading it."""
        return self._layouts.get(board)

    def adopt(self, layout: BoardLayout) -> None:
        """Caches a layout this router just made (a new board), so its next call finds it at once."""
        current = self._layouts.get(layout.board)
        if current is None or current.map.epoch <= layout.map.epoch:
            self._layouts[layout.board] = layout
        self._unknown.pop(layout.board, None)

    def forget(self, board: str) -> None:
        """Drops everything cached about `board` (deleted, or not serving): its next call asks the control
        plane. Sizes remembered for its shards go too, so a board created again under the name starts empty."""
        self._layouts.pop(board, None)
        for key in [k for k in self.cluster.last_sizes if k[0] == board]:
            del self.cluster.last_sizes[key]
        for seen in [k for k in self.cluster.seen_sizes if k[0] == board]:
            del self.cluster.seen_sizes[seen]

    async def refresh(self, board: str) -> BoardLayout:
        """Reloads `board` from the control plane; concurrent callers share one load."""
        pending = self._loading.get(board)
        if pending is None:
            pending = asyncio.ensure_future(self._load(board))
            self._loading[board] = pending
            pending.add_done_callback(lambda done: self._loaded(board, done))
        # Shielded: callers whose deadline passes leave, the load goes on for the others.
        return await asyncio.shield(pending)

    async def reload_stale(self, board: str) -> BoardLayout:
        """`refresh` after a node answered STALE to a call on the cached layout of `board`."""
        if self.metrics is not None:
            self.metrics.stale_reload(board)
        return await self.refresh(board)

    def _loaded(self, board: str, done: asyncio.Future[BoardLayout]) -> None:
        self._loading.pop(board, None)
        if not done.cancelled():
            # Retrieved here, so a load that every caller gave up on is not logged as an exception nobody saw.
            done.exception()

    async def _load(self, board: str) -> BoardLayout:
        try:
            config = await self.control_plane.get_board(board)
            shard_map = await self.control_plane.shard_map(board)
        except NotFound:
            self.forget(board)
            self._unknown[board] = time.monotonic() + _UNKNOWN_TTL
            raise
        missing = {s.node for s in shard_map.shards} - set(self.cluster.nodes)
        if missing:
            await self._add_nodes(missing)
        self.adopt(BoardLayout(config, shard_map))
        return self._layouts[board]

    async def _add_nodes(self, node_ids: set[str]) -> None:
        for node in await self.control_plane.list_nodes():
            if node.id in node_ids and node.id not in self.cluster.nodes:
                self.cluster.nodes[node.id] = NodeClient(
                    node.id, node.address, timeout=self._node_timeout, observer=self.metrics
                )

    async def every_layout(self) -> list[BoardLayout]:
        """Layouts of every board the control plane knows (the cached ones when it is unreachable)."""
        try:
            names = [c.name for c in await self.control_plane.list_boards()]
        except RankshardError:
            return list(self._layouts.values())
        layouts = []
        for name in names:
            try:
                layouts.append(await self.layout(name))
            except RankshardError:
                continue
        return layouts

    def cached_layouts(self) -> list[BoardLayout]:
        return list(self._layouts.values())

    async def follow_epochs(self) -> None:
        """Runs until cancelled: reloads a cached board whenever the control plane announces a newer epoch.

        A lost connection is not a crash (`ControlPlane.epoch_changes` reconnects). Anything it raises is a bug:
        its owner (`BackgroundTasks`) logs it and starts it again after a backoff, rather than stopping the
        router. Nothing is missed meanwhile: a restart first reads every board's current epoch, and until then
        a node answers STALE to a call on an outdated map, which reloads it.
        """
        async for board, epoch in self.control_plane.epoch_changes():
            self._unknown.pop(board, None)
            cached = self._layouts.get(board)
            if cached is not None and cached.map.epoch < epoch:
                try:
                    await self.refresh(board)
                except NotFound:  # deleted: the reload forgot it
                    continue
                except Exception:  # the next STALE answer will retry; keep following
                    log.exception("could not reload leaderboard %r at epoch %d", board, epoch)
