"""Routers served inside the calling process, without gRPC: the router's own service, coalescing and data path,
called directly. For load generators that must bring the nodes to a busy share a machine's gRPC tier cannot reach
(`rankshard bench`'s capacity plan), never for serving clients."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from rankshard.shard_map import ControlPlane
from rankshard.shard_node import DEFAULT_NODE_TIMEOUT, connect_cluster

from ._catalog import Catalog
from ._service import LeaderboardService

CALL_DEADLINE = 10.0
"""Seconds a call may take, as a router's default."""


class _Context:
    """What the service's handlers ask of a gRPC context: no client deadline (the service's own applies), and an
    abort that raises what a gRPC client would see."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class InProcessStub:
    """A `LeaderboardStub`'s calls (`stub.GetRank(request, timeout=...)`), answered by `service` in this process;
    `timeout` is ignored: the service's deadline applies."""

    def __init__(self, service: LeaderboardService) -> None:
        self._service = service
        self._context = _Context()

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        handler = getattr(self._service, method)
        context = self._context
        return lambda request, timeout=None: handler(request, context)


@contextlib.asynccontextmanager
async def in_process_routers(
    control_plane_dsn: str, n: int, size_cache: float = 0.0
) -> AsyncIterator[list[InProcessStub]]:
    """`n` routers over one control plane, each with its own node connections and its own coalescing, as `n`
    router processes would have (what a node does per call depends on how each router batches); a stub on each.
    `size_cache`: their size cache in seconds, as `--size-cache-ms` gives a router process (0: off). They run no
    background tasks (map following, sweeping): for a phase of seconds on a stable map."""
    async with contextlib.AsyncExitStack() as stack:
        control_plane = await ControlPlane.open(control_plane_dsn)
        stack.push_async_callback(control_plane.close)
        stubs = []
        for _ in range(n):
            cluster = await connect_cluster(control_plane, DEFAULT_NODE_TIMEOUT, size_cache)
            stack.push_async_callback(cluster.aclose)
            service = LeaderboardService(Catalog(control_plane, cluster, DEFAULT_NODE_TIMEOUT), CALL_DEADLINE)
            stack.push_async_callback(service.aclose)
            stubs.append(InProcessStub(service))
        yield stubs
