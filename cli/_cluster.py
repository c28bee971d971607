"""A whole rankshard cluster as local processes: PostgreSQL, Valkey/Redis nodes, routers.

Used by ``rankshard cluster up`` (foreground, supervised, until a signal) and by ``rankshard demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rankshard.shard_map import (
    DEFAULTS,
    ROUTER,
    BoardConfig,
    ControlPlane,
    NotFound,
    Settings,
    SlotTable,
    default_boundaries,
    setting_specs,
)
from rankshard.shard_node import connect_cluster, create_board

from ._claims import ClaimRefused, DataDirLock, reserve_port
from ._local import LocalPostgres, LocalValkey, die_with_parent, free_port
from ._secrets import ensure_tls, ensure_tokens
from ._settings import SETTINGS_FILE, LocalSettings
from ._supervisor import GaveUp, RestartPolicy, Supervised, supervise

DEFAULT_BOARD = "global"
HOST = "127.0.0.1"
ROUTER_START_TIMEOUT = 30.0
ROUTER_STOP_MARGIN = 8.0
"""Seconds a stopping router may take beyond its drain grace (`Settings.drain_grace`) before it is killed."""

__all__ = [
    "DEFAULT_BOARD",
    "ClaimRefused",
    "GaveUp",
    "LocalCluster",
    "LocalRouter",
    "signals_caught",
    "supervise_until_signal",
]


def router_flags(settings: Settings) -> list[str]:
    """The router flags of every router setting `settings` changed from its default (the control plane apart):
    what a local cluster's routers are started with, so that `rankshard` options reach them as the environment
    does (they inherit it)."""
    flags = []
    for spec in setting_specs(ROUTER):
        value = getattr(settings, spec.name)
        if spec.has_flag and spec.name != "control_plane" and value != getattr(DEFAULTS, spec.name):
            flags += [spec.flag, str(value)]
    return flags


class LocalRouter:
    """One `python -m rankshard.router` of a local cluster, sharing the cluster's port with its other routers
    (`--reuse-port`), run with the cluster's `settings`, serving its metrics on `metrics_port` (0: none). Its
    stderr goes to `log_path`. `start` returns once it serves, and starts it again after it died; a start that
    fails kills what it spawned and raises RuntimeError."""

    def __init__(
        self,
        number: int,
        control_plane: str,
        port: int,
        log_path: Path,
        settings: Settings = DEFAULTS,
        metrics_port: int = 0,
    ) -> None:
        self.number = number
        self.control_plane = control_plane
        self.port = port
        self.log_path = log_path
        self.settings = settings
        self.metrics_port = metrics_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"router {self.number} ({HOST}:{self.port})"

    @property
    def metrics_address(self) -> str:
        return f"{self.settings.metrics_host}:{self.metrics_port}"

    @property
    def exit_code(self) -> int | None:
        """None while it runs (or before its first start); else how it ended."""
        return self._proc.poll() if self._proc else None

    def start(self, timeout: float = ROUTER_START_TIMEOUT) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._close_pipe()
        argv = [
            sys.executable,
            "-m",
            "rankshard.router",
            "--control-plane",
            self.control_plane,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--reuse-port",
            *router_flags(self.settings),
            # Last, so that it wins over a RANKSHARD_METRICS_PORT the settings came with: one port per router.
            *(["--metrics-port", str(self.metrics_port)] if self.metrics_port else []),
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, preexec_fn=die_with_parent
            )
        if not self._wait_serving(time.monotonic() + timeout):
            self.kill()
            raise RuntimeError(f"{self.name} did not start (exit code {self.exit_code}); see {self.log_path}")

    def _wait_serving(self, deadline: float) -> bool:
        """Whether it announces that it serves before `deadline` (False as soon as it exits)."""
        assert self._proc is not None and self._proc.stdout is not None
        # Raw reads: a buffered reader could hold the line while select sees nothing more to read.
        fd, seen = self._proc.stdout.fileno(), b""
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                if not (chunk := os.read(fd, 4096)):
                    return False
                seen += chunk
                if b"router listening on" in seen:
                    return True
        return False

    def terminate(self) -> None:
        """Asks it to drain its calls and exit (SIGTERM); `stop` waits for that."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Stops it cleanly, SIGKILLing it if it overruns the grace period. No-op if it is not running."""
        self.terminate()
        if self._proc is not None:
            try:
                self._proc.wait(self.settings.drain_grace + ROUTER_STOP_MARGIN)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _close_pipe(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()


@dataclass(slots=True)
class _NamedServer:
    """A node or PostgreSQL, named for the supervisor's log."""

    name: str
    server: LocalValkey | LocalPostgres

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    @property
    def exit_code(self) -> int | None:
        return self.server.exit_code

    def start(self) -> None:
        self.server.start()


class LocalCluster:
    """Starts (or restarts, from the same data dir) a cluster; `stop()` stops every process it started. Its
    servers, routers and supervision follow `settings` (its node, PostgreSQL, restart and router settings).

    While it runs it holds its data dir and its router port (see `_claims`): a second cluster on either is
    refused with `ClaimRefused` before anything is changed. With `metrics`, each router serves its metrics on a
    port of its own (free when first chosen, kept in `cluster.json` as `metrics_ports`)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        nodes: int = 2,
        shards: int = 4,
        routers: int = 1,
        port: int = 50051,
        boundaries: Sequence[int] | None = None,
        settings: Settings = DEFAULTS,
        auth: bool = False,
        tls: bool = False,
        metrics: bool = False,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.node_count = nodes
        self.shard_count = shards
        self.router_count = routers
        self.port = port
        self.boundaries = boundaries
        self.settings = settings
        self.auth = auth
        self.tls = tls
        self.metrics = metrics
        self.postgres: LocalPostgres | None = None
        self.nodes: list[LocalValkey] = []
        self.routers: list[LocalRouter] = []
        self.ports: LocalSettings | None = None
        """The ports of `cluster.json`, once started."""
        self._node_ids: dict[str, str] = {}
        self._settings_seen: int | None = None
        """When `cluster.json` last changed as this cluster knows it (its st_mtime_ns)."""
        self._lock = DataDirLock(self.data_dir)
        self._port_hold: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def control_plane(self) -> str:
        assert self.ports is not None
        return self.ports.control_plane

    def start(self) -> None:
        """Brings every process up and the board `global` into existence; on failure, stops what started.
        Raises `ClaimRefused` (changing nothing) when a cluster runs in the data dir or the port is taken."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._lock.acquire(self.address)
        self._port_hold = reserve_port(HOST, self.port)
        ports = LocalSettings.load(self.data_dir) or LocalSettings(postgres_port=free_port())
        while len(ports.node_ports) < self.node_count:
            ports.node_ports.append(free_port())
        ports.router_port = self.port
        ports.auth, ports.tls = self.auth, self.tls
        if self.metrics:
            while len(ports.metrics_ports) < self.router_count:
                ports.metrics_ports.append(free_port())
            del ports.metrics_ports[self.router_count :]
        ports.save(self.data_dir)
        self._settings_seen = self._settings_changed_at()
        self.ports = ports
        self.settings = self._secured(self.settings)
        self.postgres = LocalPostgres(self.data_dir / "postgres", ports.postgres_port, settings=self.settings)
        self.postgres.start()
        for i, node_port in enumerate(ports.node_ports, 1):
            node = LocalValkey(self.data_dir / "nodes" / f"node{i}", node_port, settings=self.settings)
            self.nodes.append(node)
            node.start()
        asyncio.run(self._bootstrap())
        for i in range(1, self.router_count + 1):
            log_path = self.data_dir / f"router-{i}.log"
            metrics_port = ports.metrics_ports[i - 1] if self.metrics else 0
            self.routers.append(LocalRouter(i, self.control_plane, self.port, log_path, self.settings, metrics_port))
            self.routers[-1].start()

    def _secured(self, settings: Settings) -> Settings:
        """`settings` with the routers' token file and TLS files, made on the first start that asks for them
        and kept (a restart serves the same tokens and certificate)."""
        if self.auth:
            settings = replace(settings, tokens=ensure_tokens(self.data_dir))
        if self.tls:
            files = ensure_tls(self.data_dir)
            settings = replace(settings, tls_cert=files.cert, tls_key=files.key)
        return settings

    async def _bootstrap(self) -> None:
        """Registers nodes, deals the index slots and creates board `global`, each only if absent."""
        async with await ControlPlane.open(self.control_plane, timeout=self.settings.control_plane_timeout) as cp:
            known = {n.address for n in await cp.list_nodes()}
            for node in self.nodes:
                if node.address not in known:
                    await cp.add_node(node.address)
            registered = await cp.list_nodes()
            self._node_ids = {n.address: n.id for n in registered}
            if await cp.slot_table() is None:
                await cp.assign_slots(SlotTable.spread([n.id for n in registered]))
            try:
                await cp.get_board(DEFAULT_BOARD)
            except NotFound:
                cluster = await connect_cluster(cp)
                try:
                    cuts = self.boundaries if self.boundaries is not None else default_boundaries(self.shard_count)
                    await create_board(cp, cluster, BoardConfig(DEFAULT_BOARD), cuts)
                finally:
                    await cluster.aclose()

    def processes(self) -> list[Supervised]:
        """Every process it started, in start order: a restart in that order finds what it needs up."""
        assert self.postgres is not None
        return [
            _NamedServer(f"postgres ({HOST}:{self.postgres.port})", self.postgres),
            *(_NamedServer(f"node {self._node_ids.get(n.address, '?')} ({n.address})", n) for n in self.nodes),
            *self.routers,
        ]

    def joined(self) -> list[Supervised]:
        """The nodes `cluster.json` gained since the last look (`nodes add --local` records their ports), started
        in their own folders; [] when it did not change. One that fails to start is still returned: the
        supervisor restarts it as it would any node that died."""
        changed_at = self._settings_changed_at()
        if changed_at == self._settings_seen or self.ports is None:
            return []
        self._settings_seen = changed_at
        recorded = LocalSettings.load(self.data_dir)
        added = recorded.node_ports[len(self.nodes) :] if recorded is not None else []
        started: list[Supervised] = []
        for port in added:
            node = LocalValkey(self.data_dir / "nodes" / f"node{len(self.nodes) + 1}", port, settings=self.settings)
            self.nodes.append(node)
            self.ports.node_ports.append(port)
            with contextlib.suppress(RuntimeError):  # its exit code tells the supervisor
                node.start()
            started.append(_NamedServer(f"node {node.address}", node))
        return started

    def _settings_changed_at(self) -> int | None:
        try:
            return (self.data_dir / SETTINGS_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def stop(self) -> None:
        """Stops routers first (they drain calls), then nodes, then PostgreSQL, and lets go of the data dir and
        the port last. Safe to call twice."""
        for router in self.routers:
            router.terminate()
        for router in self.routers:
            router.stop()
        self.routers.clear()
        for node in self.nodes:
            node.stop()
        self.nodes.clear()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        if self._port_hold is not None:
            self._port_hold.close()
            self._port_hold = None
        self._lock.release()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def signals_caught() -> Iterator[list[str]]:
    """Within the block, SIGINT and SIGTERM are recorded (by name, in the list it yields) instead of ending the
    process. Entered before a cluster starts, so that a signal arriving while it starts, or right after it
    says it serves, still stops every process it started."""
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def supervise_until_signal(cluster: LocalCluster, say: Callable[[str], None], received: list[str]) -> GaveUp | str:
    """Restarts whatever of `cluster` dies until `received` (from `signals_caught`) names a signal (returns its
    name) or until a process keeps dying (returns which, and how); starts and watches the nodes `nodes add
    --local` records in `cluster.json` meanwhile. Stops nothing: the caller stops the cluster."""
    policy = RestartPolicy.of(cluster.settings)
    gave_up = supervise(cluster.processes(), lambda: bool(received), say, policy, joined=cluster.joined)
    return gave_up or received[0]
