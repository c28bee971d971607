"""The storage side of `rankshard bench`'s batch baseline: BatchUpdateScores' node operations, driven
directly by one process, without a router or gRPC in between.

This baseline is one Python process driving the same node operations directly. The benchmarks see
rankshard only through its public surfaces (gRPC, the CLI), and the node operations lie below them, so
the CLI, which may use shard_node, hands this function to the bench
(`run_bench(direct=...)`). It runs in a load-generator process (module-level, picklable arguments, a
JSON-ready result).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Coroutine
from typing import Any

from rankshard.benchmarks import TrafficModel
from rankshard.benchmarks._loadgen import user_id
from rankshard.shard_map import ControlPlane
from rankshard.shard_node import BoardLayout, Update, apply_updates, connect_cluster


def direct_batches(
    control_plane: str,
    board: str,
    seconds: float,
    population: int,
    seed: int,
    model: TrafficModel,
    in_flight: int = 64,
    batch: int = 100,
) -> dict[str, float]:
    """Runs `apply_updates` for `seconds` on batches of `batch` updates, `in_flight` batches at once,
    each update what the load generator's BatchUpdateScores calls carry: a preloaded member, a game's
    points, a request id of its own. Returns updates/s, this process's CPU time, and how many updates
    were applied (on an increment board all of them: none is a retry).

    `in_flight` is as many as the load generators keep at the router (single runs on a 16-shard board
    gave 10.3-13.5k updates/s with 16, 13.7-16.0k with 64, 11.5-14.6k with 128)."""
    return _run(_direct(control_plane, board, seconds, population, seed, model, in_flight, batch))


async def _direct(
    control_plane: str,
    board: str,
    seconds: float,
    population: int,
    seed: int,
    model: TrafficModel,
    in_flight: int,
    batch: int,
) -> dict[str, float]:
    rng = random.Random(seed * 7919 + os.getpid())
    ids = itertools.count()
    # Unique per run, as the load generator's: a request id sent again would be answered as a retry
    # (a 'dup', no write), and a baseline of retries is a cheaper workload than the one it stands for.
    tag = f"direct-{os.getpid()}-{time.time_ns()}"
    async with await ControlPlane.open(control_plane) as cp:
        layout = BoardLayout(await cp.get_board(board), await cp.shard_map(board))
        cluster = await connect_cluster(cp)
    done = applied = 0

    async def worker(end: float) -> None:
        nonlocal done, applied
        while time.perf_counter() < end:
            updates = [
                Update(user_id(rng.randrange(population)), model.sample_points(rng), f"{tag}-{next(ids)}")
                for _ in range(batch)
            ]
            outcomes = await apply_updates(cluster, layout, updates)
            done += batch
            applied += sum(o.applied for o in outcomes)

    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(t0 + seconds) for _ in range(in_flight)))
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await cluster.aclose()  # the marks still to clear are cleared first, as a router's would be
    return {"updates_per_s": done / took, "cpu_s": cpu, "seconds": took, "updates": done, "applied": applied}


def _run(main: Coroutine[Any, Any, dict[str, float]]) -> dict[str, float]:
    """On uvloop when it is installed, as the router runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
