"""Loading members, and the storage baselines: raw redis-py against a node, and a bare sorted set's memory.

`probe_request_ids` and `raw_baseline` run inside load-generator processes (picklable arguments, JSON results).
Scores are a pure function of (seed, member index), so the bare sorted set holds exactly the members
and scores the board was loaded with.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import redis
import redis.asyncio as aioredis

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._loadgen import user_id
from ._model import TrafficModel

CHUNK = 1000
"""Members per unit of loading (and of the request-id probe)."""
_BARE_KEY = "bench:bare-zset"
_RAW_KEY = "bench:raw-zset"


def chunk_scores(model: TrafficModel, seed: int, start: int) -> list[tuple[str, int]]:
    """Members start..start+CHUNK-1 (`start` a multiple of CHUNK) and their preloaded scores."""
    rng = random.Random(seed * 1_000_003 + start)
    return [(user_id(i), model.sample_score(rng)) for i in range(start, start + CHUNK)]


def probe_request_ids(address: str, board: str, seed: int, chunks: list[int], in_flight: int = 4) -> float:
    """Sends each member of the given chunks a zero delta with a request id through BatchUpdateScores, as a
    game backend's retry-safe call would (the score stays, and the member now holds one request-id
    record); returns the seconds it took."""
    return asyncio.run(_probe(address, board, seed, chunks, in_flight))


async def _probe(address: str, board: str, seed: int, chunks: list[int], in_flight: int) -> float:
    started = time.perf_counter()
    queue = list(reversed(chunks))
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
        stub = pb_grpc.LeaderboardStub(ch)

        async def worker() -> None:
            while queue:
                start = queue.pop()
                # Calls of 100, as a backend reporting matches would send them.
                for at in range(start, start + CHUNK, 100):
                    updates = [pb.ScoreUpdate(user_id=user_id(i), score=0, request_id=f"match-{seed}-{i:012d}")
                               for i in range(at, at + 100)]
                    await stub.BatchUpdateScores(pb.BatchUpdateScoresRequest(leaderboard=board, updates=updates),
                                                 timeout=120)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


def bare_zset_bytes(node: redis.Redis, model: TrafficModel, seed: int, members: int) -> dict[str, int]:
    """used_memory (and RSS) the node needs for one plain sorted set of the first `members` preloaded
    members with their scores; the key is deleted afterwards."""
    node.delete(_BARE_KEY)
    before = node.info("memory")
    for start in range(0, members, CHUNK):
        mapping = dict(chunk_scores(model, seed, start)[: members - start])
        node.zadd(_BARE_KEY, mapping)
    after = node.info("memory")
    node.delete(_BARE_KEY)
    wait_lazy_free(node)
    return {"used_memory": int(after["used_memory"]) - int(before["used_memory"]),
            "rss": int(after["used_memory_rss"]) - int(before["used_memory_rss"])}


def wait_lazy_free(node: redis.Redis, timeout: float = 120.0) -> None:
    """Waits until the node has freed what deletions handed to its background thread (Valkey frees big
    keys lazily), so the next used_memory reading is not shrinking under the measurement."""
    deadline = time.monotonic() + timeout
    while int(node.info("memory").get("lazyfree_pending_objects", 0)) and time.monotonic() < deadline:
        time.sleep(0.05)


def raw_baseline(address: str, seconds: float, pipelined: bool, batch: int = 100, tasks: int = 50) -> dict[str, float]:
    """What one Python process gets from a node with redis-py (hiredis parser) doing a bare leaderboard's
    work per update: ZINCRBY then ZREVRANK. Pipelined: batches of `batch` updates, 4 batches in flight;
    otherwise `tasks` coroutines, one command per await. Returns updates/s and the process's CPU time."""
    return asyncio.run(_raw(address, seconds, pipelined, batch, tasks))


async def _raw(address: str, seconds: float, pipelined: bool, batch: int, tasks: int) -> dict[str, float]:
    host, _, port = address.rpartition(":")
    client = aioredis.Redis(host=host, port=int(port), max_connections=256)
    rng = random.Random(3)
    done = 0
    try:
        await client.delete(_RAW_KEY)
        cpu0, t0 = time.process_time(), time.perf_counter()
        end = t0 + seconds

        async def one_by_one() -> None:
            nonlocal done
            while time.perf_counter() < end:
                member = user_id(rng.randrange(1_000_000))
                await client.zincrby(_RAW_KEY, rng.randrange(1, 100), member)
                await client.zrevrank(_RAW_KEY, member)
                done += 1

        async def in_batches() -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(batch):
                        member = user_id(rng.randrange(1_000_000))
                        pipe.zincrby(_RAW_KEY, rng.randrange(1, 100), member)
                        pipe.zrevrank(_RAW_KEY, member)
                    await pipe.execute()
                done += batch

        workers = [in_batches() for _ in range(4)] if pipelined else [one_by_one() for _ in range(tasks)]
        await asyncio.gather(*workers)
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await client.delete(_RAW_KEY)
    finally:
        await client.aclose()
    return {"updates_per_s": done / took, "cpu_s": cpu, "seconds": took, "updates": done}
