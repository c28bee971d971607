"""NodeClient and its RESP2 connection (`shard_node._resp`) against real Valkey processes.

- Replies are matched to their callers in order, however many callers share the pipelined connection.
- Replies decode like redis-py's ``decode_responses=True`` did (and keep its shapes for HGETALL, SCAN, SET).
- Error replies surface as before: `NodeUnavailable` for plain commands, per call for scripts; a node that
  lost its scripts gets them loaded and only the failed calls re-sent.
- A node that dies fails every waiting command at once; a frozen one fails them after the timeout and the
  connection is dropped (its late replies would be misaligned); the client reconnects after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

import pytest
import redis
from hiredis import pack_command

from rankshard.cli._local import LocalValkey, free_port
from rankshard.shard_map import NodeUnavailable
from rankshard.shard_node import NodeClient
from rankshard.shard_node._client import DOWN_FOR
from rankshard.shard_node._resp import NodeConnection
from rankshard.shard_node._scripts import INDEX_STALE_MOVES, Script


def _redis(address: str) -> redis.Redis:
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), decode_responses=True)


async def _wait_until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Polls `condition` until it holds; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _blocked_clients(address: str) -> Callable[[], Awaitable[bool]]:
    async def blocked() -> bool:
        with _redis(address) as r:
            return int(r.info("clients")["blocked_clients"]) > 0

    return blocked


# ---- ordering and decoding ----------------------------------------------------------------------------------


def test_many_concurrent_callers_each_get_their_own_replies(node_addresses: list[str]) -> None:
    async def main() -> None:
        async with NodeClient("n1", node_addresses[0]) as node:

            async def single(i: int) -> None:
                assert await node.command("ECHO", f"one-{i}") == f"one-{i}"

            async def batch(i: int) -> None:
                tokens = [f"batch-{i}-{j}" for j in range(i % 7 + 1)]
                assert await node.commands([("ECHO", t) for t in tokens]) == tokens

            async def counter(i: int) -> int:
                return await node.command("INCR", "counter")

            async with asyncio.TaskGroup() as tg:
                for i in range(300):
                    tg.create_task(single(i))
                    tg.create_task(batch(i))
                counts = [tg.create_task(counter(i)) for i in range(300)]
            assert sorted(c.result() for c in counts) == list(range(1, 301))
            assert await node.command("GET", "counter") == "300"

    asyncio.run(main())


def test_replies_decode_as_before(node_addresses: list[str]) -> None:
    async def main() -> None:
        async with NodeClient("n1", node_addresses[0]) as node:
            assert await node.command("GET", "missing") is None
            assert await node.command("SET", "k", "välue") is True
            assert await node.command("SET", "k", "other", "NX") is None
            assert await node.command("GET", "k") == "välue"
            assert await node.command("RPUSH", "list", "a", 2, 2.5, b"bytes") == 4
            assert await node.command("LRANGE", "list", 0, -1) == ["a", "2", "2.5", "bytes"]
            assert await node.command("LRANGE", "missing", 0, -1) == []
            assert await node.command("ZINCRBY", "z", 1.5, "m") == 1.5
            assert await node.command("ZRANGE", "z", 0, -1, "WITHSCORES") == ["m", "1.5"]
            assert await node.command("HSET", "h", "f", "v") == 1
            assert await node.command("HGETALL", "h") == {"f": "v"}
            cursor, keys = await node.command("SCAN", 0, "COUNT", 100)
            assert cursor == 0 and sorted(keys) == ["h", "k", "list", "z"]
            nested = await node.command("EVAL", "return {1, 'two', {3, false}, redis.status_reply('OK')}", 0)
            assert nested == [1, "two", [3, None], "OK"]
            assert await node.commands([("GET", "k"), ("HGETALL", "h"), ("EXISTS", "k")]) == ["välue", {"f": "v"}, 1]
            assert await node.commands([]) == []

    asyncio.run(main())


# ---- error replies ------------------------------------------------------------------------------------------


def test_error_replies_are_refusals_and_the_connection_stays_usable(node_addresses: list[str]) -> None:
    async def main() -> None:
        async with NodeClient("n1", node_addresses[0]) as node:
            await node.command("SET", "text", "abc")
            with pytest.raises(NodeUnavailable, match="refused INCR: value is not an integer"):
                await node.command("INCR", "text")
            with pytest.raises(NodeUnavailable, match="refused a command: value is not an integer"):
                await node.commands([("GET", "text"), ("INCR", "text"), ("GET", "text")])
            with pytest.raises(NodeUnavailable, match="refused NOSUCHCOMMAND"):
                await node.command("NOSUCHCOMMAND")
            # Each error reply consumed exactly one reply: what follows is still matched correctly.
            assert await node.commands([("ECHO", "a"), ("ECHO", "b")]) == ["a", "b"]
            assert await node.command("GET", "text") == "abc"

    asyncio.run(main())


def test_scripts_lost_by_the_node_are_loaded_and_only_the_failed_calls_resent(node_addresses: list[str]) -> None:
    source = "return redis.call('INCR', KEYS[1])"
    counting = Script("counting", source, hashlib.sha1(source.encode()).hexdigest())

    async def main() -> None:
        async with NodeClient("n1", node_addresses[0]) as node:
            await node.command("SCRIPT", "FLUSH")
            assert await node.command("SCRIPT", "LOAD", source) == counting.sha  # not one of ours: survives
            calls = [(counting, ["count"], []), (INDEX_STALE_MOVES, ["moves"], [0, 10]), (counting, ["count"], [])]
            assert await node.run_many(calls) == [1, [], 2]
            assert await node.command("GET", "count") == "2"  # the counting calls ran once each
            assert await node.run(INDEX_STALE_MOVES, ["moves"], [0, 10]) == []
            with pytest.raises(NodeUnavailable, match="script failed"):
                await node.run(counting, ["a-hash"], [])  # WRONGTYPE
            await node.command("SCRIPT", "FLUSH")
            with pytest.raises(NodeUnavailable, match="script failed: No matching script"):
                await node.run(counting, ["count"], [])  # not among the scripts load_scripts knows

    with _redis(node_addresses[0]) as r:
        r.hset("a-hash", "f", "v")
    asyncio.run(main())


# ---- dead, frozen and restarted nodes -----------------------------------------------------------------------


def test_a_node_killed_mid_call_fails_every_waiting_call(fresh_valkey: LocalValkey) -> None:
    async def main() -> None:
        async with NodeClient("n2", fresh_valkey.address, timeout=60) as node:
            blocked = asyncio.create_task(node.command("BLPOP", "queue", 0))  # answers only on a push
            behind = [asyncio.create_task(node.command("ECHO", f"behind-{i}")) for i in range(20)]
            await _wait_until(_blocked_clients(fresh_valkey.address), 10, "BLPOP to block on the node")
            started = time.monotonic()
            await asyncio.to_thread(fresh_valkey.kill)
            for task in [blocked, *behind]:
                with pytest.raises(NodeUnavailable, match="unreachable"):
                    await task
            assert time.monotonic() - started < 10  # at once, not after the 60 s timeout

    asyncio.run(main())


def test_a_refused_connection_fails_fast_and_does_not_mark_the_node_down() -> None:
    async def main() -> None:
        async with NodeClient("n9", f"127.0.0.1:{free_port()}", timeout=30) as node:
            started = time.monotonic()
            for _ in range(3):
                with pytest.raises(NodeUnavailable, match="unreachable"):
                    await node.command("PING")
            assert time.monotonic() - started < 5

    asyncio.run(main())


def test_the_client_reconnects_after_the_node_restarts(fresh_valkey: LocalValkey) -> None:
    async def main() -> None:
        async with NodeClient("n2", fresh_valkey.address) as node:
            await node.command("SET", "durable", "yes")
            await asyncio.to_thread(fresh_valkey.kill)
            with pytest.raises(NodeUnavailable, match="unreachable"):
                await node.command("GET", "durable")
            # Started from this thread: a server dies with the thread that spawned it (cli._local).
            fresh_valkey.start()
            assert await node.command("GET", "durable") == "yes"  # from the AOF, over a new connection
            # A restart the client did not call through. A running router's loop sees the old connection
            # close as the node dies; here the blocking start() would hold the loop, so wait for that first.
            await asyncio.to_thread(fresh_valkey.kill)

            async def closed() -> bool:
                return node._connection is None or not node._connection.is_open

            await _wait_until(closed, 10, "the client to see its connection closed")
            fresh_valkey.start()
            assert await node.run(INDEX_STALE_MOVES, ["moves"], [0, 10]) == []  # scripts loaded again too

    asyncio.run(main())


def test_a_frozen_node_times_out_and_its_connection_is_dropped(fresh_valkey: LocalValkey) -> None:
    async def main() -> None:
        async with NodeClient("n2", fresh_valkey.address, timeout=0.5) as node:
            assert await node.command("ECHO", "before") == "before"
            fresh_valkey.pause()
            try:
                started = time.monotonic()
                waiting = [asyncio.create_task(node.command("ECHO", f"stale-{i}")) for i in range(10)]
                for task in waiting:
                    with pytest.raises(NodeUnavailable, match="unreachable: no reply within 0.5s"):
                        await task
                assert time.monotonic() - started < 0.5 + DOWN_FOR  # within the timeout (plus slack)
                with pytest.raises(NodeUnavailable, match="failed moments ago"):
                    await node.command("ECHO", "fast-fail")  # DOWN_FOR: answered without asking the node
            finally:
                fresh_valkey.resume()

            async def answers_its_own_probe() -> bool:
                try:
                    reply = await node.command("ECHO", "probe")
                except NodeUnavailable:
                    return False
                assert reply == "probe"  # never a late reply to one of the stale ECHOs
                return True

            await _wait_until(answers_its_own_probe, 10, "the node to serve again after DOWN_FOR")
            assert await node.commands([("ECHO", "fresh"), ("ECHO", "again")]) == ["fresh", "again"]

    asyncio.run(main())


def test_a_timed_out_command_closes_its_connection_and_fails_the_rest(fresh_valkey: LocalValkey) -> None:
    host, port = fresh_valkey.address.rsplit(":", 1)

    async def main() -> None:
        connection = await NodeConnection.open(host, int(port), 0.3)
        assert await connection.send(pack_command(("ECHO", "before"))) == "before"
        fresh_valkey.pause()
        try:
            first = connection.send(pack_command(("ECHO", "first")))
            second = connection.send(pack_command(("ECHO", "second")) + pack_command(("ECHO", "third")), 2)
            with pytest.raises(TimeoutError):
                await first
            assert not connection.is_open  # replies after the late one would be misaligned
            with pytest.raises(TimeoutError):
                await second  # failed with the first: it was queued behind it
            with pytest.raises(ConnectionError):
                await connection.send(pack_command(("ECHO", "after")))
        finally:
            fresh_valkey.resume()

    asyncio.run(main())


def test_a_caller_that_gives_up_leaves_the_others_replies_aligned(node_addresses: list[str]) -> None:
    async def main() -> None:
        async with NodeClient("n1", node_addresses[0]) as node:
            for i in range(50):
                gave_up = asyncio.create_task(node.command("ECHO", f"abandoned-{i}"))
                await asyncio.sleep(0)  # let it queue (and maybe send) its command
                gave_up.cancel()
                assert await node.command("ECHO", f"kept-{i}") == f"kept-{i}"

    asyncio.run(main())


def test_an_unreadable_reply_stream_closes_the_connection_and_fails_every_waiting_command() -> None:
    # Not a stand-in for Redis: a peer that breaks the protocol, which no real node can be made to do.
    async def main() -> None:
        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.write(b"?not resp\r\n")  # arrives before the close, so it is what the client sees
            writer.close()
            await writer.wait_closed()

        async with await asyncio.start_server(garbage, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            connection = await NodeConnection.open("127.0.0.1", port, 30)
            waiting = [connection.send(pack_command(("ECHO", str(i)))) for i in range(3)]
            for future in waiting:
                with pytest.raises(ConnectionError, match="unreadable reply"):
                    await future
            assert not connection.is_open
            async with NodeClient("n9", f"127.0.0.1:{port}", timeout=30) as node:
                with pytest.raises(NodeUnavailable, match="unreadable reply"):
                    await node.command("PING")

    asyncio.run(main())


def test_a_lazy_command_leaves_with_the_next_one_or_on_its_own_soon_after(node_addresses: list[str]) -> None:
    # The pending-write marks' clearing is sent lazily: it must share a write with real traffic when
    # there is some (one system call instead of two), keep its place in the reply order, and still
    # leave alone when nothing follows it.
    host, port = node_addresses[0].rsplit(":", 1)

    async def main() -> None:
        connection = await NodeConnection.open(host, int(port), 5)
        writes: list[bytes] = []
        transport = connection._transport
        assert transport is not None
        real_write = transport.write
        transport.write = lambda data: (writes.append(data), real_write(data))[1]  # type: ignore[method-assign]

        lazy = connection.send(pack_command(("ECHO", "lazy")), lazy=True)
        await asyncio.sleep(0)  # an iteration passes: a plain command would have left by now
        assert writes == []
        eager = connection.send(pack_command(("ECHO", "eager")))
        assert await asyncio.gather(lazy, eager) == ["lazy", "eager"]
        assert len(writes) == 1  # both in one write

        alone = connection.send(pack_command(("ECHO", "alone")), lazy=True)
        assert await asyncio.wait_for(alone, 1) == "alone"
        assert len(writes) == 2
        connection.close()

    asyncio.run(main())
