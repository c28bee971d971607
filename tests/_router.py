"""A real router for tests: `running_router` in its own thread and event loop, so tests call it
through ordinary (sync) gRPC stubs exactly as a game backend would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from rankshard.router import running_router
from rankshard.shard_map import ControlPlane, Settings, SlotTable
from rankshard.shard_node import BoardLayout, Cluster, connect_cluster
from rankshard.v1 import admin_pb2, admin_pb2_grpc, leaderboard_pb2, leaderboard_pb2_grpc

ORDERS = {"desc": admin_pb2.SORT_ORDER_DESCENDING, "asc": admin_pb2.SORT_ORDER_ASCENDING}
OPERATORS = {"increment": admin_pb2.OPERATOR_INCREMENT, "best": admin_pb2.OPERATOR_BEST, "set": admin_pb2.OPERATOR_SET}


async def bootstrap(dsn: str, node_addresses: Sequence[str]) -> None:
    """Registers the nodes and deals the index slots over them, as `cluster up` does."""
    async with await ControlPlane.open(dsn) as cp:
        ids = [(await cp.add_node(a)).id for a in node_addresses]
        await cp.assign_slots(SlotTable.spread(ids))


T = TypeVar("T")


def on_board(dsn: str, board: str, work: Callable[[Cluster, BoardLayout], Awaitable[T]]) -> T:
    """`work(cluster, layout)`'s result, on a cluster and layout of the test's own (as the CLI builds them): apart
    from any router's, so what it knows of the board is only what it read itself."""

    async def main() -> T:
        async with await ControlPlane.open(dsn) as cp:
            cluster = await connect_cluster(cp)
            try:
                return await work(cluster, BoardLayout(await cp.get_board(board), await cp.shard_map(board)))
            finally:
                await cluster.aclose()

    return asyncio.run(main())


class RouterThread:
    """One router process's worth of serving, in a thread. `hook` is the test-only step hook; `clock` drives its
    tokens' rate limits; `options` are `Settings` fields (the rest are the defaults)."""

    def __init__(self, dsn: str, clock: Callable[[], float] = time.monotonic, **options: object) -> None:
        self.dsn = dsn
        self.clock = clock
        self.options = options
        self.hook: Callable[[str], None] | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="router", daemon=True)

    def start(self, timeout: float = 30.0) -> RouterThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("router did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()

    def _on_step(self, step: str) -> None:
        if self.hook is not None:
            self.hook(step)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        settings = Settings(**self.options)  # type: ignore[arg-type]  # the fields' types are Settings' to check
        async with running_router(self.dsn, on_step=self._on_step, settings=settings, clock=self.clock) as (_, port):
            self.port = port
            self._ready.set()
            await self._stop.wait()


class Client:
    """Stubs of both services on one channel, plus board creation in one call."""

    def __init__(self, port: int, credentials: grpc.ChannelCredentials | None = None) -> None:
        address = f"127.0.0.1:{port}"
        self.channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        self.lb = leaderboard_pb2_grpc.LeaderboardStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    def create(
        self,
        name: str,
        order: str = "desc",
        operator: str = "increment",
        boundaries: Sequence[int] = (),
        expected_members: int = 0,
    ) -> admin_pb2.LeaderboardConfig:
        return self.admin.CreateLeaderboard(
            admin_pb2.LeaderboardConfig(
                name=name,
                sort_order=ORDERS[order],
                operator=OPERATORS[operator],
                boundaries=list(boundaries),
                expected_members=expected_members,
            ),
            timeout=10,
        )

    def close(self) -> None:
        self.channel.close()


def write_scores(client: Client, board: str, scores: dict[str, int]) -> None:
    """Sets (or adds, by the board's operator) each member's score in one BatchUpdateScores call."""
    updates = [leaderboard_pb2.ScoreUpdate(user_id=u, score=v) for u, v in scores.items()]
    client.lb.BatchUpdateScores(
        leaderboard_pb2.BatchUpdateScoresRequest(leaderboard=board, updates=updates), timeout=10
    )


class RoundTrips:
    """A `NodeObserver` keeping the node of every round trip, in order (`count`: per node)."""

    def __init__(self) -> None:
        self.nodes: list[str] = []

    @property
    def count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node_id in self.nodes:
            out[node_id] = out.get(node_id, 0) + 1
        return out

    def round_trip(self, node_id: str, seconds: float) -> None:
        self.nodes.append(node_id)

    def failed(self, node_id: str, kind: str) -> None:
        pass
