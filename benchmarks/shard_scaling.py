"""Node work per call against a board's number of shards: ``python -m rankshard.benchmarks.shard_scaling
[--shards 4,16,64,256] [--members 100000] [--seconds 6] [--in-flight 64] [--rounds 1] [--traffic even|model]``.

A local cluster of two nodes (``cluster up``) gets one board per shard count (``leaderboards create
--boundaries``), each with `--members` members (``leaderboards import``). With ``--traffic even`` (the default)
scores are uniform, cut points spread evenly over them (every shard holds about as many members), and updates add
1..10 points, so few members cross a boundary; with ``--traffic model`` scores, cut points and points per game are
the bench's traffic model's (`TrafficModel`: equal-population shards of a skewed score line, games adding 41 points
on average), as ``rankshard bench`` measures its shard-count series. For each board, closed loop with
`--in-flight` calls in flight from this process: GetRank, then UpdateScore with request ids. Node CPU per call is
both nodes' ``used_cpu_user + used_cpu_sys`` over a window divided by the calls it served; each figure is printed
with its ratio to the fewest shards' figure, and beside UpdateScore the share of its updates that crossed a
boundary (told from each answer: its score less the points added, against the board's cut points) and the nodes'
round trips per UpdateScore (``total_reads_processed`` of both nodes over the window). With `--rounds`
above 1 the boards are measured round-robin that many times and the median of each is printed. A benchmark, not a
test: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._model import TrafficModel
from ._procs import Cluster, free_port

MAX_SCORE = 1_000_000
MODEL = TrafficModel()
"""The bench's traffic model, for ``--traffic model``."""


def rankshard(data_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "rankshard.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"rankshard {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def board_name(shards: int) -> str:
    return f"shards{shards}"


def cut_points(traffic: str, shards: int) -> list[int]:
    """The board's cut points: even over 0..MAX_SCORE, or the traffic model's equal-population ones."""
    if traffic == "model":
        return MODEL.boundaries(shards)
    return [MAX_SCORE * i // shards for i in range(1, shards)]


def points(traffic: str, rng: random.Random) -> int:
    """What one update adds: 1..10 points, or one of the traffic model's games."""
    return MODEL.sample_points(rng) if traffic == "model" else rng.randint(1, 10)


def create_boards(data_dir: Path, tmp: Path, counts: list[int], members: int, traffic: str = "even") -> None:
    rng = random.Random(7)
    score = (lambda: MODEL.sample_score(rng)) if traffic == "model" else (lambda: rng.randrange(MAX_SCORE))
    source = tmp / "members.csv"
    source.write_text("".join(f"u{i},{score()}\n" for i in range(members)))
    for n in counts:
        cuts = cut_points(traffic, n)
        board = board_name(n)
        rankshard(
            data_dir, "leaderboards", "create", board, "--boundaries", ",".join(map(str, cuts)),
            "--expected-members", str(members),
        )  # fmt: skip
        t = time.monotonic()
        rankshard(data_dir, "leaderboards", "import", board, str(source))
        print(f"{board}: {n} shards, {members:,} members imported in {time.monotonic() - t:.1f} s", flush=True)


async def closed_loop(
    address: str,
    make: Callable[[pb_grpc.LeaderboardStub, int], object],
    in_flight: int,
    seconds: float,
    cpu: Callable[[], float],
    reads: Callable[[], int],
) -> tuple[float, float, float]:
    """Calls made by `in_flight` workers for 1 s of warm-up then `seconds`; returns node CPU µs per call of the
    measured window, calls per second, and node round trips (`reads`: read events of every node) per call."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LeaderboardStub(channel)
        calls = 0
        counting = False
        stop = False
        seq = 0

        async def worker() -> None:
            nonlocal calls, seq
            while not stop:
                seq += 1
                await make(stub, seq)  # type: ignore[misc]
                if counting:
                    calls += 1

        tasks = [asyncio.create_task(worker()) for _ in range(in_flight)]
        await asyncio.sleep(1.0)
        before, read_before = cpu(), reads()
        counting = True
        await asyncio.sleep(seconds)
        counting = False
        used, trips = cpu() - before, reads() - read_before
        stop = True
        await asyncio.gather(*tasks)
    return 1e6 * used / max(1, calls), calls / seconds, trips / max(1, calls)


def measure(cluster: Cluster, shards: int, members: int, args: argparse.Namespace) -> dict[str, float]:
    board = board_name(shards)
    rng = random.Random(board)

    def get_rank(stub: pb_grpc.LeaderboardStub, _: int) -> object:
        user = f"u{rng.randrange(members)}"
        return stub.GetRank(pb.GetRankRequest(leaderboard=board, user_id=user), timeout=30)

    run = f"{time.time_ns()}"
    cuts = cut_points(args.traffic, shards)
    crossed = [0, 0]  # updates answered, and those whose score crossed a cut point

    async def update(stub: pb_grpc.LeaderboardStub, seq: int) -> object:
        user = f"u{rng.randrange(members)}"
        added = points(args.traffic, rng)
        request = pb.UpdateScoreRequest(leaderboard=board, user_id=user, score=added, request_id=f"{run}-{seq}")
        reply = await stub.UpdateScore(request, timeout=30)
        crossed[0] += 1
        crossed[1] += bisect.bisect_right(cuts, reply.score - added) != bisect.bisect_right(cuts, reply.score)
        return reply

    out = {}
    for name, make in (("get_rank", get_rank), ("update", update)):
        out[name], out[f"{name}_per_s"], out[f"{name}_trips"] = asyncio.run(
            closed_loop(
                cluster.address, make, args.in_flight, args.seconds, cluster.node_cpu_seconds, cluster.node_reads
            )
        )
    out["crossed"] = crossed[1] / max(1, crossed[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="4,16,64,256", help="shard counts, comma-separated")
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--traffic", choices=("even", "model"), default="even")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.shards.split(","))
    with tempfile.TemporaryDirectory(prefix="rankshard-shard-scaling-") as tmp:
        data_dir = Path(tmp) / "cluster"
        cluster = Cluster(data_dir, nodes=2, port=free_port())
        try:
            create_boards(data_dir, Path(tmp), counts, args.members, args.traffic)
            rows: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
            for r in range(args.rounds):
                for n in counts:
                    rows[n].append(measure(cluster, n, args.members, args))
                    print(f"  round {r + 1}, {n} shards: {rows[n][-1]}", flush=True)
        finally:
            cluster.stop()
    kinds = ("get_rank", "update", "get_rank_per_s", "update_per_s", "update_trips", "crossed")
    median = {n: {k: statistics.median(row[k] for row in rows[n]) for k in kinds} for n in counts}
    base = median[counts[0]]
    print(
        f"node CPU per call, 2 nodes, {args.members:,} members, {args.in_flight} in flight, {args.traffic} traffic, "
        f"median of {args.rounds}"
    )
    print(
        f"{'shards':>6}  {'GetRank µs':>10}  {'ratio':>5}  {'calls/s':>7}"
        f"  {'UpdateScore µs':>14}  {'ratio':>5}  {'calls/s':>7}  {'trips':>5}  {'crossed':>7}"
    )
    for n in counts:
        m = median[n]
        print(
            f"{n:>6}  {m['get_rank']:>10.1f}  {m['get_rank'] / base['get_rank']:>5.2f}  {m['get_rank_per_s']:>7.0f}"
            f"  {m['update']:>14.1f}  {m['update'] / base['update']:>5.2f}  {m['update_per_s']:>7.0f}"
            f"  {m['update_trips']:>5.2f}  {m['crossed']:>7.0%}"
        )


if __name__ == "__main__":
    main()
