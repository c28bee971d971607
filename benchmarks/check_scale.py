"""How long `rankshard check` takes on a big board: ``python -m rankshard.benchmarks.check_scale --members 1000000``.

Starts a local cluster in a temporary folder, loads the board through BatchUpdateScores (the public
API), then times `rankshard check` and `rankshard repair` (which, on a sound board, is a full scan too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

BATCH = 1000
IN_FLIGHT = 4


async def load(address: str, members: int, seed: int) -> float:
    rng = random.Random(seed)
    started = time.monotonic()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LeaderboardStub(channel)
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        for start in range(0, members, BATCH):
            queue.put_nowait(start)

        async def worker() -> None:
            while not queue.empty():
                start = queue.get_nowait()
                assert start is not None
                updates = [
                    pb.ScoreUpdate(user_id=f"user-{i:09d}", score=int(rng.expovariate(1 / 1000)))
                    for i in range(start, min(members, start + BATCH))
                ]
                await stub.BatchUpdateScores(
                    pb.BatchUpdateScoresRequest(leaderboard="global", updates=updates), timeout=60
                )
                done = start + len(updates)
                if done % 100_000 < BATCH:
                    print(f"  loaded {done:,} in {time.monotonic() - started:.0f}s", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.monotonic() - started


def timed(*args: str) -> tuple[float, str]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rankshard.cli", *args], capture_output=True, text=True)
    return time.monotonic() - started, (out.stdout + out.stderr).strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rankshard-check-") as tmp:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankshard.cli",
                "--data-dir",
                tmp,
                "cluster",
                "up",
                "--shards",
                "8",
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "RANKSHARD_PG_FAST": "1"},
        )
        try:
            assert up.stdout is not None
            dsn = ""
            for line in up.stdout:
                if "control plane" in line:
                    dsn = line.split()[-1]
                if "router listening on" in line:
                    break
            seconds = asyncio.run(load(f"127.0.0.1:{port}", args.members, args.seed))
            print(f"loaded {args.members:,} members in {seconds:.1f}s ({args.members / seconds:,.0f}/s)")
            for command in (["check", "-l", "global"], ["repair", "-l", "global"]):
                took, last = timed("--control-plane", dsn, *command)
                print(f"rankshard {' '.join(command)}: {took:.1f}s  ({last})")
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(60)


if __name__ == "__main__":
    main()
