"""Pending-write marks cleared in the background (`shard_node._forget`), against a real Valkey node."""

from __future__ import annotations

import asyncio

import redis

from rankshard.shard_node import NodeClient
from rankshard.shard_node._forget import MAX_MARKS, Forgets
from rankshard.shard_node._keys import moves_key


def test_marks_are_cleared_in_calls_of_bounded_size_and_held_ones_stay(node_addresses: list[str]) -> None:
    address = node_addresses[0]
    host, port = address.rsplit(":", 1)
    users = [f"u{i}" for i in range(2 * MAX_MARKS + 500)]
    with redis.Redis(host=host, port=int(port), decode_responses=True) as r:
        # Every member written at version 3; the last one has moved on (version 4) since.
        r.hset("idx", mapping={u: "10|3|s1|||" for u in users[:-1]} | {users[-1]: "10|4|s1|||"})
        r.zadd(moves_key("b"), {u: 1 for u in users})

        async def main() -> None:
            node = NodeClient("n1", address)
            forgets = Forgets()
            for u in users:
                forgets.add(node, "b", "idx", u, 3)
            await forgets.drain()
            await node.aclose()

        r.config_resetstat()
        asyncio.run(main())
        # The newer version's writer owns that mark; every other mark is gone.
        assert r.zrange(moves_key("b"), 0, -1) == [users[-1]]
        calls = r.info("commandstats")["cmdstat_evalsha"]["calls"]
        assert calls >= 1 + len(users) // MAX_MARKS + 1  # the first mark alone, then the rest in calls of MAX_MARKS


def test_a_mark_stays_while_its_member_has_a_crossing_pending_and_goes_once_the_member_is_gone(
    node_addresses: list[str],
) -> None:
    address = node_addresses[0]
    host, port = address.rsplit(":", 1)
    entries = {
        "moving": "10|3|@|@5|@|7",  # a crossing at this version: its move clears the mark
        "moving-old": "10|3|s1|s2|s1",  # an older release's entry, crossing between named shards
        "removed": "~3|1700000000000",
        "plain": "10|3|@|||7",
        "old-plain": "10|3|s1||",  # five fields, as entries were before rgen
        "older": "10|2|@|||",  # written at an older version than the one being forgotten: not held
    }
    with redis.Redis(host=host, port=int(port), decode_responses=True) as r:
        r.delete("idx2", moves_key("c"))
        r.hset("idx2", mapping=entries)
        r.zadd(moves_key("c"), {u: 1 for u in [*entries, "absent"]})

        async def main() -> None:
            node = NodeClient("n1", address)
            forgets = Forgets()
            for u in [*entries, "absent"]:
                forgets.add(node, "c", "idx2", u, 3)
            await forgets.drain()
            await node.aclose()

        asyncio.run(main())
        assert sorted(r.zrange(moves_key("c"), 0, -1)) == ["moving", "moving-old"]
