"""Pending-write marks cleared behind the caller (docs/architecture.md write path, after step 4).

A mark only tells the sweeper that a write may need finishing; once the shard write is done, clearing
it is housekeeping the caller need not wait for. Marks to clear are gathered per (node, board) and sent
one INDEX_FORGET call at a time: those arriving while a call is under way go together in the next, so a
loaded router pays one call for many writes. A mark whose call fails stays, and the sweeper re-sends
its write (a no-op when it landed) and clears it.
"""

from __future__ import annotations

import asyncio
import logging

from . import _replies as replies
from ._client import NodeClient
from ._keys import moves_key
from ._scripts import INDEX_FORGET

log = logging.getLogger("rankshard.forget")

MAX_MARKS = 1000
"""Marks per INDEX_FORGET call at most."""


class Forgets:
    """Marks waiting to be cleared; `drain` waits for every one sent or waiting."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], tuple[NodeClient, list[str], list[object]]] = {}
        self._running: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, node: NodeClient, board: str, key: str, user: str, version: int) -> None:
        """Clears `user`'s mark on `node` unless a newer version or a move holds it (see index_forget)."""
        slot = (node.id, board)
        _, keys, args = self._waiting.setdefault(slot, (node, [], []))
        keys.append(key)
        args += (user, version)
        if slot not in self._running:
            self._start(slot)

    def _start(self, slot: tuple[str, str]) -> None:
        node, keys, args = self._waiting.pop(slot)
        if len(keys) > MAX_MARKS:  # a backlog (a slow node) goes in several calls, not one long script
            self._waiting[slot] = (node, keys[MAX_MARKS:], args[2 * MAX_MARKS :])
            keys, args = keys[:MAX_MARKS], args[: 2 * MAX_MARKS]
        self._running.add(slot)
        task = asyncio.get_running_loop().create_task(self._send(slot, node, keys, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, slot: tuple[str, str], node: NodeClient, keys: list[str], args: list[object]) -> None:
        try:
            replies.index_forget(node.id, await node.run(INDEX_FORGET, [*keys, moves_key(slot[1])], args, lazy=True))
        except Exception as exc:  # the marks stay; the sweeper finishes them
            log.debug("clearing %d pending-write marks on %s failed: %s", len(keys), node.id, exc)
        finally:
            self._running.discard(slot)
            if slot in self._waiting:
                self._start(slot)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
