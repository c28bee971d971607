"""Node CPU per batched update, beside a bare sorted set on the same nodes in the same run: ``python -m
rankshard.benchmarks.node_cost [--members 200000] [--shards 4] [--seconds 10] [--rounds 3] [--warm-records 8]
[--out DIR]``.

A local cluster of two nodes (``cluster up``) gets a board of `--shards` shards (cut at the traffic model's
quantiles, spread over both nodes) and `--members` members (``leaderboards import``). Then, `--rounds` times,
interleaved:

1. **rankshard**: BatchUpdateScores(100) through the router, every update with a request id never used before,
   8 calls in flight, members drawn at random from the board, for `--seconds`;
2. **bare**: what a bare leaderboard does per update, ZINCRBY then ZREVRANK, pipelined in batches of 100 with 8
   batches in flight, on one plain sorted set of `--members` members on each of the same nodes.

Each phase reports the nodes' CPU (``used_cpu_user + used_cpu_sys`` of both, as the nodes count it) per update,
and for rankshard the ``INFO commandstats`` deltas per update (calls and µs per command: EVALSHA's µs include
the commands its scripts run, so EVALSHA minus the others is the scripts' own interpretation). The figures are the
medians over rounds; the ratio is the median of each round's ratio. Writes them as JSON to `--out` (default
benchmarks/results/node_cost). A benchmark, not a test: figures only, no pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis

from rankshard.v1 import admin_pb2 as apb
from rankshard.v1 import admin_pb2_grpc as apb_grpc
from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._loadgen import user_id
from ._model import TrafficModel
from ._procs import Cluster, free_port
from ._replies import info

BOARD = "cost"
BARE_KEY = "bench:bare"
"""The bare sorted set on each node (not an ``rs:`` key: rankshard's scripts never see it)."""
BATCH = 100
IN_FLIGHT = 8


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rankshard.benchmarks.node_cost", description=__doc__)
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warm-records",
        type=int,
        default=0,
        help="before measuring, this many updates with request ids per member (8: every member holds a full "
        "request-id record list, as the members active in the last hour do)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "node_cost")
    args = parser.parse_args()
    result = measure(args)
    report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"node_cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written to {path}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rankshard-node-cost-") as tmp:
        cluster = Cluster(Path(tmp) / "cluster", nodes=2, port=free_port())
        try:
            return _run(cluster, args)
        finally:
            cluster.stop()


def _run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    model = TrafficModel()
    rng = random.Random(7)
    _create_board(cluster, model.boundaries(args.shards), args.members)
    t = time.monotonic()
    _import(cluster, (f"{user_id(i)},{model.sample_score(rng)}\n" for i in range(args.members)))
    print(f"imported {args.members:,} members in {time.monotonic() - t:.1f} s", flush=True)
    nodes = [cluster.node(a) for a in cluster.nodes]
    for node in nodes:
        _fill_bare(node, args.members, model, rng)
    seq = itertools.count()
    _rankshard_phase(cluster.address, 2.0, args.members, model, seq)  # warm-up: connections, scripts, records
    if args.warm_records:
        t = time.monotonic()
        asyncio.run(_fill_records(cluster.address, args.members, args.warm_records, model, seq))
        print(f"{args.warm_records} request ids per member in {time.monotonic() - t:.1f} s", flush=True)
    rounds = []
    for r in range(args.rounds):
        ours = _phase(nodes, lambda: _rankshard_phase(cluster.address, args.seconds, args.members, model, seq))
        bare = _phase(nodes, lambda: _bare_phase(cluster.nodes, args.seconds, args.members, model))
        rounds.append({"rankshard": ours, "bare": bare, "ratio": ours["node_us"] / bare["node_us"]})
        print(
            f"round {r + 1}: rankshard {ours['node_us']:.1f} µs/update ({ours['updates_per_s']:,.0f}/s), "
            f"bare {bare['node_us']:.1f} µs/update ({bare['updates_per_s']:,.0f}/s), ratio {rounds[-1]['ratio']:.2f}",
            flush=True,
        )
    for node in nodes:
        node.delete(BARE_KEY)
    return {
        "members": args.members,
        "shards": args.shards,
        "seconds": args.seconds,
        "warm_records": args.warm_records,
        "rounds": rounds,
    }


def _phase(nodes: list[redis.Redis], drive: Any) -> dict[str, Any]:
    """Runs `drive` (it returns updates and seconds) between two readings of the nodes' CPU and commandstats."""
    cpu0, stats0 = _cpu(nodes), _commandstats(nodes)
    updates, seconds = drive()
    cpu1, stats1 = _cpu(nodes), _commandstats(nodes)
    per_command = {}
    for name, (calls, usec) in stats1.items():
        c0, u0 = stats0.get(name, (0, 0.0))
        if calls > c0:
            per_command[name] = {"calls": (calls - c0) / updates, "us": (usec - u0) / updates}
    return {
        "updates": updates,
        "updates_per_s": updates / seconds,
        "node_us": 1e6 * (cpu1 - cpu0) / updates,
        "commands": dict(sorted(per_command.items(), key=lambda kv: -kv[1]["us"])),
    }


def _cpu(nodes: list[redis.Redis]) -> float:
    total = 0.0
    for node in nodes:
        cpu = info(node, "cpu")
        total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return total


def _commandstats(nodes: list[redis.Redis]) -> dict[str, tuple[int, float]]:
    """Calls and µs per command, summed over `nodes`."""
    total: dict[str, tuple[int, float]] = {}
    for node in nodes:
        for key, value in info(node, "commandstats").items():
            name = key.removeprefix("cmdstat_")
            calls, usec = total.get(name, (0, 0.0))
            total[name] = (calls + int(value["calls"]), usec + float(value["usec"]))
    return total


def _create_board(cluster: Cluster, boundaries: list[int], members: int) -> None:
    channel = grpc.insecure_channel(cluster.address)
    try:
        admin = apb_grpc.AdminStub(channel)
        admin.CreateLeaderboard(
            apb.LeaderboardConfig(name=BOARD, boundaries=boundaries, expected_members=members), timeout=30
        )
        shard_map = admin.GetShardMap(apb.GetShardMapRequest(leaderboard=BOARD), timeout=30)
        print("shards: " + ", ".join(f"{s.id} on {s.node}" for s in shard_map.shards), flush=True)
    finally:
        channel.close()


def _import(cluster: Cluster, lines: Any) -> None:
    argv = [sys.executable, "-m", "rankshard.cli", "--control-plane", cluster.control_plane]
    argv += ["leaderboards", "import", BOARD, "-"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdin is not None
        for line in lines:
            proc.stdin.write(line)
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError(f"leaderboards import failed ({proc.returncode})")


def _fill_bare(node: redis.Redis, members: int, model: TrafficModel, rng: random.Random) -> None:
    node.delete(BARE_KEY)
    for start in range(0, members, 10_000):
        node.zadd(BARE_KEY, {user_id(i): model.sample_score(rng) for i in range(start, min(start + 10_000, members))})


def _rankshard_phase(
    address: str, seconds: float, members: int, model: TrafficModel, seq: itertools.count[int]
) -> tuple[int, float]:
    return asyncio.run(_drive_router(address, seconds, members, model, seq))


async def _drive_router(
    address: str, seconds: float, members: int, model: TrafficModel, seq: itertools.count[int]
) -> tuple[int, float]:
    rng = random.Random(11)
    done = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LeaderboardStub(channel)
        t0 = time.perf_counter()
        end = t0 + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                updates = [
                    pb.ScoreUpdate(
                        user_id=user_id(rng.randrange(members)),
                        score=model.sample_points(rng),
                        request_id=f"c{next(seq)}",
                    )
                    for _ in range(BATCH)
                ]
                request = pb.BatchUpdateScoresRequest(leaderboard=BOARD, updates=updates)
                for attempt in range(5):
                    try:
                        await stub.BatchUpdateScores(request, timeout=60)
                        break
                    except grpc.aio.AioRpcError as exc:
                        # A node slow for a moment (an AOF rewrite on a shared machine) is passing: the same
                        # request ids again are answered once.
                        if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                            raise
                        await asyncio.sleep(0.2)
                done += BATCH

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return done, time.perf_counter() - t0


async def _fill_records(
    address: str, members: int, per_member: int, model: TrafficModel, seq: itertools.count[int]
) -> None:
    """`per_member` updates with request ids for every member, in BatchUpdateScores(100) calls, 8 in flight."""
    rng = random.Random(17)
    batches = iter(range(0, members * per_member, BATCH))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LeaderboardStub(channel)

        async def worker() -> None:
            for start in batches:
                updates = [
                    pb.ScoreUpdate(
                        user_id=user_id(i % members), score=model.sample_points(rng), request_id=f"c{next(seq)}"
                    )
                    for i in range(start, min(start + BATCH, members * per_member))
                ]
                await stub.BatchUpdateScores(
                    pb.BatchUpdateScoresRequest(leaderboard=BOARD, updates=updates), timeout=60
                )

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


def _bare_phase(addresses: list[str], seconds: float, members: int, model: TrafficModel) -> tuple[int, float]:
    return asyncio.run(_drive_bare(addresses, seconds, members, model))


async def _drive_bare(addresses: list[str], seconds: float, members: int, model: TrafficModel) -> tuple[int, float]:
    rng = random.Random(13)
    clients = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        clients.append(aioredis.Redis(host=host, port=int(port), max_connections=IN_FLIGHT))
    done = 0
    try:
        t0 = time.perf_counter()
        end = t0 + seconds

        async def worker(client: aioredis.Redis) -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(BATCH):
                        member = user_id(rng.randrange(members))
                        pipe.zincrby(BARE_KEY, model.sample_points(rng), member)
                        pipe.zrevrank(BARE_KEY, member)
                    await pipe.execute()
                done += BATCH

        # The batches spread over both nodes, as a board's shards are.
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(IN_FLIGHT)))
        return done, time.perf_counter() - t0
    finally:
        for client in clients:
            await client.aclose()


def report(result: dict[str, Any]) -> None:
    rounds = result["rounds"]

    def med(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in rounds)

    print(f"\nnode CPU per update, {result['shards']} shards on 2 nodes, {result['members']:,} members, medians:")
    print(
        f"  rankshard BatchUpdateScores({BATCH}) with request ids, {IN_FLIGHT} in flight: "
        f"{med('rankshard', 'node_us'):.1f} µs"
    )
    print(f"  bare ZINCRBY+ZREVRANK pipelined in {BATCH}s: {med('bare', 'node_us'):.1f} µs")
    print(f"  ratio: {statistics.median(r['ratio'] for r in rounds):.2f}")
    print("commandstats per rankshard update (median calls, µs):")
    names = {n for r in rounds for n in r["rankshard"]["commands"]}
    rows = []
    for name in names:
        calls = statistics.median(r["rankshard"]["commands"].get(name, {"calls": 0})["calls"] for r in rounds)
        us = statistics.median(r["rankshard"]["commands"].get(name, {"us": 0})["us"] for r in rounds)
        rows.append((us, name, calls))
    inner = sum(us for us, name, _ in rows if name not in ("evalsha", "eval", "info"))
    for us, name, calls in sorted(rows, reverse=True):
        if calls >= 0.001:
            print(f"  {name:<14} {calls:7.3f} calls {us:7.2f} µs")
    evalsha = next((us for us, name, _ in rows if name == "evalsha"), 0.0)
    print(
        f"  scripts' commands {inner:.1f} µs; EVALSHA {evalsha:.1f} µs, of which Lua itself ~{evalsha - inner:.1f} µs"
    )


if __name__ == "__main__":
    main()
