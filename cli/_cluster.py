"""A whole rankshard cluster as local processes: PostgreSQL, Valkey/Redis nodes, routers.

Used by ``rankshard cluster up`` (foreground, until a signal) and by ``rankshard demo``.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shard_map import BoardConfig, ControlPlane, NotFound, SlotTable, default_boundaries
from shard_node import connect_cluster, create_board

from ._local import LocalPostgres, LocalValkey, free_port, die_with_parent
from ._settings import LocalSettings

DEFAULT_BOARD = "global"
ROUTER_START_TIMEOUT = 30.0


class LocalCluster:
    """Starts (or restarts, from the same data dir) a cluster; `stop()` stops every process it started."""

    def __init__(
        self,
        data_dir: Path,
        *,
        nodes: int = 2,
        shards: int = 4,
        routers: int = 1,
        port: int = 50051,
        boundaries: Sequence[int] | None = None,
        fast: bool = False,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.node_count = nodes
        self.shard_count = shards
        self.router_count = routers
        self.port = port
        self.boundaries = boundaries
        self.fast = fast
        self.postgres: LocalPostgres | None = None
        self.nodes: list[LocalValkey] = []
        self.routers: list[subprocess.Popen[str]] = []
        self.settings: LocalSettings | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def control_plane(self) -> str:
        assert self.settings is not None
        return self.settings.control_plane

    def start(self) -> None:
        """Brings every process up and the board `global` into existence; on failure, stops what started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        settings = LocalSettings.load(self.data_dir) or LocalSettings(postgres_port=free_port())
        while len(settings.node_ports) < self.node_count:
            settings.node_ports.append(free_port())
        settings.router_port = self.port
        settings.save(self.data_dir)
        self.settings = settings
        self.postgres = LocalPostgres(self.data_dir / "postgres", settings.postgres_port, fast=self.fast)
        self.postgres.start()
        for i, node_port in enumerate(settings.node_ports, 1):
            node = LocalValkey(self.data_dir / "nodes" / f"node{i}", node_port)
            self.nodes.append(node)
            node.start()
        asyncio.run(self._bootstrap())
        for _ in range(self.router_count):
            self.routers.append(self._start_router())

    async def _bootstrap(self) -> None:
        """Registers nodes, deals the index slots and creates board `global`, each only if absent."""
        async with await ControlPlane.open(self.control_plane) as cp:
            known = {n.address for n in await cp.list_nodes()}
            for node in self.nodes:
                if node.address not in known:
                    await cp.add_node(node.address)
            if await cp.slot_table() is None:
                await cp.assign_slots(SlotTable.spread([n.id for n in await cp.list_nodes()]))
            try:
                await cp.get_board(DEFAULT_BOARD)
            except NotFound:
                cluster = await connect_cluster(cp)
                try:
                    cuts = self.boundaries if self.boundaries is not None else default_boundaries(self.shard_count)
                    await create_board(cp, cluster, BoardConfig(DEFAULT_BOARD), cuts)
                finally:
                    await cluster.aclose()

    def _start_router(self) -> subprocess.Popen[str]:
        log = open(self.data_dir / f"router-{len(self.routers) + 1}.log", "a")
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "--control-plane", self.control_plane, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + ROUTER_START_TIMEOUT
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                if "router listening on" in line:
                    return proc
                if not line:
                    break
            if proc.poll() is not None:
                break
        proc.kill()
        proc.wait()
        raise RuntimeError(f"router did not start; see {self.data_dir}/router-*.log")

    def stop(self) -> None:
        """Stops routers first (they drain calls), then nodes, then PostgreSQL. Safe to call twice."""
        for proc in self.routers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.routers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.routers.clear()
        for node in self.nodes:
            node.stop()
        self.nodes.clear()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def dead_child(self) -> str | None:
        """A description of a process that exited on its own, if any."""
        for i, proc in enumerate(self.routers, 1):
            if proc.poll() is not None:
                return f"router {i} exited with status {proc.returncode}"
        for node in self.nodes:
            if not node.running:
                return f"node {node.address} exited"
        return None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_signal_or_death(cluster: LocalCluster) -> str:
    """Blocks until SIGINT/SIGTERM (returns the signal's name) or a child's death (returns why)."""
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not received:
            dead = cluster.dead_child()
            if dead:
                return dead
            time.sleep(0.2)  # polling children; a signal interrupts the sleep
        return received[0]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
