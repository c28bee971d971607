"""Marks and crossing intents cleared in the background (`shard_node._forget`), against a real Valkey node."""

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


def test_crossings_clear_with_the_marks_in_one_round_trip_and_only_the_intent_they_name(
    node_addresses: list[str],
) -> None:
    """A crossing handed over once its member is in its new shard (write path step 4.3) loses its intent and its
    mark, in the same round trip as the plain marks waiting beside it; an entry holding another intent by then (a
    newer write crossed again, another router finished it) is left as it is."""
    address = node_addresses[0]
    host, port = address.rsplit(":", 1)
    entries = {
        "first": "10|3|@|||7",
        "crossed": "60|4|@|@10|@|7",
        "crossed-again": "20|5|@|@60|@|7",  # version 5 crossed back since the version 4 crossing was handed over
        "plain": "10|3|@|||7",
    }
    trips: list[str] = []

    class Trips:
        def round_trip(self, node_id: str, seconds: float) -> None:
            trips.append(node_id)

        def failed(self, node_id: str, kind: str) -> None:
            pass

    with redis.Redis(host=host, port=int(port), decode_responses=True) as r:
        r.delete("idx3", moves_key("d"))
        r.hset("idx3", mapping=entries)
        r.zadd(moves_key("d"), {u: 1 for u in entries})

        async def main() -> None:
            node = NodeClient("n1", address, observer=Trips())
            forgets = Forgets()
            forgets.add(node, "d", "idx3", "first", 3)  # sent at once; the rest wait for it
            forgets.add(node, "d", "idx3", "plain", 3)
            forgets.add_move(node, "d", "idx3", "crossed", 4, "@10", "@")
            forgets.add_move(node, "d", "idx3", "crossed-again", 4, "@10", "@")
            await forgets.drain()
            await node.aclose()

        r.config_resetstat()
        asyncio.run(main())
        assert r.hgetall("idx3") == entries | {"crossed": "60|4|@|||7"}
        assert r.zrange(moves_key("d"), 0, -1) == ["crossed-again"]
        assert r.info("commandstats")["cmdstat_evalsha"]["calls"] == 3  # the first mark's, then a forget and a move
        assert trips == ["n1", "n1"]  # ... in one round trip
