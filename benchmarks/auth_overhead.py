"""What token checks cost a router: ``python -m rankshard.benchmarks.auth_overhead [--rounds 6 --seconds 5]``.

Starts a local cluster (``rankshard cluster up``, one node) in a temporary folder, and beside it two more routers
over the same control plane, alike but for one flag: one plain, one with ``--tokens`` (a game token with a rate
limit too high to refuse anything, so each call pays for the lookup and the bucket). Then, round after round,
alternating which goes first, it drives each with the same calls (GetRank, then UpdateScore) from the same
client, carrying the same ``authorization`` metadata (the plain router ignores it), and prints calls/s and the
router's CPU time per call. On a small machine the client may be what limits calls/s; the router's CPU time per call
is what a token check would add to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._procs import Cluster, Spawned, cpu_seconds, free_port

TOKEN = "bench-game-token"
MEMBERS = 1000
IN_FLIGHT = 32


@dataclass(frozen=True, slots=True)
class Router:
    process: Spawned
    address: str


@dataclass(frozen=True, slots=True)
class Round:
    calls_per_s: float
    cpu_us_per_call: float


def start_router(cluster: Cluster, folder: Path, name: str, *flags: str) -> Router:
    port = free_port()
    argv = [sys.executable, "-m", "rankshard.router", "--control-plane", cluster.control_plane, "--port", str(port)]
    return Router(Spawned([*argv, *flags], "router listening on", folder / f"router-{name}.log"), f"127.0.0.1:{port}")


def measure(router: Router, method: str, seconds: float) -> Round:
    cpu = cpu_seconds(router.process.pid)
    calls, elapsed = asyncio.run(drive(router.address, method, seconds))
    return Round(calls / elapsed, 1e6 * (cpu_seconds(router.process.pid) - cpu) / calls)


async def drive(address: str, method: str, seconds: float) -> tuple[int, float]:
    """Calls of `method` made on `address`, IN_FLIGHT at a time for `seconds`, and the seconds they took."""
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LeaderboardStub(channel)
        call = stub.GetRank if method == "GetRank" else stub.UpdateScore
        done = 0
        deadline = time.monotonic() + seconds

        async def worker(n: int) -> None:
            nonlocal done
            i = n
            while time.monotonic() < deadline:
                user = f"user-{i % MEMBERS:05d}"
                if method == "GetRank":
                    await call(pb.GetRankRequest(leaderboard="global", user_id=user), metadata=metadata, timeout=10)
                else:
                    request = pb.UpdateScoreRequest(leaderboard="global", user_id=user, score=1)
                    await call(request, metadata=metadata, timeout=10)
                done += 1
                i += IN_FLIGHT

        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(IN_FLIGHT)))
        return done, time.monotonic() - started


async def seed(address: str) -> None:
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LeaderboardStub(channel)
        updates = [pb.ScoreUpdate(user_id=f"user-{i:05d}", score=i) for i in range(MEMBERS)]
        for start in range(0, MEMBERS, 500):
            batch = pb.BatchUpdateScoresRequest(leaderboard="global", updates=updates[start : start + 500])
            await stub.BatchUpdateScores(batch, metadata=metadata, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per method, each timing both routers")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds each router is driven in a round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rankshard-auth-bench-") as tmp:
        folder = Path(tmp)
        tokens = folder / "tokens.json"
        tokens.write_text(json.dumps({"admin": "bench-admin", "game": [{"token": TOKEN, "rate": 1e9}]}))
        cluster = Cluster(folder / "cluster", nodes=1, port=free_port())
        targets: dict[str, Router] = {}
        try:
            targets["plain"] = start_router(cluster, folder, "plain")
            targets["--tokens"] = start_router(cluster, folder, "tokens", "--tokens", str(tokens))
            asyncio.run(seed(targets["--tokens"].address))
            for method in ("GetRank", "UpdateScore"):
                report(method, run_rounds(method, targets, args.rounds, args.seconds))
        finally:
            for router in targets.values():
                router.process.stop()
            cluster.stop()
    return 0


def run_rounds(method: str, targets: dict[str, Router], rounds: int, seconds: float) -> dict[str, list[Round]]:
    results: dict[str, list[Round]] = {name: [] for name in targets}
    names = list(targets)
    for n in range(rounds):
        for name in names if n % 2 == 0 else reversed(names):  # neither always runs first
            results[name].append(measure(targets[name], method, seconds))
        shown = (f"{k} {v[-1].calls_per_s:,.0f}/s {v[-1].cpu_us_per_call:.0f} us" for k, v in results.items())
        print(f"{method} round {n + 1}: " + ", ".join(shown), flush=True)
    return results


def report(method: str, results: dict[str, list[Round]]) -> None:
    def median(name: str, value: str) -> float:
        return statistics.median(getattr(r, value) for r in results[name])

    rate, cpu = (
        (median("plain", "calls_per_s"), median("--tokens", "calls_per_s")),
        (
            median("plain", "cpu_us_per_call"),
            median("--tokens", "cpu_us_per_call"),
        ),
    )
    spread = max(statistics.pstdev(r.calls_per_s for r in v) / rate[0] for v in results.values())
    print(
        f"{method} medians: plain {rate[0]:,.0f}/s {cpu[0]:.1f} us router CPU/call; --tokens {rate[1]:,.0f}/s "
        f"({100 * (rate[1] / rate[0] - 1):+.1f}%) {cpu[1]:.1f} us ({100 * (cpu[1] / cpu[0] - 1):+.1f}%); "
        f"calls/s stdev between rounds up to {100 * spread:.1f}%",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
