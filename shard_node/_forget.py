"""Index housekeeping done behind the caller (docs/architecture.md write path, steps 4.3 and 6).

Two kinds of clears go here: the pending-write marks of plain writes whose shard write is done
(INDEX_FORGET), and the intents of crossings whose destination write and source removal are done
(INDEX_MOVE, which clears the member's mark too). Neither changes what a reader sees: a mark only
tells the sweeper that a write may need finishing, and a crossing past its source removal has its
member in its home shard alone. Clears are gathered per (node, board) and sent one round trip at a
time, both kinds in one pipeline: those arriving while a round trip is under way go together in the
next, and each leaves lazily with the node's next command, so a loaded router pays no round trip of
its own for them. A clear whose call fails stays undone: the sweeper re-sends the mark's write (a
no-op when it landed) or finishes the crossing (every step idempotent), and the member's next write
finishes a crossing first in any case.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from . import _replies as replies
from ._client import NodeClient, ScriptCall
from ._keys import moves_key
from ._scripts import INDEX_FORGET, INDEX_MOVE

log = logging.getLogger("rankshard.forget")

MAX_MARKS = 1000
"""Clears of each kind per script call at most."""


@dataclass(slots=True)
class _Clears:
    """One (node, board)'s clears waiting to be sent: marks (user, version)... and moves (user, version, from,
    to)..., each with its members' index keys."""

    node: NodeClient
    mark_keys: list[str] = field(default_factory=list)
    mark_args: list[object] = field(default_factory=list)
    move_keys: list[str] = field(default_factory=list)
    move_args: list[object] = field(default_factory=list)

    def split(self) -> _Clears | None:
        """Keeps at most MAX_MARKS of each kind here and returns the rest (None when nothing is left): a backlog
        (a slow node) goes in several calls, not one long script."""
        if len(self.mark_keys) <= MAX_MARKS and len(self.move_keys) <= MAX_MARKS:
            return None
        rest = _Clears(
            self.node,
            self.mark_keys[MAX_MARKS:],
            self.mark_args[2 * MAX_MARKS :],
            self.move_keys[MAX_MARKS:],
            self.move_args[4 * MAX_MARKS :],
        )
        del self.mark_keys[MAX_MARKS:], self.mark_args[2 * MAX_MARKS :]
        del self.move_keys[MAX_MARKS:], self.move_args[4 * MAX_MARKS :]
        return rest


class Forgets:
    """Clears waiting to be sent; `drain` waits for every one sent or waiting."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], _Clears] = {}
        self._running: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, node: NodeClient, board: str, key: str, user: str, version: int) -> None:
        """Clears `user`'s mark on `node` unless a newer version or a move holds it (see index_forget)."""
        clears = self._clears(node, board)
        clears.mark_keys.append(key)
        clears.mark_args += (user, version)
        self._kick((node.id, board))

    def add_move(self, node: NodeClient, board: str, key: str, user: str, version: int, from_: str, to: str) -> None:
        """Clears `user`'s crossing `from_` -> `to` at `version` on `node`, and its mark, unless the entry holds
        another by then (see index_move): write path step 4.3, once steps 4.1 and 4.2 are done."""
        clears = self._clears(node, board)
        clears.move_keys.append(key)
        clears.move_args += (user, version, from_, to)
        self._kick((node.id, board))

    def _clears(self, node: NodeClient, board: str) -> _Clears:
        return self._waiting.setdefault((node.id, board), _Clears(node))

    def _kick(self, slot: tuple[str, str]) -> None:
        if slot not in self._running:
            self._start(slot)

    def _start(self, slot: tuple[str, str]) -> None:
        clears = self._waiting.pop(slot)
        if rest := clears.split():
            self._waiting[slot] = rest
        self._running.add(slot)
        task = asyncio.get_running_loop().create_task(self._send(slot, clears))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, slot: tuple[str, str], clears: _Clears) -> None:
        node, moves = clears.node, moves_key(slot[1])
        calls: list[ScriptCall] = []
        if clears.mark_keys:
            calls.append((INDEX_FORGET, [*clears.mark_keys, moves], clears.mark_args))
        if clears.move_keys:
            calls.append((INDEX_MOVE, [*clears.move_keys, moves], clears.move_args))
        try:
            answers = iter(await node.run_many(calls, lazy=True))
            if clears.mark_keys:
                replies.index_forget(node.id, next(answers))
            if clears.move_keys:
                replies.index_move(node.id, next(answers))  # fewer when another router got there first
        except Exception as exc:  # what was not cleared stays for the sweeper
            log.debug("clearing %d marks and %d crossings on %s failed: %s", *_counts(clears), node.id, exc)
        finally:
            self._running.discard(slot)
            if slot in self._waiting:
                self._start(slot)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _counts(clears: _Clears) -> tuple[int, int]:
    return len(clears.mark_keys), len(clears.move_keys)
