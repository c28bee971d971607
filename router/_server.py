"""The router process: both services, health checking and reflection on one grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rankshard.shard_map import DEFAULTS, ControlPlane, Settings
from rankshard.shard_node import StepHook, connect_cluster
from rankshard.v1 import admin_pb2, leaderboard_pb2

from ._admin import AdminService
from ._auth import Clock
from ._catalog import Catalog
from ._metrics import poll_jobs, serving_metrics
from ._reflection import enable_reflection
from ._security import Security
from ._service import LeaderboardService
from ._sweeper import sweep_forever
from ._tasks import BackgroundTasks
from ._wire import add_service

log = logging.getLogger("rankshard.router")

LEADERBOARD = leaderboard_pb2.DESCRIPTOR.services_by_name["Leaderboard"]
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
SERVICE_NAMES = (LEADERBOARD.full_name, ADMIN.full_name)

_MAX_MESSAGE = ("grpc.max_receive_message_length", 16 * 1024 * 1024)


class ListenError(OSError):
    """The router cannot listen on its address: another process serves it, or the address is not ours."""


def _server_options(reuse_port: bool) -> tuple[tuple[str, int], ...]:
    # gRPC turns SO_REUSEPORT on unless told otherwise, and with it a router silently shares a port with any
    # other process of ours that has it too: another cluster's routers included. Only the routers of one cluster
    # (docs/architecture.md: N processes behind SO_REUSEPORT) ask for it.
    return (("grpc.so_reuseport", int(reuse_port)), _MAX_MESSAGE)


def _listen(
    server: grpc.aio.Server, host: str, port: int, reuse_port: bool, credentials: grpc.ServerCredentials | None
) -> int:
    """Binds `host:port` (0: any free port), with TLS when `credentials` are given, and returns the port bound;
    raises `ListenError` saying why not."""
    if port:
        _probe(host, port, reuse_port)
    try:
        if credentials is not None:
            return server.add_secure_port(f"{host}:{port}", credentials)
        return server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # taken in the moment since the probe
        raise ListenError(f"cannot listen on {host}:{port}") from exc


def _probe(host: str, port: int, reuse_port: bool) -> None:
    """A plain bind with gRPC's socket options: where gRPC only says that it failed, this says why."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
            probe.bind((host, port))  # never listens: no client is ever handed to it
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}") from None


@contextlib.asynccontextmanager
async def running_router(
    control_plane_dsn: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    settings: Settings = DEFAULTS,
    on_step: StepHook | None = None,
    reuse_port: bool = False,
    clock: Clock = time.monotonic,
) -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    """A serving router; yields the server and the port it bound. Everything is closed on exit.

    `settings` gives its timeouts, pool size, sweeper, TLS and tokens (see `Settings`); `clock` drives the tokens'
    rate limits; `reuse_port` lets it share `port` with the other routers of its cluster (SO_REUSEPORT); without
    it a port that any other process serves is refused. With `settings.metrics_port`, its metrics are served there
    (docs/operations.md, "Metrics").

    Raises `SecurityError` when the TLS or token settings cannot be used, `ControlPlaneError` when the control
    plane cannot be reached or has no nodes yet, `ListenError` when the port cannot be bound,
    `MetricsListenError` when the metrics port cannot.
    """
    security = Security.of(settings, clock)  # before anything opens: a bad file changes nothing
    control_plane = await ControlPlane.open(
        control_plane_dsn, max_size=settings.control_plane_pool_size, timeout=settings.control_plane_timeout
    )
    try:
        cluster = await connect_cluster(control_plane, settings.node_timeout, settings.size_cache_ms / 1000)
        try:
            async with serving_metrics(settings.metrics_host, settings.metrics_port) as metrics:
                catalog = Catalog(control_plane, cluster, settings.node_timeout, metrics)
                async with _serving(catalog, host, port, settings, on_step, reuse_port, security) as served:
                    yield served
        finally:
            await cluster.aclose()
    finally:
        await control_plane.close()


@contextlib.asynccontextmanager
async def _serving(
    catalog: Catalog,
    host: str,
    port: int,
    settings: Settings,
    on_step: StepHook | None,
    reuse_port: bool,
    security: Security,
) -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    """The gRPC server over `catalog`, with its background tasks, from start to drain. Health and reflection
    are served to every caller; `security.tokens` guard the two services."""
    server = grpc.aio.server(options=_server_options(reuse_port))
    metrics = catalog.metrics
    leaderboard = LeaderboardService(catalog, settings.call_deadline, on_step, metrics)
    add_service(server, leaderboard, LEADERBOARD, leaderboard_pb2, security.tokens)
    admin = AdminService(catalog, settings.call_deadline, metrics)
    add_service(server, admin, ADMIN, admin_pb2, security.tokens, admin_only=True)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
    bound = _listen(server, host, port, reuse_port, security.credentials)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    async with BackgroundTasks(
        settings.task_restart_delay, settings.task_restart_max_delay, settings.fail_task
    ) as tasks:
        tasks.keep_running("epoch-follower", catalog.follow_epochs)
        tasks.keep_running(
            "sweeper", lambda: sweep_forever(catalog, settings.sweep_interval, settings.sweep_age_ms, metrics)
        )
        if metrics is not None:
            poll = functools.partial(poll_jobs, catalog.control_plane, metrics, settings.metrics_poll_interval)
            tasks.keep_running("job-metrics", poll)
        try:
            yield server, bound
        finally:
            for name in ("", *SERVICE_NAMES):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await server.stop(grace=settings.drain_grace)
            await leaderboard.aclose()


async def serve(
    control_plane_dsn: str,
    host: str,
    port: int,
    *,
    settings: Settings = DEFAULTS,
    on_step: StepHook | None = None,
    reuse_port: bool = False,
) -> None:
    """Serves until SIGINT or SIGTERM, then drains in-flight calls and exits. The arguments are `running_router`'s."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_router(
        control_plane_dsn, host, port, settings=settings, on_step=on_step, reuse_port=reuse_port
    ) as (_, bound):
        log.info("rankshard: router listening on %s:%d", host, bound)
        print(f"rankshard: router listening on {host}:{bound}", flush=True)
        await stop.wait()
