"""Replies of a synchronous redis-py client, typed as what they are.

redis-py declares each command once for its sync and async clients, so every reply is typed
``Awaitable[Any] | Any``; a sync client's is the value itself. These say which value.
"""

from __future__ import annotations

from typing import Any, cast

import redis


def info(node: redis.Redis, section: str) -> dict[str, Any]:
    """``INFO section`` as a dict of its fields."""
    return cast(dict[str, Any], node.info(section))


def config_value(node: redis.Redis, name: str) -> str:
    """The one value of ``CONFIG GET name``."""
    return str(next(iter(cast(dict[str, Any], node.config_get(name)).values())))


def dump(node: redis.Redis, key: bytes | str) -> bytes:
    """``DUMP key``: the key's serialized value, for RESTORE."""
    return cast(bytes, node.dump(key))
