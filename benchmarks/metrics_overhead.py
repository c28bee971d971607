"""What a router's metrics cost per call: ``python -m rankshard.benchmarks.metrics_overhead``.

Starts a local cluster (``rankshard cluster up``, one node) in a temporary folder, and beside it two routers of
their own ports over it: one without metrics, one with ``--metrics-port``. Then GetRank calls go to each in turn
(`--rounds` alternating rounds of `--seconds`, `--concurrency` calls in flight from one client process), and it
prints each round's calls/s and the router's CPU time per call (steadier than calls/s on a shared machine), then
the medians. Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._procs import Cluster, Spawned, cpu_seconds, free_port

BOARD = "global"
MEMBERS = 10_000


def _router(cluster: Cluster, log: Path, *flags: str) -> tuple[Spawned, int]:
    port = free_port()
    argv = [sys.executable, "-m", "rankshard.router", "--control-plane", cluster.control_plane, "--port", str(port)]
    return Spawned([*argv, *flags], "router listening on", log), port


async def _fill(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        lb = pb_grpc.LeaderboardStub(channel)
        for start in range(0, MEMBERS, 100):
            updates = [pb.ScoreUpdate(user_id=f"u{i}", score=i % 5000) for i in range(start, start + 100)]
            await lb.BatchUpdateScores(pb.BatchUpdateScoresRequest(leaderboard=BOARD, updates=updates), timeout=30)


def _measured(router: Spawned, port: int, seconds: float, concurrency: int) -> tuple[float, float]:
    """(calls/s, the router's CPU µs per call) of one round."""
    cpu = cpu_seconds(router.pid)
    calls, elapsed = asyncio.run(_round(port, seconds, concurrency))
    return calls / elapsed, 1e6 * (cpu_seconds(router.pid) - cpu) / calls


async def _round(port: int, seconds: float, concurrency: int) -> tuple[int, float]:
    """GetRank calls made over `seconds`, `concurrency` in flight, and the seconds they took."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        lb = pb_grpc.LeaderboardStub(channel)
        done = 0
        stop_at = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop_at:
                await lb.GetRank(pb.GetRankRequest(leaderboard=BOARD, user_id=f"u{i % MEMBERS}"), timeout=10)
                done += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        return done, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rankshard.benchmarks.metrics_overhead", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per router (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per round (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rankshard-metrics-") as tmp:
        cluster = Cluster(Path(tmp) / "cluster", nodes=1, port=free_port())
        started: list[Spawned] = []
        try:
            plain, plain_port = _router(cluster, Path(tmp) / "plain.log")
            started.append(plain)
            metered, metered_port = _router(cluster, Path(tmp) / "metered.log", "--metrics-port", str(free_port()))
            started.append(metered)
            asyncio.run(_fill(plain_port))
            figures: dict[str, list[tuple[float, float]]] = {"without metrics": [], "with metrics": []}
            sides = (("without metrics", plain, plain_port), ("with metrics", metered, metered_port))
            for n in range(args.rounds):
                for name, router, port in sides[:: 1 - 2 * (n % 2)]:  # alternating which goes first
                    figures[name].append(_measured(router, port, args.seconds, args.concurrency))
                    rate, cpu = figures[name][-1]
                    print(f"round {n + 1} {name}: {rate:,.0f} GetRank calls/s, {cpu:.1f} µs router CPU per call")
        finally:
            for spawned in started:
                spawned.stop()
            cluster.stop()
    (plain_rate, plain_cpu), (metered_rate, metered_cpu) = (
        (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for v in figures.values()
    )
    # Each round's two sides ran back to back: their ratio is steadier than the ratio of the medians.
    paired = statistics.median(m[1] / p[1] for p, m in zip(*figures.values(), strict=True))
    print(
        f"median: {plain_rate:,.0f} calls/s without metrics, {metered_rate:,.0f} with "
        f"({100 * (metered_rate / plain_rate - 1):+.1f}%); router CPU per call {plain_cpu:.1f} µs without, "
        f"{metered_cpu:.1f} µs with; median of the rounds' CPU ratios {100 * (paired - 1):+.1f}%"
    )


if __name__ == "__main__":
    main()
