"""Loading members, and the storage baselines: raw redis-py against a node, and a bare sorted set's memory.

`probe_request_ids` and `raw_baseline` run inside load-generator processes (picklable arguments, JSON results).
Scores are a pure function of (seed, member index); the bare sorted set is built from the board's own
shards, so it holds exactly the members and scores the board holds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis

from rankshard.v1 import leaderboard_pb2 as pb
from rankshard.v1 import leaderboard_pb2_grpc as pb_grpc

from ._loadgen import user_id
from ._model import TrafficModel
from ._replies import config_value, dump, info

CHUNK = 1000
"""Members per unit of loading (and of the request-id probe)."""
_BARE_KEY = "bench:bare-zset"
_RAW_KEY = "bench:raw-zset"
_SHARD_KEYS = "rs:z:{board}/*"
"""A board's shard sorted sets (shard_node/_keys.py: benchmarks see the cluster from outside, as an SRE would)."""


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
                    updates = [
                        pb.ScoreUpdate(user_id=user_id(i), score=0, request_id=f"match-{seed}-{i:012d}")
                        for i in range(at, at + 100)
                    ]
                    await stub.BatchUpdateScores(
                        pb.BatchUpdateScoresRequest(leaderboard=board, updates=updates), timeout=120
                    )

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


_COPY_PAGE = """
local page = redis.call('ZRANGE', KEYS[1], ARGV[1], tonumber(ARGV[1]) + 999, 'WITHSCORES')
local args = {}
for i = 1, #page, 2 do args[#args + 1] = page[i + 1]; args[#args + 1] = page[i] end
if #args > 0 then redis.call('ZADD', KEYS[2], unpack(args)) end
return #page / 2
"""
"""Members start..start+999 of sorted set KEYS[1] into KEYS[2], by ZADD (as a client would add them: a set
built by ZUNIONSTORE is laid out differently, about 10% bigger)."""


def bare_zset_bytes(nodes: list[redis.Redis], board: str) -> dict[str, int]:
    """used_memory (and RSS) one node needs for one plain sorted set of every member of `board` with its
    stored score, added by ZADD: the board's shard sets are copied into it on the first node (shards
    elsewhere are brought there first, DUMP/RESTORE, and are in both readings). The set and the copies
    are deleted afterwards."""
    home = nodes[0]
    sources: list[bytes | str] = []
    for i, node in enumerate(nodes):
        for key in node.scan_iter(match=_SHARD_KEYS.format(board=board), count=1000, _type="zset"):
            if i == 0:
                sources.append(key)
            else:
                sources.append(f"{_BARE_KEY}:copy:{len(sources)}")
                home.restore(sources[-1], 0, dump(node, key), replace=True)
    copy_page = home.register_script(_COPY_PAGE)
    home.delete(_BARE_KEY)
    with no_aof_rewrite([home]):
        before = info(home, "memory")
        for key in sources:
            at = 0
            while (n := copy_page(keys=[key, _BARE_KEY], args=[at])) > 0:
                at += n
        after = info(home, "memory")
    home.delete(_BARE_KEY, *(k for k in sources if isinstance(k, str)))
    wait_lazy_free(home)
    return {
        "used_memory": int(after["used_memory"]) - int(before["used_memory"]),
        "rss": int(after["used_memory_rss"]) - int(before["used_memory_rss"]),
    }


@contextmanager
def no_aof_rewrite(nodes: list[redis.Redis], timeout: float = 300.0) -> Iterator[None]:
    """Inside: no AOF rewrite runs on `nodes` (one under way is waited for first). While a rewrite's child
    process lives, Valkey puts off growing hash tables, which moves used_memory by about 10%: a memory
    reading then says more about the moment than about the data."""
    with ExitStack() as stack:
        for node in nodes:
            old = config_value(node, "auto-aof-rewrite-percentage")
            node.config_set("auto-aof-rewrite-percentage", 0)
            stack.callback(node.config_set, "auto-aof-rewrite-percentage", old)
        _wait_no_rewrite(nodes, timeout)
        yield


@contextmanager
def aof_paused(nodes: list[redis.Redis], timeout: float = 600.0) -> Iterator[None]:
    """Inside: `nodes` keep no append-only file; on the way out the ones that kept one before write it
    afresh from their data (Valkey rewrites it when it is turned back on), and this waits for that. For
    filling a board to a size, not for anything timed: writing a bulk load's log is a share of the nodes'
    work (a tenth to a fifth of it here), and only the data is measured afterwards."""
    paused = [n for n in nodes if int(info(n, "persistence").get("aof_enabled", 0))]
    for node in paused:
        node.config_set("appendonly", "no")
    try:
        yield
    finally:
        for node in paused:
            node.config_set("appendonly", "yes")
        _wait_no_rewrite(paused, timeout)


def compact_aof(nodes: list[redis.Redis], timeout: float = 600.0) -> None:
    """Rewrites each node's append-only file now and waits until it is done. Loading leaves a log many
    times the size of the data; left alone, its automatic rewrite (a child process copying the whole
    dataset, and copy-on-write faults in the node) lands in the middle of a later measurement."""
    for node in nodes:
        if int(info(node, "persistence").get("aof_enabled", 0)):
            try:
                node.bgrewriteaof()
            except redis.ResponseError:
                pass  # one is under way already
    _wait_no_rewrite(nodes, timeout)


def _wait_no_rewrite(nodes: list[redis.Redis], timeout: float) -> None:
    """Waits (at most `timeout` seconds) until no node has an AOF rewrite running or scheduled."""
    deadline = time.monotonic() + timeout

    def busy(node: redis.Redis) -> bool:
        state = info(node, "persistence")
        return bool(int(state["aof_rewrite_in_progress"]) or int(state.get("aof_rewrite_scheduled", 0)))

    while any(busy(n) for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_lazy_free(node: redis.Redis, timeout: float = 120.0) -> None:
    """Waits until the node has freed what deletions handed to its background thread (Valkey frees big
    keys lazily), so the next used_memory reading is not shrinking under the measurement."""
    deadline = time.monotonic() + timeout
    while int(info(node, "memory").get("lazyfree_pending_objects", 0)) and time.monotonic() < deadline:
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


BARE_KEY = "bench:bare"
"""The bare sorted set on each node: a board's members and scores in one plain key, as a leaderboard built on a
bare sorted set keeps them (not an ``rs:`` key: rankshard's scripts never see it)."""
BARE_KINDS = ("update", "rank", "top", "around")


def fill_bare(nodes: list[redis.Redis], model: TrafficModel, seed: int, population: int) -> None:
    """Each node gets BARE_KEY holding members 0..population-1 (CHUNK-aligned) with their preloaded scores: the
    same members and scores as a board of the shard-count series."""
    for node in nodes:
        node.delete(BARE_KEY)
        for at in range(0, population, CHUNK):
            node.zadd(BARE_KEY, dict(chunk_scores(model, seed, at)))


def bare_phase(
    addresses: list[str],
    kind: str,
    seconds: float,
    population: int,
    in_flight: int,
    *,
    batch: int = 100,
    radius: int = 4,
    top: int = 10,
) -> dict[str, Any]:
    """What a leaderboard on a bare sorted set (BARE_KEY on each node, `fill_bare`) asks of its nodes for
    calls of `kind`, driven from one process with redis-py (hiredis parser) for `seconds`: pipelines of
    `batch` calls, `in_flight` pipelines at once, spread evenly over the nodes at `addresses` (the cheapest
    way a service in front of bare sorted sets sends its clients' calls: batched across them, as rankshard's
    router batches its own). Per call:

    - update: ZINCRBY then ZREVRANK;
    - rank: ZREVRANK and ZCARD;
    - top: ZREVRANGE 0 top-1 WITHSCORES and ZCARD;
    - around: ZREVRANK, then (a second round trip, once the rank is known) ZREVRANGE rank-radius
      rank+radius WITHSCORES and ZCARD.

    Returns calls (= items: updates or reads), their rate, this process's CPU time and the nodes' own CPU
    time (``used_cpu_user + used_cpu_sys``, read right before and right after the timed window)."""
    if kind not in BARE_KINDS:
        raise ValueError(f"kind: one of {', '.join(BARE_KINDS)}, got {kind!r}")
    return asyncio.run(_bare(addresses, kind, seconds, population, in_flight, batch, radius, top))


async def _node_cpu(clients: list[aioredis.Redis]) -> list[float]:
    out = []
    for c in clients:
        cpu = await c.info("cpu")
        out.append(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))
    return out


async def _node_reads(clients: list[aioredis.Redis]) -> int:
    """The nodes' read events so far (``total_reads_processed``): one per round trip a client's write woke."""
    total = 0
    for c in clients:
        total += int((await c.info("stats"))["total_reads_processed"])
    return total


async def _bare(
    addresses: list[str], kind: str, seconds: float, population: int, in_flight: int, batch: int, radius: int, top: int
) -> dict[str, Any]:
    clients = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        clients.append(aioredis.Redis(host=host, port=int(port), max_connections=in_flight + 4))
    calls = 0
    try:
        await asyncio.gather(*(c.ping() for c in clients))

        async def worker(i: int, end: float) -> None:
            nonlocal calls
            rng, client = random.Random(i * 7919 + 1), clients[i % len(clients)]
            while time.perf_counter() < end:
                members = [user_id(rng.randrange(population)) for _ in range(batch)]
                async with client.pipeline(transaction=False) as pipe:
                    for m in members:
                        if kind == "update":
                            pipe.zincrby(BARE_KEY, rng.randrange(1, 100), m)
                            pipe.zrevrank(BARE_KEY, m)
                        elif kind == "top":
                            pipe.zrevrange(BARE_KEY, 0, top - 1, withscores=True)
                            pipe.zcard(BARE_KEY)
                        else:
                            pipe.zrevrank(BARE_KEY, m)
                            if kind == "rank":
                                pipe.zcard(BARE_KEY)
                    ranks = await pipe.execute()
                if kind == "around":
                    async with client.pipeline(transaction=False) as pipe:
                        for rank in ranks:
                            pipe.zrevrange(BARE_KEY, max(0, rank - radius), rank + radius, withscores=True)
                            pipe.zcard(BARE_KEY)
                        await pipe.execute()
                calls += batch

        node0, reads0 = await _node_cpu(clients), await _node_reads(clients)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(i, t0 + seconds) for i in range(in_flight)))
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        node1, reads1 = await _node_cpu(clients), await _node_reads(clients)
    finally:
        for c in clients:
            await c.aclose()
    by_node = [b - a for a, b in zip(node0, node1, strict=True)]
    return {
        "kind": kind,
        "calls": calls,
        "items": calls,
        "seconds": took,
        "calls_per_s": calls / took,
        "items_per_s": calls / took,
        "updates_per_s": calls / took if kind == "update" else 0.0,
        "updates": calls if kind == "update" else 0,
        "batch": batch,
        "in_flight": in_flight,
        "cpu_s": cpu,
        "node_cpu_s": sum(by_node),
        "node_cpu_by_node": by_node,
        "node_reads_per_item": (reads1 - reads0) / calls if calls else 0.0,
    }
