"""The load generator: one process's share of a phase, open loop (a schedule) or closed loop (N in flight).

`run_share` is what each load-generator process runs (it is picklable for a process pool). Open loop
issues calls on a fixed schedule whatever the server does, and measures each call from the moment it
was *due*, not from when it was sent, so latency under overload is honest (no coordinated omission).
Closed loop keeps `concurrency` calls in flight and measures throughput.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Awaitable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._hist import Histogram
from ._model import TrafficModel

KINDS = ("update", "rank", "top", "around", "batch")


class RouterFactory(Protocol):
    """(control-plane DSN, n, size cache in seconds) -> n routers served inside the calling process, without gRPC: a
    stub on each, with the methods and arguments of a `LeaderboardStub`'s (errors raised as `grpc.aio.AioRpcError`).
    Picklable: the CLI supplies it, as only it may reach below the public surfaces."""

    def __call__(self, dsn: str, n: int, /, size_cache: float = 0.0) -> AbstractAsyncContextManager[Sequence[Any]]: ...


MAX_IN_FLIGHT = 20_000
"""Open loop: calls past this many outstanding are shed (counted, not sent): the server is long overloaded."""


@dataclass(frozen=True, slots=True)
class Share:
    """One process's part of a phase. Times are wall-clock (`time.time()`), shared by every process."""

    address: str
    board: str
    mix: dict[str, float]
    start_at: float
    duration: float
    rate: float = 0.0
    """Open loop: calls per second this process issues; 0 means closed loop."""
    concurrency: int = 64
    population: int = 1000
    new_player_share: float = 0.0
    batch_size: int = 100
    radius: int = 5
    """GetAround's radius."""
    request_ids: bool = True
    channels: int = 1
    seed: int = 1
    model: TrafficModel = field(default_factory=TrafficModel)
    timeout: float = 10.0
    routers: RouterFactory | None = None
    """In place of gRPC channels to `address`: `channels` routers served in this process (`address` then names the
    control plane)."""


def user_id(i: int) -> str:
    """The id of preloaded member `i` (the same in every process and in the preloader)."""
    return f"u{i:09d}"


def run_share(share: Share) -> dict[str, object]:
    """Runs `share` to its end and returns its measurements (JSON-ready): per kind a latency histogram,
    calls, errors by status; and a per-second timeline of completions."""
    try:
        import uvloop
    except ImportError:  # plain asyncio still measures correctly, only slower
        return asyncio.run(_Runner(share).run())
    return uvloop.run(_Runner(share).run())


def warm() -> int:
    """A no-op a pool runs once per process so later phases do not pay for imports and start-up."""
    return os.getpid()


class _Runner:
    def __init__(self, share: Share) -> None:
        self.share = share
        self.rng = random.Random(share.seed * 7919 + os.getpid())
        self.kinds = list(share.mix)
        self.weights = list(itertools.accumulate(share.mix[k] for k in self.kinds))
        self.hist = {k: Histogram() for k in share.mix}
        self.calls = dict.fromkeys(share.mix, 0)
        self.items = dict.fromkeys(share.mix, 0)
        self.errors: dict[str, int] = {}
        self.timeline: dict[int, tuple[int, Histogram]] = {}
        self.shed = 0
        self.seq = itertools.count()
        self.tag = f"{os.getpid()}-{int(share.start_at * 1000)}"  # unique per phase: ids never repeat across phases

    async def run(self) -> dict[str, object]:
        s = self.share
        if s.routers is not None:
            async with s.routers(s.address, s.channels) as stubs:
                self.stubs = list(stubs)
                await self._timed()
            return self._result()
        # One channel per connection wanted: router processes behind SO_REUSEPORT each take whole connections.
        channels = [
            grpc.aio.insecure_channel(
                s.address, options=[("grpc.use_local_subchannel_pool", 1), ("rankshard.bench_channel", i)]
            )
            for i in range(s.channels)
        ]
        try:
            self.stubs = [pb_grpc.LeaderboardStub(c) for c in channels]
            await asyncio.gather(*(c.channel_ready() for c in channels))
            await self._timed()
        finally:
            for c in channels:
                await c.close()
        return self._result()

    async def _timed(self) -> None:
        s = self.share
        await asyncio.sleep(max(0.0, s.start_at - time.time()))
        self.t0 = time.perf_counter()
        self.end = self.t0 + s.duration
        await (self._open() if s.rate > 0 else self._closed())

    async def _closed(self) -> None:
        async def worker() -> None:
            while time.perf_counter() < self.end:
                await self._call(time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(self.share.concurrency)))

    async def _open(self) -> None:
        interval = 1.0 / self.share.rate
        total = int(self.share.duration * self.share.rate)
        pending: set[asyncio.Task[None]] = set()
        n = 0
        while n < total:
            now = time.perf_counter()
            due = self.t0 + n * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while n < total and self.t0 + n * interval <= now:
                if len(pending) >= MAX_IN_FLIGHT:
                    self.shed += 1
                else:
                    task = asyncio.create_task(self._call(self.t0 + n * interval))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                n += 1
        await asyncio.gather(*pending)

    async def _call(self, due: float) -> None:
        kind = self._pick()
        call, items = self._request(kind)
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            self.errors[code] = self.errors.get(code, 0) + 1
            return
        done = time.perf_counter()
        micros = int((done - due) * 1e6)
        self.hist[kind].record(micros)
        self.calls[kind] += 1
        self.items[kind] += items
        second = int(done - self.t0)
        count, hist = self.timeline.get(second) or (0, Histogram())
        hist.record(micros)
        self.timeline[second] = (count + items, hist)

    def _pick(self) -> str:
        if len(self.kinds) == 1:
            return self.kinds[0]
        x = self.rng.random() * self.weights[-1]
        for kind, edge in zip(self.kinds, self.weights, strict=True):
            if x < edge:
                return kind
        return self.kinds[-1]

    def _member(self) -> str:
        return user_id(self.rng.randrange(self.share.population))

    def _updater(self) -> str:
        if self.share.new_player_share and self.rng.random() < self.share.new_player_share:
            return f"n{self.tag}-{next(self.seq)}"
        return self._member()

    def _rid(self) -> str:
        return f"{self.tag}-{next(self.seq)}" if self.share.request_ids else ""

    def _request(self, kind: str) -> tuple[Awaitable[object], int]:
        s, stub = self.share, self.stubs[self.rng.randrange(len(self.stubs))]
        if kind == "update":
            req = pb.UpdateScoreRequest(
                leaderboard=s.board,
                user_id=self._updater(),
                score=s.model.sample_points(self.rng),
                request_id=self._rid(),
            )
            return stub.UpdateScore(req, timeout=s.timeout), 1
        if kind == "batch":
            updates = [
                pb.ScoreUpdate(user_id=self._updater(), score=s.model.sample_points(self.rng), request_id=self._rid())
                for _ in range(s.batch_size)
            ]
            batch = pb.BatchUpdateScoresRequest(leaderboard=s.board, updates=updates)
            return stub.BatchUpdateScores(batch, timeout=s.timeout), s.batch_size
        if kind == "rank":
            return stub.GetRank(pb.GetRankRequest(leaderboard=s.board, user_id=self._member()), timeout=s.timeout), 1
        if kind == "top":
            return stub.GetTop(pb.GetTopRequest(leaderboard=s.board, limit=10), timeout=s.timeout), 1
        if kind == "around":
            around = pb.GetAroundRequest(leaderboard=s.board, user_id=self._member(), radius=s.radius)
            return stub.GetAround(around, timeout=s.timeout), 1
        raise ValueError(f"kind: unknown call kind {kind!r}")

    def _result(self) -> dict[str, object]:
        return {
            "kinds": {
                k: {"calls": self.calls[k], "items": self.items[k], "hist": self.hist[k].to_json()} for k in self.kinds
            },
            "errors": self.errors,
            "shed": self.shed,
            "timeline": {str(t): {"items": n, "hist": h.to_json()} for t, (n, h) in sorted(self.timeline.items())},
        }


def merge(results: Sequence[Mapping[str, Any]]) -> dict[str, object]:
    """One phase's measurements from the results of all its processes (each `_result()`'s JSON, as read back)."""
    kinds: dict[str, dict[str, Any]] = {}
    errors: dict[str, int] = {}
    timeline: dict[int, list[Any]] = {}
    shed = 0
    for r in results:
        for kind, k in r["kinds"].items():
            into = kinds.setdefault(kind, {"calls": 0, "items": 0, "hist": Histogram()})
            into["calls"] += k["calls"]
            into["items"] += k["items"]
            into["hist"].merge(Histogram.from_json(k["hist"]))
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
        shed += r["shed"]
        for t, point in r["timeline"].items():
            into_t = timeline.setdefault(int(t), [0, Histogram()])
            into_t[0] += point["items"]
            into_t[1].merge(Histogram.from_json(point["hist"]))
    return {"kinds": kinds, "errors": errors, "shed": shed, "timeline": timeline}
